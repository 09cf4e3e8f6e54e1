//! The producer seam: where encoded hits leave the batchers. [`HitProducer`] is the one trait a
//! destination implements (Kafka today, in `kafka`), [`DeliveryFailure`] the bounded reasons a
//! handed-over hit was not delivered.
//!
//! Nothing here knows a destination. Delivery outcomes are each producer's to count; a producer
//! that is full says so with [`BufferFull`] and the batcher decides whether to wait.

use std::sync::Arc;
use std::time::Duration;

/// The producer's buffer is full; the hit was not taken.
#[derive(Debug)]
pub struct BufferFull;

/// Where encoded hits go. Delivery outcomes are the producer's to count.
pub trait HitProducer: Send + Sync + 'static {
    /// Queues one encoded hit for delivery without blocking.
    fn send(&self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), BufferFull>;
    /// Waits up to `timeout` for every queued hit to be delivered or failed.
    fn flush(&self, timeout: Duration);
    /// Whether the producer is connected to at least one broker.
    fn connected(&self) -> bool;
}

/// A producer shared by the batchers and the readiness check.
pub type SharedProducer = Arc<dyn HitProducer>;

/// Why a hit handed to a producer was not delivered (the `reason` label of
/// `pixelpipe_ingest_kafka_failed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFailure {
    /// Not delivered within `kafka.message_timeout_ms`.
    TimedOut,
    /// Still held by the producer when it was dropped at exit.
    Purged,
    /// Larger than the broker or topic accepts.
    TooLarge,
    /// The topic does not exist.
    UnknownTopic,
    /// The producer may not write to the topic.
    NotAuthorized,
    /// The producer's own queue was full.
    QueueFull,
    /// Anything else the client reported.
    Other,
}

impl DeliveryFailure {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryFailure::TimedOut => "timed_out",
            DeliveryFailure::Purged => "purged",
            DeliveryFailure::TooLarge => "too_large",
            DeliveryFailure::UnknownTopic => "unknown_topic",
            DeliveryFailure::NotAuthorized => "not_authorized",
            DeliveryFailure::QueueFull => "queue_full",
            DeliveryFailure::Other => "other",
        }
    }
}

/// A producer for tests and benches (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// A message as the producer saw it: key and payload.
    pub type Sent = (Option<Vec<u8>>, Vec<u8>);

    /// Records what it is sent, and can pretend to be full. Always connected. The edge alone,
    /// without the batchers, never calls `send`, so benches of the request path pay nothing for
    /// the recording.
    #[derive(Default)]
    pub struct RecordingProducer {
        /// Every message taken, in order.
        pub sent: Mutex<Vec<Sent>>,
        /// While true, `send` answers [`BufferFull`].
        pub full: AtomicBool,
        /// How many sends were refused as full.
        pub refused: AtomicUsize,
    }

    impl HitProducer for RecordingProducer {
        fn send(&self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), BufferFull> {
            if self.full.load(Ordering::SeqCst) {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(BufferFull);
            }
            self.sent
                .lock()
                .expect("not poisoned")
                .push((key.map(<[u8]>::to_vec), payload.to_vec()));
            Ok(())
        }
        fn flush(&self, _timeout: Duration) {}
        fn connected(&self) -> bool {
            true
        }
    }
}
