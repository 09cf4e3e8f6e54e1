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
mod tests {
    use super::*;
    use crate::privacy::{visitor_id, IpMode, PrivacyConfig, SignalPolicy};
    use crate::produce::testing::RecordingProducer;
    use crate::queue::HitQueue;
    use crate::wire::testing::sample_hit;
    use std::sync::atomic::Ordering;

    fn settings(key: MessageKey) -> BatcherSettings {
        BatcherSettings {
            threads: 2,
            batch_max_hits: 8,
            message_key: key,
            drain_timeout: Duration::from_millis(200),
            // Full IPs and ignored signals: these tests are about keys and delivery.
            privacy: Privacy::new(PrivacyConfig {
                ip_mode: IpMode::Full,
                gpc: SignalPolicy::Ignore,
                dnt: SignalPolicy::Ignore,
                optout: SignalPolicy::Ignore,
                ..PrivacyConfig::default()
            }),
            geo: Arc::new(Geo::none()),
        }
    }

    #[test]
    fn every_queued_hit_is_produced_once_and_decodes() {
        let metrics = Metrics::new();
        let (q, rx) = HitQueue::new(1000, 80, metrics.clone());
        let producer = Arc::new(RecordingProducer::default());
        let b = Batchers::spawn(
            rx,
            producer.clone(),
            settings(MessageKey::Visitor),
            metrics.clone(),
        )
        .unwrap();
        let mut ids = Vec::new();
        for i in 0..500 {
            let mut h = sample_hit();
            h.event_id = uuid::Uuid::from_u128(i);
            ids.push(h.event_id);
            q.offer(h);
        }
        b.stop_and_drain();
        let sent = producer.sent.lock().unwrap();
        let mut got: Vec<_> = sent
            .iter()
            .map(|(_, p)| wire::decode(p).unwrap().event_id)
            .collect();
        got.sort();
        assert_eq!(got, ids);
        assert_eq!(
            sent[0].0.as_deref(),
            Some(&b"u-42"[..]),
            "visitor key is the uid"
        );
    }

    #[test]
    fn message_keys() {
        for (mode, uid, want) in [
            (MessageKey::Site, Some("u"), Some(b"shop".to_vec())),
            (MessageKey::Visitor, None, Some(b"2001:db8::1".to_vec())),
            (MessageKey::None, Some("u"), None),
        ] {
            let metrics = Metrics::new();
            let (q, rx) = HitQueue::new(10, 80, metrics.clone());
            let producer = Arc::new(RecordingProducer::default());
            let b = Batchers::spawn(rx, producer.clone(), settings(mode), metrics).unwrap();
            let mut h = sample_hit();
            h.user_id = uid.map(str::to_owned);
            q.offer(h);
            b.stop_and_drain();
            assert_eq!(producer.sent.lock().unwrap()[0].0, want, "{mode:?}");
        }
    }

    #[test]
    fn a_full_producer_at_shutdown_is_counted_not_hidden() {
        let metrics = Metrics::new();
        let (q, rx) = HitQueue::new(100, 80, metrics.clone());
        let producer = Arc::new(RecordingProducer::default());
        producer.full.store(true, Ordering::SeqCst);
        let b = Batchers::spawn(
            rx,
            producer.clone(),
            settings(MessageKey::None),
            metrics.clone(),
        )
        .unwrap();
        for _ in 0..10 {
            q.offer(sample_hit());
        }
        // Let a batcher take the first batch and start retrying against the full producer.
        while producer.refused.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        b.stop_and_drain();
        assert!(producer.sent.lock().unwrap().is_empty());
        let text = metrics.render();
        assert!(
            text.contains("pixelpipe_ingest_hits_dropped_total{reason=\"shutdown\"} 10"),
            "{text}"
        );
    }

    /// A hit whose send was interrupted by stop goes through the drain; its place and privacy
    /// must not be computed again from the already minimised address.
    #[test]
    fn a_hit_retried_in_the_drain_is_prepared_once() {
        let metrics = Metrics::new();
        let (q, rx) = HitQueue::new(10, 80, metrics.clone());
        let producer = Arc::new(RecordingProducer::default());
        producer.full.store(true, Ordering::SeqCst);
        let privacy = PrivacyConfig {
            hash_secret: "0123456789abcdef".into(),
            ..PrivacyConfig::default()
        };
        let settings = BatcherSettings {
            threads: 1,
            batch_max_hits: 8,
            message_key: MessageKey::None,
            drain_timeout: Duration::from_secs(5),
            privacy: Privacy::new(privacy),
            geo: Arc::new(Geo::none()),
        };
        let b = Batchers::spawn(rx, producer.clone(), settings, metrics).unwrap();
        let mut hit = sample_hit();
        hit.client_ip = Some("203.0.113.77".parse().unwrap());
        (
            hit.dnt,
            hit.sec_gpc,
            hit.visitor_id,
            hit.anonymized,
            hit.opted_out,
        ) = (None, None, None, false, false);
        let expected = visitor_id(
            "0123456789abcdef",
            hit.received_at_ms / 86_400_000,
            "shop",
            "203.0.113.77".parse().unwrap(),
            "Mozilla/5.0",
        );
        q.offer(hit);
        while producer.refused.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let stopping = std::thread::spawn(move || b.stop_and_drain());
        std::thread::sleep(Duration::from_millis(50));
        producer.full.store(false, Ordering::SeqCst);
        stopping.join().unwrap();
        let sent = producer.sent.lock().unwrap();
        assert_eq!(sent.len(), 1);
        let got = wire::decode(&sent[0].1).unwrap();
        assert_eq!(got.client_ip, Some("203.0.113.0".parse().unwrap()));
        assert_eq!(
            got.visitor_id.as_deref(),
            Some(expected.as_str()),
            "computed once, from the full address"
        );
    }
}
