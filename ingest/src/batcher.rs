//! Batcher threads: drain the channel in batches, encode each hit once, hand it to the producer.
//!
//! Plain OS threads, not async tasks: encoding is CPU work and the producer's `send` is a
//! synchronous call into librdkafka, so neither belongs on the HTTP runtime. Kafka-side batching
//! (`linger.ms`, `batch.size`) is librdkafka's; a batch here is how many hits one wake-up takes.
//!
//! This module owns the stop-and-drain rule: on stop every hit already in the channel is still
//! produced, within `kafka.flush_timeout_ms`; anything left after that is counted
//! `dropped{reason="shutdown"}`. It does not know Kafka: I/O sits behind
//! [`HitProducer`](crate::produce::HitProducer).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use crate::config::MessageKey;
use crate::geo::Geo;
use crate::hit::DropReason;
use crate::metrics::Metrics;
use crate::privacy::{Privacy, Verdict};
use crate::produce::{BufferFull, SharedProducer};
use crate::wire::{self, Hit};

/// How the batcher threads run.
#[derive(Debug, Clone)]
pub struct BatcherSettings {
    /// Threads to run.
    pub threads: usize,
    /// Hits taken per wake-up at most.
    pub batch_max_hits: usize,
    /// Which bytes key each message.
    pub message_key: MessageKey,
    /// After stop, how long to keep trying to hand the remaining hits to the producer.
    pub drain_timeout: Duration,
    /// The privacy policy, applied to every hit before it is keyed and encoded.
    pub privacy: Privacy,
    /// GeoIP databases, looked up before the privacy policy minimises the address.
    pub geo: Arc<Geo>,
}

/// Running batcher threads.
pub struct Batchers {
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Batchers {
    /// Starts the threads.
    pub fn spawn(
        rx: Receiver<Hit>,
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
                    buf: Vec::with_capacity(1024),
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

    /// Stops taking new wake-ups, produces what is in the channel, and waits for the threads.
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
    rx: Receiver<Hit>,
    stop: Receiver<()>,
    producer: SharedProducer,
    settings: BatcherSettings,
    metrics: Metrics,
    buf: Vec<u8>,
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
            batch.retain_mut(|hit| self.prepare(hit));
            let given_up = batch.iter().position(|hit| !self.produce(hit, None));
            match given_up {
                // Stop arrived while the producer was full: the rest goes through the drain.
                Some(i) => {
                    batch.drain(..i);
                    break;
                }
                None => batch.clear(),
            }
        }
        let deadline = Instant::now() + self.settings.drain_timeout;
        self.drain(deadline, batch);
    }

    /// Produces everything still in the channel (and `pending`, already prepared) until
    /// `deadline`.
    fn drain(mut self, deadline: Instant, pending: Vec<Hit>) {
        for hit in pending {
            self.produce_or_drop(&hit, deadline);
        }
        while let Ok(mut hit) = self.rx.try_recv() {
            if self.prepare(&mut hit) {
                self.produce_or_drop(&hit, deadline);
            }
        }
        self.metrics.queued(self.rx.len());
    }

    fn produce_or_drop(&mut self, hit: &Hit, deadline: Instant) {
        if !self.produce(hit, Some(deadline)) {
            self.metrics.dropped(DropReason::Shutdown);
        }
    }

    /// Looks up the place and applies the privacy policy, exactly once per hit (both read the
    /// full address, which the policy then minimises). Returns false for a hit the policy drops;
    /// it is counted.
    fn prepare(&self, hit: &mut Hit) -> bool {
        self.settings.geo.enrich(hit);
        match self.settings.privacy.apply(hit) {
            Verdict::Keep => true,
            Verdict::Drop(reason) => {
                self.metrics.dropped(reason);
                false
            }
        }
    }

    /// Hands a prepared hit to the producer, retrying while its buffer is full. Returns false
    /// when it gave up: without a deadline, because stop was requested; with one, because it
    /// passed.
    fn produce(&mut self, hit: &Hit, deadline: Option<Instant>) -> bool {
        self.buf.clear();
        wire::encode(hit, &mut self.buf);
        let ip_key;
        let key = match self.settings.message_key {
            MessageKey::None => None,
            MessageKey::Site => Some(hit.site_id.as_bytes()),
            MessageKey::Visitor => match (&hit.user_id, hit.client_ip) {
                (Some(uid), _) => Some(uid.as_bytes()),
                (None, Some(ip)) => {
                    ip_key = ip.to_string();
                    Some(ip_key.as_bytes())
                }
                (None, None) => None,
            },
        };
        loop {
            match self.producer.send(key, &self.buf) {
                Ok(()) => return true,
                Err(BufferFull) => {
                    let give_up = match deadline {
                        Some(d) => Instant::now() >= d,
                        None => !matches!(
                            self.stop.try_recv(),
                            Err(crossbeam_channel::TryRecvError::Empty)
                        ),
                    };
                    if give_up {
                        return false;
                    }
                    // librdkafka frees room as deliveries complete; a short sleep avoids spinning.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
