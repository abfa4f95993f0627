//! Harness shared by the agent's integration tests.

pub mod agent;
pub mod node;
pub mod wait;
