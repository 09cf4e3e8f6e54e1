//! The pixelpipe sink: a Kafka consumer group that stores hits in ClickHouse.
//!
//! Not built yet. It will decode hits only through [`pixelpipe_ingest::wire`], the one owner of
//! the wire format, and never re-implement it.

pub use pixelpipe_ingest::wire;
