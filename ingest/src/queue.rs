//! The hand-over from request handlers to batcher threads: one bounded, lock-free
//! crossbeam channel.
//!
//! A handler never waits here: [`HitQueue::offer`] either places the hit or counts it as dropped
//! and returns at once. This module owns that decision and the queue's readiness rule; it does not
//! encode or produce (see `batcher`).
//!
//! Seam for a disk spool: every hit that does not fit goes through [`HitQueue::overflow`], the one
//! place a spool would take it instead of dropping it.

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::hit::DropReason;
use crate::metrics::Metrics;
use crate::wire::Hit;

/// The sending side, held by request handlers.
#[derive(Clone)]
pub struct HitQueue {
    tx: Sender<Hit>,
    high_water_hits: usize,
    metrics: Metrics,
}

/// What became of an offered hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// In the channel; the batcher will produce it.
    Queued,
    /// Not kept; counted under the given reason.
    Dropped(DropReason),
}

impl HitQueue {
    /// A queue of `capacity_hits`, not ready from `high_water_percent` full; returns the
    /// receiving side for the batchers.
    pub fn new(
        capacity_hits: usize,
        high_water_percent: u8,
        metrics: Metrics,
    ) -> (HitQueue, Receiver<Hit>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity_hits);
        let high_water_hits = (capacity_hits * usize::from(high_water_percent))
            .div_ceil(100)
            .max(1);
        (
            HitQueue {
                tx,
                high_water_hits,
                metrics,
            },
            rx,
        )
    }

    /// Places a hit without waiting.
    pub fn offer(&self, hit: Hit) -> Offer {
        let transport = hit.transport;
        match self.tx.try_send(hit) {
            Ok(()) => {
                self.metrics.accepted(transport);
                Offer::Queued
            }
            Err(TrySendError::Full(hit)) => self.overflow(hit, DropReason::QueueFull),
            Err(TrySendError::Disconnected(hit)) => self.overflow(hit, DropReason::Shutdown),
        }
    }

    /// Where a hit goes that the channel cannot take: today it is counted and dropped.
    fn overflow(&self, _hit: Hit, reason: DropReason) -> Offer {
        self.metrics.dropped(reason);
        Offer::Dropped(reason)
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
    use crate::wire::testing::sample_hit;

    #[test]
    fn full_queue_drops_counts_and_reports_high_water() {
        let metrics = Metrics::new();
        let (q, rx) = HitQueue::new(4, 50, metrics.clone());
        assert!(!q.above_high_water());
        assert_eq!(q.offer(sample_hit()), Offer::Queued);
        assert!(!q.above_high_water());
        assert_eq!(q.offer(sample_hit()), Offer::Queued);
        assert!(q.above_high_water());
        q.offer(sample_hit());
        q.offer(sample_hit());
        assert_eq!(q.offer(sample_hit()), Offer::Dropped(DropReason::QueueFull));
        let text = metrics.render();
        assert!(
            text.contains("pixelpipe_ingest_hits_dropped_total{reason=\"queue_full\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pixelpipe_ingest_hits_accepted_total{transport=\"pixel\"} 4"),
            "{text}"
        );
        drop(rx);
        assert_eq!(q.offer(sample_hit()), Offer::Dropped(DropReason::Shutdown));
    }
}
