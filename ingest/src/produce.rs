//! The producer seam: where encoded hits leave the batchers. [`HitProducer`] is the one trait a
//! destination implements (Kafka in `kafka`, JSON Lines files in `file_producer`), [`DeliveryFailure`] the bounded reasons a
//! handed-over hit was not delivered.
//!
//! Nothing here knows a destination. A producer reports each message's fate to the
//! [`Ledger`](crate::ledger::Ledger) with the message's [`Origin`]; a producer that is full says
//! so with [`BufferFull`] and the caller decides (batchers spool the hit, replay waits).

use std::sync::Arc;
use std::time::Duration;

use crate::outbound::Encoded;

/// A spool segment's number (the spool's `SegmentId`; named here as a plain integer so the
/// vocabulary of producers does not depend on the spool).
pub type Segment = u64;

/// Where a handed-over hit is kept besides the producer's memory, so its fate can settle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Only in memory (`durability = "memory"`, or the spool was full).
    Memory,
    /// Written ahead to this spool segment before it was handed over (`durability = "disk"`).
    WrittenAhead(Segment),
    /// Replayed from a spool segment.
    Replay {
        /// The segment it was read from.
        segment: Segment,
        /// When it first entered the spool (ms since the epoch); kept if it is moved again, so
        /// the oldest-record age counts from there.
        since_ms: u64,
    },
}

/// Where a producer hands each hit of a batch it could not take (key and payload).
pub type NotTaken<'a> = dyn FnMut(Option<&[u8]>, &[u8]) + 'a;

/// The producer's buffer is full; the hit was not taken.
#[derive(Debug)]
pub struct BufferFull;

/// Where encoded hits go. Delivery outcomes are the producer's to count.
pub trait HitProducer: Send + Sync + 'static {
    /// Queues one encoded hit for delivery without blocking; its fate is reported to the ledger
    /// with `origin`. A hit refused for any reason but a full buffer is reported failed, and
    /// `Ok` returned.
    fn send(&self, key: Option<&[u8]>, payload: &[u8], origin: Origin) -> Result<(), BufferFull>;
    /// Queues a batcher's batch (one hit per entry of `batch`), all kept at `origin`, without
    /// blocking; each hit it cannot take is handed to `not_taken`. Default: [`HitProducer::send`]
    /// each hit. The Kafka producer packs several hits per message here.
    fn send_batch(&self, batch: &Encoded, origin: Origin, not_taken: &mut NotTaken<'_>) {
        for (key, payload) in batch.iter() {
            if let Err(BufferFull) = self.send(key, payload, origin) {
                not_taken(key, payload);
            }
        }
    }
    /// Waits up to `timeout` for every queued hit to be delivered or failed.
    fn flush(&self, timeout: Duration);
    /// Whether the producer is connected to at least one broker.
    fn connected(&self) -> bool;
    /// Called about every 100 ms by replay: a producer that has become unusable replaces itself
    /// here. Default: nothing to do.
    fn recover(&self) {}
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
    /// Fewer in-sync replicas than the topic's `min.insync.replicas`.
    NotEnoughReplicas,
    /// The partition has no leader now, or the broker is not its leader.
    NoLeader,
    /// The connection to the broker failed, or every broker is down.
    Transport,
    /// The broker answered "Unknown broker error" (Kafka's UNKNOWN_SERVER_ERROR).
    BrokerError,
    /// The idempotent producer lost its sequence or epoch (and so became unusable).
    Fatal,
    /// The file producer could not write its file (disk full, an I/O error).
    WriteFailed,
    /// Anything else the client reported.
    Other,
}

impl DeliveryFailure {
    /// Every reason, so each series exists from the start.
    pub const ALL: [DeliveryFailure; 13] = [
        DeliveryFailure::TimedOut,
        DeliveryFailure::Purged,
        DeliveryFailure::TooLarge,
        DeliveryFailure::UnknownTopic,
        DeliveryFailure::NotAuthorized,
        DeliveryFailure::QueueFull,
        DeliveryFailure::NotEnoughReplicas,
        DeliveryFailure::NoLeader,
        DeliveryFailure::Transport,
        DeliveryFailure::BrokerError,
        DeliveryFailure::Fatal,
        DeliveryFailure::WriteFailed,
        DeliveryFailure::Other,
    ];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryFailure::TimedOut => "timed_out",
            DeliveryFailure::Purged => "purged",
            DeliveryFailure::TooLarge => "too_large",
            DeliveryFailure::UnknownTopic => "unknown_topic",
            DeliveryFailure::NotAuthorized => "not_authorized",
            DeliveryFailure::QueueFull => "queue_full",
            DeliveryFailure::NotEnoughReplicas => "not_enough_replicas",
            DeliveryFailure::NoLeader => "no_leader",
            DeliveryFailure::Transport => "transport",
            DeliveryFailure::BrokerError => "broker_error",
            DeliveryFailure::Fatal => "fatal",
            DeliveryFailure::WriteFailed => "write_failed",
            DeliveryFailure::Other => "other",
        }
    }
}
