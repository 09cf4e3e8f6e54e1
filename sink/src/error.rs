//! The sink's one error type, and the one place it becomes a retry decision
//! ([`Error::retry_cause`]).

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
    /// `clickhouse.cluster` is set, but a server of the cluster holds one of the sink's tables in
    /// the single-server layout (a `ReplacingMergeTree` where a `Distributed` table belongs, an
    /// unreplicated migrations table). Migrating would replace it, so the sink refuses.
    #[error("clickhouse.cluster = \"{cluster}\": {problem}. A single-server database is not converted to a cluster automatically; see docs/operations-sink.md, \"A replicated ClickHouse cluster\"")]
    NotAClusterLayout {
        /// The configured cluster.
        cluster: String,
        /// Which table on which server.
        problem: String,
    },
    /// `replay-dead-letters` heard nothing from the dead-letter topic for 10 s before it had read
    /// every partition to its end. What it copied is confirmed and committed, so running it again
    /// resumes there.
    #[error("the dead-letter topic {topic} went quiet with {partitions} partition(s) not read to their end, after {copied} messages were copied; run the replay again to resume")]
    ReplayIncomplete {
        /// The dead-letter topic.
        topic: String,
        /// Messages copied (and committed) before it went quiet.
        copied: u64,
        /// Partitions not read to their end.
        partitions: usize,
    },
    /// The Kafka client failed (creating it, committing, producing to the dead-letter topic).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Why a write failed and will be retried: the `cause` label of
/// `pixelpipe_sink_insert_retries_total`, so an operator can tell a refusing server from a hung
/// one from a broken connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// ClickHouse answered with an error: an HTTP error status, its exception text logged.
    ClickHouseError,
    /// ClickHouse did not answer within `clickhouse.insert_timeout_ms`.
    ClickHouseTimeout,
    /// No connection to ClickHouse, or it was closed or reset before the answer.
    ClickHouseConnection,
    /// Anything else the ClickHouse client reported (an answer it could not read, compression).
    ClickHouseOther,
    /// Kafka: the dead-letter topic did not confirm a bad message.
    Kafka,
}

impl RetryCause {
    /// Every cause, in declaration order.
    pub const ALL: [RetryCause; 5] = [
        RetryCause::ClickHouseError,
        RetryCause::ClickHouseTimeout,
        RetryCause::ClickHouseConnection,
        RetryCause::ClickHouseOther,
        RetryCause::Kafka,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::ClickHouseError => "clickhouse_error",
            RetryCause::ClickHouseTimeout => "clickhouse_timeout",
            RetryCause::ClickHouseConnection => "clickhouse_connection",
            RetryCause::ClickHouseOther => "clickhouse_other",
            RetryCause::Kafka => "kafka",
        }
    }
}

impl Error {
    /// Why the batch that hit this error should be retried (after a backoff), or `None` when the
    /// sink should stop instead. ClickHouse and Kafka outages pass; configuration mistakes do not.
    pub fn retry_cause(&self) -> Option<RetryCause> {
        use clickhouse::error::Error as Ch;
        match self {
            Error::ClickHouse(Ch::BadResponse(_)) => Some(RetryCause::ClickHouseError),
            Error::ClickHouse(Ch::TimedOut) => Some(RetryCause::ClickHouseTimeout),
            Error::ClickHouse(Ch::Network(_)) => Some(RetryCause::ClickHouseConnection),
            Error::ClickHouse(_) => Some(RetryCause::ClickHouseOther),
            Error::Kafka(_) => Some(RetryCause::Kafka),
            Error::Config(_)
            | Error::Io(_)
            | Error::UnsupportedServer(_)
            | Error::NotAClusterLayout { .. }
            | Error::ReplayIncomplete { .. } => None,
        }
    }

    /// Whether the batch that hit this error should be retried rather than the sink stopping.
    pub fn retryable(&self) -> bool {
        self.retry_cause().is_some()
    }

    /// An [`Error::Config`] naming `setting`.
    pub fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config(ConfigError::setting(setting, reason))
    }
}

/// The sink's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_cause_and_configuration_errors_none() {
        use clickhouse::error::Error as Ch;
        let cause = |e: Error| e.retry_cause().map(RetryCause::as_str);
        assert_eq!(
            cause(Ch::BadResponse("Code: 241. DB::Exception: Memory limit".into()).into()),
            Some("clickhouse_error")
        );
        assert_eq!(cause(Ch::TimedOut.into()), Some("clickhouse_timeout"));
        assert_eq!(
            cause(Ch::Network("connection closed before message completed".into()).into()),
            Some("clickhouse_connection")
        );
        assert_eq!(
            cause(Ch::Decompression("bad lz4".into()).into()),
            Some("clickhouse_other")
        );
        assert_eq!(
            cause(rdkafka::error::KafkaError::Canceled.into()),
            Some("kafka")
        );
        assert_eq!(cause(Error::config("batch.max_rows", "no")), None);
        assert_eq!(cause(Error::UnsupportedServer("19.1".into())), None);
    }
}
