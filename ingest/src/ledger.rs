//! Where the fate of every hit handed toward Kafka is written down: delivered (its spool record,
//! if any, settled), not taken or failed (into the spool, whatever the reason), or dropped for
//! good with a counted reason. Also the delivery health `/readyz` and replay read.
//!
//! Producers call in here from their delivery callbacks; batchers and the queue call in when
//! Kafka did not take a hit. This module decides *what happens* to a hit; the spool owns the
//! files, the producer owns talking to Kafka.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hit::DropReason;
use crate::metrics::Metrics;
use crate::pack::Keys;
use crate::produce::{DeliveryFailure, Origin};
use crate::spool::{AppendError, Entry, Spool};

/// After the last failed delivery, how long `/readyz` keeps saying deliveries are failing when
/// nothing has been delivered since. Bounded so an edge with no traffic (the load balancer took
/// it out) becomes ready again and gets the chance to prove Kafka works.
pub const FAILING_WINDOW: Duration = Duration::from_secs(10);

/// The ledger: one per edge, shared by producers, batchers, the queue and replay.
pub struct Ledger {
    spool: Arc<Spool>,
    metrics: Metrics,
    /// Numbers each outcome in order, so "the latest outcome was a failure" needs no clock.
    outcomes: AtomicU64,
    last_delivered: AtomicU64,
    last_failed: AtomicU64,
    /// Milliseconds since `started` of the last failure: a monotonic clock, so a wall-clock step
    /// cannot hold readiness down.
    last_failed_ms: AtomicU64,
    started: Instant,
    too_large_logged: AtomicBool,
    pack_too_large_logged: AtomicBool,
    spool_error_logged: AtomicBool,
    write_ahead_logged: AtomicBool,
}

impl Ledger {
    /// A ledger writing to `spool` and counting into `metrics`.
    pub fn new(spool: Arc<Spool>, metrics: Metrics) -> Ledger {
        Ledger {
            spool,
            metrics,
            outcomes: AtomicU64::new(0),
            last_delivered: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
            last_failed_ms: AtomicU64::new(0),
            started: Instant::now(),
            too_large_logged: AtomicBool::new(false),
            pack_too_large_logged: AtomicBool::new(false),
            spool_error_logged: AtomicBool::new(false),
            write_ahead_logged: AtomicBool::new(false),
        }
    }

    /// The spool hits go to.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// The metrics everything is counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Kafka acknowledged a message of `hits` hits handed over at `handed_over`.
    pub fn delivered(&self, origin: Origin, handed_over: Instant, hits: usize) {
        self.metrics.delivered(handed_over.elapsed(), hits);
        let n = self.outcomes.fetch_add(1, Ordering::Relaxed) + 1;
        self.last_delivered.fetch_max(n, Ordering::Relaxed);
        if let Origin::Replay { .. } = origin {
            self.metrics.spool_replayed();
        }
        for _ in 0..hits {
            self.settle(origin);
        }
    }

    /// Kafka refused a message of one hit, or gave up on it. Every failure but one goes to the
    /// spool, to be replayed: a hit larger than the broker accepts (`too_large`) never will be, so
    /// it is dropped, counted, and logged once. (A packed message goes to
    /// [`Ledger::failed_packed`]; one given here is spooled hit by hit, without keys.)
    pub fn failed(
        &self,
        origin: Origin,
        key: Option<&[u8]>,
        payload: &[u8],
        failure: DeliveryFailure,
    ) {
        if crate::wire::hits_in(payload) > 1 {
            return self.failed_packed(origin, &Keys::default(), payload, failure);
        }
        self.failed_one(origin, key, payload, failure);
    }

