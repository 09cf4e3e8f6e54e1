//! The crate's one error type, and the one place it is mapped to an HTTP status.
//!
//! Start-up errors (configuration, binding, the Kafka client) end the process with their message;
//! request errors become a status and a one-line body in [`Error::status`]. Invalid *hits* are not
//! errors: a pixel always gets its image, and the hit is counted by reason (see `hit`).

use hyper::StatusCode;

/// Everything that can go wrong in the edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a value the edge cannot run with.
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        /// Dotted name of the setting, e.g. `kafka.linger_ms`.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    ConfigFile {
        /// The file's path.
        path: String,
        /// What went wrong reading or parsing it.
        reason: String,
    },
    /// Binding or serving a socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What the edge was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The Kafka client could not be created.
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    /// A request body was larger than `http.max_body_bytes`.
    #[error("body larger than {limit_bytes} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit_bytes: usize,
    },
    /// A request body was not sent within `http.body_read_timeout_ms`.
    #[error("body not received within {timeout_ms} ms")]
    BodyTimeout {
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The body could not be read from the connection.
    #[error("body could not be read: {0}")]
    BodyRead(String),
    /// A `/collect` body is not JSON of the accepted shape.
    #[error("malformed JSON: {0}")]
    BadJson(String),
    /// A `/collect` body with a content type other than JSON or text.
    #[error("unsupported content type `{0}`: send application/json or text/plain")]
    UnsupportedMediaType(String),
    /// The route exists but not for this method.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// Value for the `Allow` header.
        allow: &'static str,
    },
    /// `GET /c` will not redirect to this target (see `redirect` and `links`).
    #[error("click refused: {0}")]
    ClickRefused(String),
    /// No such route.
    #[error("not found")]
    NotFound,
}

impl Error {
    /// The HTTP status a request error is answered with. Start-up errors never reach a client;
    /// they map to 500 only so the match is total.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::BodyRead(_) | Error::BadJson(_) | Error::ClickRefused(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::Config { .. }
            | Error::ConfigFile { .. }
            | Error::Io { .. }
            | Error::Kafka(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Shorthand for a [`Error::Config`] naming the setting.
    pub fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
