//! serval-agent
