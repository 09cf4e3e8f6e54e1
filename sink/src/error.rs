//! The sink's one error type, and the one place it becomes a retry decision ([`Error::retryable`]).

use pixelpipe_common::http::IoError;
use pixelpipe_common::layers::ConfigError;

/// Everything that can go wrong in the sink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a value the sink cannot run with, or the file could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding or serving the admin socket failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// ClickHouse refused or did not answer. Carries the server's own error text.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The ClickHouse server is a version whose column encodings pixelpipe has not checked.
    #[error(
        "unsupported ClickHouse server version {0}: pixelpipe supports 18.16 and 22.x or later"
    )]
    UnsupportedServer(String),
    /// The Kafka client failed (creating it, committing, producing to the dead-letter topic).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Error {
    /// Whether the batch that hit this error should be retried (after a backoff) rather than the
    /// sink stopping. ClickHouse and Kafka outages pass; configuration mistakes do not.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::ClickHouse(_) | Error::Kafka(_))
    }

    /// An [`Error::Config`] naming `setting`.
    pub fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config(ConfigError::setting(setting, reason))
    }
}

/// The sink's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
