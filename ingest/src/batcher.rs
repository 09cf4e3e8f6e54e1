//! Batcher threads: drain the channel in batches, prepare and encode each hit once, and hand the
//! batch to the producer, first to the spool in `durability = "disk"`.
//!
//! Plain OS threads, not async tasks: encoding is CPU work and the producer's `send` is a
//! synchronous call into librdkafka, so neither belongs on the HTTP runtime. Kafka-side batching
//! (`linger.ms`, `batch.size`) is librdkafka's; a batch here is how many hits one wake-up takes.
//!
//! After each batch a batcher sleeps `queue.batch_linger_ms` (5 ms by default) instead of
//! waiting on the channel at once: a thread parked on the channel must be woken by the request handler that sends to it
//! (a futex call and a context switch per hit under steady load); a sleeping one is not, and the
//! next batch gathers meanwhile. An idle batcher does park, so the first hit after a quiet spell
//! is taken at once.
//!
//! A batcher never waits for Kafka: a hit the producer's buffer cannot take goes to the spool
//! through the ledger at once. This module owns the stop-and-drain rule: on stop every hit already
//! in the channel is still handed over (or spooled). It does not know Kafka or files: those sit
//! behind [`HitProducer`](crate::produce::HitProducer) and [`Ledger`](crate::ledger::Ledger).

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender};

use crate::metrics::Metrics;
use crate::outbound::{Encoded, Outbound};
use crate::produce::{Origin, SharedProducer};
use crate::spool::{Durability, Entry};
use crate::wire::Hit;

/// How the batcher threads run.
#[derive(Clone)]
pub struct BatcherSettings {
    /// Threads to run.
    pub threads: usize,
    /// Hits taken per wake-up at most.
    pub batch_max_hits: usize,
    /// Sleep after each batch, so the next one gathers without a wake-up per hit.
    pub linger: Duration,
    /// Whether each batch is appended to the spool before it is handed to the producer.
    pub durability: Durability,
    /// Place, privacy, key and encoding of every hit (cloned per thread).
    pub outbound: Outbound,
}

/// Running batcher threads.
pub struct Batchers {
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Batchers {
    /// Starts the threads.
    pub fn spawn(
        rx: Receiver<Box<Hit>>,
        producer: SharedProducer,
        settings: BatcherSettings,
        metrics: Metrics,
    ) -> std::io::Result<Batchers> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let threads = (0..settings.threads)
            .map(|i| {
                let worker = Worker {
                    rx: rx.clone(),
                    stop: stop_rx.clone(),
                    producer: producer.clone(),
                    settings: settings.clone(),
                    metrics: metrics.clone(),
                    out: Encoded::default(),
                };
                std::thread::Builder::new()
                    .name(format!("batcher-{i}"))
                    .spawn(move || worker.run())
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Batchers {
            stop: Some(stop_tx),
            threads,
        })
    }

    /// Stops taking new wake-ups, hands over what is in the channel, and waits for the threads.
    /// Call only after every request handler has finished, so nothing is offered afterwards.
    pub fn stop_and_drain(mut self) {
        // Dropping the only sender disconnects `stop`, which every thread sees at once.
        self.stop.take();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a batcher thread panicked");
            }
        }
    }
}

struct Worker {
    rx: Receiver<Box<Hit>>,
    stop: Receiver<()>,
    producer: SharedProducer,
    settings: BatcherSettings,
    metrics: Metrics,
    out: Encoded,
}

impl Worker {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.settings.batch_max_hits);
        loop {
            select! {
                recv(self.rx) -> first => match first {
                    Ok(hit) => batch.push(hit),
                    Err(_) => break,
                },
                recv(self.stop) -> _ => break,
            }
            batch.extend(self.rx.try_iter().take(self.settings.batch_max_hits - 1));
            self.metrics.batch_taken(batch.len(), self.rx.len());
            // A full batch means more is waiting: take it now, so the linger never caps the rate.
            let full = batch.len() == self.settings.batch_max_hits;
            self.hand_over(batch.drain(..));
            if !full && !self.settings.linger.is_zero() {
                std::thread::sleep(self.settings.linger);
            }
        }
        // Stop: whatever is still in the channel is handed over too.
        while !self.rx.is_empty() {
            let rest: Vec<Box<Hit>> = self
                .rx
                .try_iter()
                .take(self.settings.batch_max_hits)
                .collect();
            self.hand_over(rest.into_iter());
        }
        self.metrics.queued(self.rx.len());
    }

    /// Prepares and encodes a batch, spools it first in disk mode, and hands each hit to the
    /// producer; one the producer cannot take goes to the spool.
    fn hand_over(&mut self, hits: impl Iterator<Item = Box<Hit>>) {
        let outbound = &self.settings.outbound;
        self.out.clear();
        for mut hit in hits {
            if outbound.prepare(&mut hit) {
                outbound.encode(&hit, &mut self.out);
            }
        }
        if self.out.is_empty() {
            return;
        }
        let origin = match self.settings.durability {
            Durability::Memory => Origin::Memory,
            Durability::Disk => match outbound
                .ledger
                .spool()
                .append(self.out.iter(), Entry::WrittenAhead)
            {
                Ok(segment) => Origin::WrittenAhead(segment),
                // Full or unwritable: Kafka may still take them from memory; if it does not,
                // the ledger counts the loss.
                Err(error) => {
                    outbound.ledger.write_ahead_skipped(self.out.len(), &error);
                    Origin::Memory
                }
            },
        };
        self.producer
            .send_batch(&self.out, origin, &mut |key, payload| {
                outbound.ledger.not_taken(origin, key, payload)
            });
    }
}

#[cfg(test)]
mod tests;
