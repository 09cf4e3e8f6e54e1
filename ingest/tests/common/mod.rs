//! Helpers shared by the edge's integration tests: the real broker and an HTTP client (`kafka`,
//! shared with the sink's tests), and an edge running in-process (`edge`).

pub mod edge;
pub mod kafka;

pub use edge::*;
pub use kafka::*;
