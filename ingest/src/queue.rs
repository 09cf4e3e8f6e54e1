//! The hand-over from request handlers to batcher threads: one bounded, lock-free
//! crossbeam channel.
//!
//! A handler never waits for Kafka here: [`HitQueue::offer`] either places the hit in the channel
//! or, when the channel is full (Kafka or the batchers cannot keep up) or closed, hands it to
//! [`Outbound::spill`], which writes it to the spool (one small write, only under overload).
//! This module owns that decision and the queue's readiness rule; it does not encode or produce
//! (see `batcher` and `outbound`).

use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::wire::Hit;

/// The sending side, held by request handlers.
#[derive(Clone)]
pub struct HitQueue {
    tx: Sender<Box<Hit>>,
    high_water_hits: usize,
    metrics: Metrics,
    /// Shared by every handler; used only when the channel is full, so a lock is cheap enough.
    spill: Arc<Mutex<Outbound>>,
}

/// What became of an offered hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// In the channel; a batcher will hand it over.
    Queued,
    /// The channel could not take it; it went to the spool (or, were that full, was counted
    /// dropped there).
    Spilled,
}

impl HitQueue {
    /// A queue of `capacity_hits`, not ready from `high_water_percent` full; returns the
    /// receiving side for the batchers. Hits that do not fit go to `outbound`'s spool.
    pub fn new(
        capacity_hits: usize,
        high_water_percent: u8,
        outbound: Outbound,
    ) -> (HitQueue, Receiver<Box<Hit>>) {
        let metrics = outbound.ledger.metrics().clone();
        let (tx, rx) = crossbeam_channel::bounded(capacity_hits);
        let high_water_hits = (capacity_hits * usize::from(high_water_percent))
            .div_ceil(100)
            .max(1);
        (
            HitQueue {
                tx,
                high_water_hits,
                metrics,
                spill: Arc::new(Mutex::new(outbound)),
            },
            rx,
        )
    }

    /// Places a hit without waiting.
    pub fn offer(&self, hit: Box<Hit>) -> Offer {
        self.metrics.accepted(hit.transport);
        match self.tx.try_send(hit) {
            Ok(()) => Offer::Queued,
            Err(TrySendError::Full(hit) | TrySendError::Disconnected(hit)) => {
                self.metrics.spilled();
                self.spill
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .spill(hit);
                Offer::Spilled
            }
        }
    }

    /// Whether the channel is at or above its high-water mark.
    pub fn above_high_water(&self) -> bool {
        self.tx.len() >= self.high_water_hits
    }

    /// Hits waiting now.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Whether no hit is waiting.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempLedger;
    use crate::wire::testing::sample_hit;

    #[test]
    fn a_full_or_closed_channel_spills_to_the_spool() {
        let t = TempLedger::new();
        let (q, rx) = HitQueue::new(4, 50, t.outbound());
        assert!(!q.above_high_water());
        assert_eq!(q.offer(Box::new(sample_hit())), Offer::Queued);
        assert!(!q.above_high_water());
        assert_eq!(q.offer(Box::new(sample_hit())), Offer::Queued);
        assert!(q.above_high_water());
        q.offer(Box::new(sample_hit()));
        q.offer(Box::new(sample_hit()));
        assert_eq!(q.offer(Box::new(sample_hit())), Offer::Spilled);
        drop(rx);
        assert_eq!(q.offer(Box::new(sample_hit())), Offer::Spilled);
        assert_eq!(t.spool().stats().records, 2);
        let text = t.metrics().render();
        for series in [
            "pixelpipe_ingest_hits_accepted_total{transport=\"pixel\"} 6",
            "pixelpipe_ingest_queue_spilled_total 2",
            "pixelpipe_ingest_spool_records 2",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }
}
