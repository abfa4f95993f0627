pub mod apply;
pub mod delete;
pub mod get;
pub mod ipam;
pub mod node;
