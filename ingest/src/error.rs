//! The edge's start-up and shutdown errors: what ends the process with its message.
//!
//! Errors of one request are not here: they are `response::RequestError`, which carries its HTTP
//! status. Invalid *hits* are not errors at all: a pixel always gets its image, and the hit is
//! counted by reason (see `hit`).

use pixelpipe_common::http::IoError;
use pixelpipe_common::layers::ConfigError;

/// What can stop the edge from starting, or end it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a value the edge cannot run with, or the file could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding or serving a socket, or starting a thread, failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The spool directory could not be opened, locked or read.
    #[error(transparent)]
    Spool(#[from] crate::spool::OpenError),
    /// The Kafka client could not be created.
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Error {
    /// An [`Error::Io`]: `source`, while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io(IoError::new(context, source))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
