//! The spool's worker thread: replays spooled hits to Kafka in order at a bounded rate beside
//! live traffic, pauses while deliveries fail, fsyncs the spool and deletes settled segments on
//! `spool.fsync_interval_ms`, keeps the spool's gauges current, and lets the producer replace
//! itself after a fatal error (checked every 100 ms).
//!
//! Replay hands a record to the producer with [`Origin::Replay`]; the ledger settles it when
//! Kafka acknowledges it, or moves it to the end of the spool when Kafka fails it, so a record is
//! never lost between the two. It does not decide what a failure means (`ledger`) or touch files
//! (`spool`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ledger::Ledger;
use crate::produce::{BufferFull, Origin, SharedProducer};
use crate::spool::{record, ReplayBatch};

/// How often the worker wakes for housekeeping, and the unit of the rate budget.
const TICK: Duration = Duration::from_millis(100);

/// How the worker runs.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySettings {
    /// Records replayed per second at most (`spool.replay_rate_hits_per_s`).
    pub rate_hits_per_s: u32,
    /// Between fsyncs (`spool.fsync_interval_ms`).
    pub fsync_interval: Duration,
}

/// The running worker.
pub struct Replay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Replay {
    /// Starts the worker thread.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn spawn(
        ledger: Arc<Ledger>,
        producer: SharedProducer,
        settings: ReplaySettings,
    ) -> std::io::Result<Replay> {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            ledger,
            producer,
            settings,
            stop: stop.clone(),
            current: None,
            allowance: 0.0,
        };
        let thread = std::thread::Builder::new()
            .name("spool-replay".into())
            .spawn(move || worker.run())?;
        Ok(Replay {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops replaying (a segment read halfway is replayed again next start) and waits for the
    /// thread. The caller fsyncs the spool last, after the producer is gone.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the spool replay thread panicked");
            }
        }
    }
}

/// The segment being replayed: its bytes, the offset of the next record, and how many records
/// were handed to Kafka so far.
struct Reading {
    batch: ReplayBatch,
    at: usize,
    handed_over: u64,
}

struct Worker {
    ledger: Arc<Ledger>,
    producer: SharedProducer,
    settings: ReplaySettings,
    stop: Arc<AtomicBool>,
    current: Option<Reading>,
    /// Records the rate allows now (fractions carry over, so low rates are kept too).
    allowance: f64,
}

impl Worker {
    fn run(mut self) {
        let spool = self.ledger.spool().clone();
        let mut next_sync = Instant::now() + self.settings.fsync_interval;
        let per_tick = f64::from(self.settings.rate_hits_per_s) * TICK.as_secs_f64();
        while !self.stop.load(Ordering::SeqCst) {
            let tick_end = Instant::now() + TICK;
            self.producer.recover();
            if Instant::now() >= next_sync {
                if let Err(error) = spool.sync() {
                    tracing::error!(%error, "spool fsync or segment deletion failed; retrying");
                }
                next_sync = Instant::now() + self.settings.fsync_interval;
            }
            // While Kafka refuses hits, replaying them only moves them around the spool. The
            // ledger's failing window spaces out the attempts: after it passes without a
            // delivery, replay tries again, and one failure pauses it for another window.
            if self.producer.connected() && !self.ledger.failing() {
                self.allowance = (self.allowance + per_tick).min(per_tick.max(1.0));
                self.replay();
            } else {
                self.allowance = 0.0;
            }
            spool.refresh_gauges();
            self.sleep_until(tick_end);
        }
    }

    /// Sleeps in short steps so a stop is seen quickly.
    fn sleep_until(&self, until: Instant) {
        while !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// Hands spooled records to the producer while the rate allows, until a send is refused or
    /// fails.
    fn replay(&mut self) {
        let spool = self.ledger.spool().clone();
        while self.allowance >= 1.0 && !self.stop.load(Ordering::SeqCst) {
            if self.current.is_none() {
                match spool.next_replay() {
                    Ok(Some(batch)) => {
                        self.current = Some(Reading {
                            batch,
                            at: 0,
                            handed_over: 0,
                        })
                    }
                    Ok(None) => return,
                    Err(error) => {
                        tracing::error!(%error, "cannot read a spool segment; retrying");
                        return;
                    }
                }
            }
            let Some(r) = &mut self.current else {
                return;
            };
            match record::decode(&r.batch.bytes[r.at..]) {
                record::Decoded::Record(rec, len) => {
                    // Written-ahead records of this run are the batchers' to settle.
                    if r.batch.recovered || !rec.live {
                        let origin = Origin::Replay {
                            segment: r.batch.segment,
                            since_ms: rec.appended_ms,
                        };
                        if let Err(BufferFull) = self.producer.send(rec.key, rec.payload, origin) {
                            return; // the same record again next tick
                        }
                        r.handed_over += 1;
                        self.allowance -= 1.0;
                    }
                    r.at += len;
                    // A refusal reported at once (say, a deleted topic) ends this pass.
                    if self.ledger.failing() {
                        return;
                    }
                }
                record::Decoded::Corrupt { skip } => r.at += skip,
                record::Decoded::Torn | record::Decoded::End => {
                    spool.replayed(r.batch.segment, r.handed_over);
                    self.current = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::produce::HitProducer;
    use crate::testing::RecordingProducer;
    use crate::testing::TempLedger;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The whole loop without Kafka: failures go to the spool; while deliveries fail nothing is
    /// replayed; once they work every record is delivered exactly once, in order, and the
    /// segment files are deleted.
    #[test]
    fn failures_are_spooled_then_replayed_in_order_once() {
        let t = TempLedger::with(|c| c.fsync_interval_ms = 50);
        let producer = Arc::new(RecordingProducer::default());
        producer.report_to(t.ledger());
        producer.failing.store(true, Ordering::SeqCst);
        for i in 0..300u32 {
            let payload = i.to_be_bytes();
            producer
                .send(None, &payload, Origin::Memory)
                .expect("not full");
        }
        assert_eq!(t.spool().stats().records, 300);
        assert!(t.ledger().failing());

        let replay = Replay::spawn(
            t.ledger(),
            producer.clone(),
            ReplaySettings {
                rate_hits_per_s: 2000,
                fsync_interval: Duration::from_millis(50),
            },
        )
        .unwrap();
        // Backing off: replayed records fail again and are appended again, or nothing is
        // tried; either way nothing is lost and nothing is delivered.
        std::thread::sleep(Duration::from_millis(300));
        assert!(producer.sent.lock().unwrap().is_empty());
        assert_eq!(t.spool().stats().records, 300);

        producer.failing.store(false, Ordering::SeqCst);
        // A live hit delivered ends the failing state, as live traffic would.
        producer.send(None, b"live!", Origin::Memory).unwrap();
        wait_for("the spool to drain", || t.spool().stats().records == 0);
        wait_for("settled segments to be deleted", || {
            t.spool().stats().bytes == 0
        });
        replay.stop();
        let sent = producer.sent.lock().unwrap();
        let replayed: Vec<u32> = sent
            .iter()
            .filter(|(_, p)| p.len() == 4)
            .map(|(_, p)| u32::from_be_bytes(p.as_slice().try_into().unwrap()))
            .collect();
        assert_eq!(
            replayed,
            (0..300).collect::<Vec<_>>(),
            "each once, in order"
        );
        let text = t.metrics().render();
        assert!(
            text.contains("pixelpipe_ingest_spool_replayed_total 300"),
            "{text}"
        );
    }
}