    /// Kafka refused a packed message, or gave up on it: each hit is spooled alone, with its own
    /// key from `keys` (the message had none), so replay sends it, one per message, to its
    /// visitor's partition. A pack of more than one hit too large for the broker is not a hit too
    /// large: its hits are spooled, not dropped.
    pub fn failed_packed(
        &self,
        origin: Origin,
        keys: &Keys,
        payload: &[u8],
        failure: DeliveryFailure,
    ) {
        let hits = crate::wire::hits_in(payload);
        if hits <= 1 {
            return self.failed_one(origin, keys.get(0), payload, failure);
        }
        self.metrics.delivery_failed(failure, hits);
        if failure == DeliveryFailure::TooLarge
            && !self.pack_too_large_logged.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                bytes = payload.len(),
                hits,
                "a packed message is larger than Kafka accepts: its hits are spooled and \
                 replayed one per message; lower kafka.pack_max_bytes below the broker's \
                 message.max.bytes and the topic's max.message.bytes (logged once)"
            );
        }
        self.outcome_failed(failure);
        for (i, hit) in crate::wire::unpack(payload).enumerate() {
            self.keep(origin, keys.get(i), hit);
        }
    }

    fn failed_one(
        &self,
        origin: Origin,
        key: Option<&[u8]>,
        payload: &[u8],
        failure: DeliveryFailure,
    ) {
        self.metrics.delivery_failed(failure, 1);
        if failure == DeliveryFailure::TooLarge {
            if !self.too_large_logged.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    bytes = payload.len(),
                    "a hit is larger than Kafka accepts (message.max.bytes / max.message.bytes); \
                     such hits are dropped and counted (logged once)"
                );
            }
            self.metrics.dropped(DropReason::TooLarge);
            self.settle(origin);
            return;
        }
        self.outcome_failed(failure);
        self.keep(origin, key, payload);
    }

    fn outcome_failed(&self, failure: DeliveryFailure) {
        // Purged means the process is stopping, not that Kafka is failing.
        if failure != DeliveryFailure::Purged {
            let n = self.outcomes.fetch_add(1, Ordering::Relaxed) + 1;
            self.last_failed.fetch_max(n, Ordering::Relaxed);
            self.last_failed_ms
                .store(self.elapsed_ms(), Ordering::Relaxed);
        }
    }

    /// The producer's buffer was full, or the channel was: the hit goes to the spool.
    pub fn not_taken(&self, origin: Origin, key: Option<&[u8]>, payload: &[u8]) {
        self.keep(origin, key, payload);
    }

    /// `durability = "disk"` could not write a batch ahead (`error`): its hits go to Kafka from
    /// memory only. Counted, and logged once.
    pub fn write_ahead_skipped(&self, hits: usize, error: &AppendError) {
        self.metrics.write_ahead_skipped(hits as u64);
        if !self.write_ahead_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(%error, "disk durability: a batch could not be written ahead and went to Kafka from memory only (logged once; see pixelpipe_ingest_spool_write_ahead_skipped_total)");
        }
    }

    /// Whether Kafka refused the latest hit it decided on, within [`FAILING_WINDOW`].
    pub fn failing(&self) -> bool {
        self.last_failed.load(Ordering::Relaxed) > self.last_delivered.load(Ordering::Relaxed)
            && self
                .elapsed_ms()
                .saturating_sub(self.last_failed_ms.load(Ordering::Relaxed))
                < FAILING_WINDOW.as_millis() as u64
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Appends the hit for replay, then settles where it was kept before. A hit only in memory
    /// that the spool cannot take is counted dropped. A hit already on disk is moved regardless of
    /// `spool.max_bytes`; if even that write fails, its record stays where it is, unsettled, and is
    /// replayed at the next start.
    fn keep(&self, origin: Origin, key: Option<&[u8]>, payload: &[u8]) {
        let entry = match origin {
            Origin::Memory => Entry::Pending,
            Origin::WrittenAhead(_) => Entry::Moved {
                since_ms: crate::spool::now_ms(),
            },
            Origin::Replay { since_ms, .. } => Entry::Moved { since_ms },
        };
        match self.spool.append([(key, payload)], entry) {
            Ok(_) => self.settle(origin),
            Err(AppendError::Full) => self.metrics.dropped(DropReason::SpoolFull),
            Err(AppendError::Io(error)) => {
                if !self.spool_error_logged.swap(true, Ordering::Relaxed) {
                    tracing::error!(%error, "cannot write the spool; hits only in memory are dropped, \
                        hits already on disk stay for the next start (logged once)");
                }
                if origin == Origin::Memory {
                    self.metrics.dropped(DropReason::SpoolError);
                }
            }
        }
    }

    fn settle(&self, origin: Origin) {
        match origin {
            Origin::Memory => {}
            Origin::WrittenAhead(segment) => self.spool.settle(segment, Entry::WrittenAhead),
            Origin::Replay { segment, .. } => self.spool.settle(segment, Entry::Pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempLedger;

    /// The one failure no retry can fix: dropped with its own reason, never spooled; a spooled
    /// copy of it is settled so its segment can go.
    #[test]
    fn a_hit_too_large_for_kafka_is_dropped_not_spooled() {
        let t = TempLedger::new();
        let ledger = t.ledger();
        ledger.failed(Origin::Memory, None, b"big", DeliveryFailure::TooLarge);
        let seg = t
            .spool()
            .append([(None, &b"big"[..])], Entry::Pending)
            .unwrap();
        let replayed = Origin::Replay {
            segment: seg,
            since_ms: 0,
        };
        ledger.failed(replayed, None, b"big", DeliveryFailure::TooLarge);
        assert_eq!(t.spool().stats().records, 0);
        let text = t.metrics().render();
        assert!(
            text.contains("pixelpipe_ingest_hits_dropped_total{reason=\"too_large\"} 2"),
            "{text}"
        );
        assert!(!ledger.failing(), "Kafka is not failing; the hit is");
    }

    /// Every other failure, whatever its reason, keeps the hit.
    #[test]
    fn every_other_failure_is_spooled() {
        let t = TempLedger::new();
        let ledger = t.ledger();
        for failure in DeliveryFailure::ALL {
            if failure != DeliveryFailure::TooLarge {
                ledger.failed(Origin::Memory, None, b"hit", failure);
            }
        }
        assert_eq!(
            t.spool().stats().records,
            DeliveryFailure::ALL.len() as u64 - 1
        );
        assert_eq!(t.metrics().report().dropped, 0);
    }

    /// A packed message's fate is each of its hits': delivered, every written-ahead record is
    /// settled; failed, every hit is spooled on its own (so replay sends it alone).
    #[test]
    fn a_packed_message_settles_and_spools_hit_by_hit() {
        let t = TempLedger::new();
        let ledger = t.ledger();
        let hits: [&[u8]; 3] = [b"{\"a\":1}", b"{\"b\":2}", b"{\"c\":3}"];
        let mut packed = Vec::new();
        for h in hits {
            crate::wire::pack(&mut packed, h);
        }
        let ahead = t
            .spool()
            .append(
                hits.iter().map(|h| (Some(&b"k"[..]), *h)),
                Entry::WrittenAhead,
            )
            .unwrap();
        assert_eq!(t.spool().stats().records, 3);
        ledger.delivered(Origin::WrittenAhead(ahead), Instant::now(), 3);
        assert_eq!(t.spool().stats().records, 0, "all three settled");
        assert_eq!(t.metrics().report().delivered, 3);

        let ahead = t
            .spool()
            .append(hits.iter().map(|h| (None, *h)), Entry::WrittenAhead)
            .unwrap();
        let mut keys = Keys::default();
        for key in [Some(&b"visitor-a"[..]), None, Some(&b"visitor-c"[..])] {
            keys.push(key);
        }
        ledger.failed_packed(
            Origin::WrittenAhead(ahead),
            &keys,
            &packed,
            DeliveryFailure::Transport,
        );
        assert!(ledger.failing());
        let text = t.metrics().render();
        assert!(
            text.contains("pixelpipe_ingest_kafka_failed_total{reason=\"transport\"} 3"),
            "{text}"
        );
        // Three moved records wait for replay; the written-ahead ones are settled.
        assert_eq!(t.spool().stats().records, 3);
        let mut replayed = Vec::new();
        while let Some(batch) = t.spool().next_replay().unwrap() {
            let (mut at, mut read) = (0, 0);
            while let crate::spool::record::Decoded::Record(rec, len) =
                crate::spool::record::decode(&batch.bytes[at..])
            {
                if !rec.live {
                    replayed.push((rec.key.map(<[u8]>::to_vec), rec.payload.to_vec()));
                    read += 1;
                }
                at += len;
            }
            t.spool().replayed(batch.segment, read);
        }
        assert_eq!(
            replayed,
            vec![
                (Some(b"visitor-a".to_vec()), hits[0].to_vec()),
                (None, hits[1].to_vec()),
                (Some(b"visitor-c".to_vec()), hits[2].to_vec()),
            ],
            "each hit its own record, with its own key"
        );
    }

    /// A packed message too large for the broker is not a hit too large: its hits are spooled, to
    /// be replayed one per message, and none is dropped.
    #[test]
    fn a_packed_message_too_large_is_spooled_not_dropped() {
        let t = TempLedger::new();
        let ledger = t.ledger();
        let mut packed = Vec::new();
        crate::wire::pack(&mut packed, b"{}");
        crate::wire::pack(&mut packed, b"{}");
        ledger.failed(Origin::Memory, None, &packed, DeliveryFailure::TooLarge);
        assert_eq!(t.spool().stats().records, 2);
        assert_eq!(t.metrics().report().dropped, 0);
    }
}
