//! The Kafka side of the edge: an rdkafka `ThreadedProducer` behind [`HitProducer`].
//!
//! Owns the librdkafka configuration (pixelpipe's defaults, then the user's pass-through
//! properties), the delivery callback that reports every hit's fate to the [`Ledger`], the
//! statistics callback that feeds metrics and readiness, and replacing a producer librdkafka
//! declared unusable (a fatal error, e.g. an idempotent producer whose sequence broke). One
//! `send` per message with a delivery callback, not a `FutureProducer` future per message, which
//! costs about twice as much.
//!
//! A batcher's batch is packed several hits per message (`crate::pack`, `kafka.pack_max_bytes`)
//! once the topic's partition count is known from librdkafka's statistics; until then, and for
//! replayed hits, one hit per message. `kafka.buffer_max_hits` bounds the hits (not messages) the
//! producer holds.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::error::Result;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::outbound::Encoded;
use crate::pack::{Keys, Pack, Packer};
use crate::produce::{BufferFull, DeliveryFailure, HitProducer, NotTaken, Origin};

/// The librdkafka properties the edge sets, in order; `kafka.properties` are applied after them
/// and win.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("acks", &k.acks)
        .set("enable.idempotence", k.enable_idempotence.to_string())
        .set("compression.type", &k.compression)
        .set("linger.ms", k.linger_ms.to_string())
        .set("batch.size", k.batch_size_bytes.to_string())
        .set(
            "queue.buffering.max.messages",
            k.buffer_max_hits.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            k.buffer_max_kbytes.to_string(),
        )
        .set("message.timeout.ms", k.message_timeout_ms.to_string())
        .set(
            "statistics.interval.ms",
            k.statistics_interval_ms.to_string(),
        );
    for (name, value) in &k.properties {
        c.set(name, value);
    }
    c
}

/// Callbacks librdkafka calls from the producer's polling thread.
pub struct EdgeContext {
    ledger: Arc<Ledger>,
    metrics: Metrics,
    topic: String,
    /// The topic's partition count from the latest statistics; 0 until known.
    partitions: AtomicU32,
    /// Hits handed over and not yet decided (delivered or failed).
    hits_held: AtomicUsize,
    connected: AtomicBool,
    /// Seconds since `started` of the last failure log line, to log at most one per second.
    last_failure_log_s: AtomicU64,
    failures_since_log: AtomicU64,
    started: Instant,
}

impl ClientContext for EdgeContext {
    fn stats(&self, stats: Statistics) {
        self.metrics.producer_queue(stats.msg_cnt as i64);
        if let Some(topic) = stats.topics.get(&self.topic) {
            // librdkafka lists the unassigned partition as -1.
            let n = topic.partitions.keys().filter(|p| **p >= 0).count();
            let n = u32::try_from(n).unwrap_or(0);
            self.partitions.store(n, Ordering::Relaxed);
            self.metrics.topic_partitions(n);
        }
        let mut up = false;
        for broker in stats.brokers.values().filter(|b| b.source != "internal") {
            up |= broker.state == "UP";
            if let Some(rtt) = &broker.rtt {
                // librdkafka reports microseconds.
                let micros = u64::try_from(rtt.avg).unwrap_or(0);
                self.metrics
                    .broker_rtt(&broker.name, Duration::from_micros(micros));
            }
        }
        if up != self.connected.swap(up, Ordering::Relaxed) {
            tracing::info!(connected = up, "kafka broker connection changed");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
    }
}

/// What travels with each message to its delivery report.
pub struct Handed {
    /// When it was handed to librdkafka.
    at: Instant,
    /// Where its hits are kept besides.
    origin: Origin,
    /// How many hits it packs.
    hits: usize,
    /// A packed message's hits' own keys (the message has none), to spool each with its key.
    keys: Option<Keys>,
}

impl ProducerContext for EdgeContext {
    type DeliveryOpaque = Box<Handed>;

    fn delivery(&self, result: &DeliveryResult<'_>, handed: Box<Handed>) {
        self.hits_held.fetch_sub(handed.hits, Ordering::Relaxed);
        match result {
            Ok(_) => self.ledger.delivered(handed.origin, handed.at, handed.hits),
            Err((error, message)) => {
                use rdkafka::Message;
                let payload = message.payload().unwrap_or_default();
                match &handed.keys {
                    Some(keys) => {
                        self.ledger
                            .failed_packed(handed.origin, keys, payload, failure(error))
                    }
                    None => {
                        self.ledger
                            .failed(handed.origin, message.key(), payload, failure(error))
                    }
                }
                self.log_failure(error);
            }
        }
    }
}

/// Where a message goes: by its one hit's key (librdkafka's partitioner), or as a pack.
enum To<'a> {
    Key(Option<&'a [u8]>),
    Pack(&'a Pack),
}

impl EdgeContext {
    fn log_failure(&self, error: &KafkaError) {
        let pending = self.failures_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        let now_s = self.started.elapsed().as_secs() + 1;
        let last = self.last_failure_log_s.load(Ordering::Relaxed);
        if now_s > last
            && self
                .last_failure_log_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.failures_since_log.store(0, Ordering::Relaxed);
            tracing::warn!(%error, failed = pending, "hits not delivered to kafka (logged at most once a second)");
        }
    }
}

/// The bounded reason for a librdkafka error.
fn failure(error: &KafkaError) -> DeliveryFailure {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => DeliveryFailure::TimedOut,
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => {
            DeliveryFailure::Purged
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => DeliveryFailure::TooLarge,
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            DeliveryFailure::UnknownTopic
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => DeliveryFailure::NotAuthorized,
        Some(RDKafkaErrorCode::QueueFull) => DeliveryFailure::QueueFull,
        Some(
            RDKafkaErrorCode::NotEnoughReplicas | RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
        ) => DeliveryFailure::NotEnoughReplicas,
        Some(RDKafkaErrorCode::LeaderNotAvailable | RDKafkaErrorCode::NotLeaderForPartition) => {
            DeliveryFailure::NoLeader
        }
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::RequestTimedOut,
        ) => DeliveryFailure::Transport,
        Some(RDKafkaErrorCode::Unknown) => DeliveryFailure::BrokerError,
        Some(
            RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId,
        ) => DeliveryFailure::Fatal,
        _ => DeliveryFailure::Other,
    }
}

/// The edge's Kafka producer.
pub struct KafkaProducer {
    /// Replaced as a whole by [`HitProducer::recover`] after a fatal error.
    producer: RwLock<Arc<ThreadedProducer<EdgeContext>>>,
    config: KafkaConfig,
    ledger: Arc<Ledger>,
}

impl KafkaProducer {
    /// Creates the producer; it connects in the background and reports to `ledger`.
    pub fn new(k: &KafkaConfig, ledger: Arc<Ledger>) -> Result<KafkaProducer> {
        Ok(KafkaProducer {
            producer: RwLock::new(Arc::new(create(k, ledger.clone())?)),
            config: k.clone(),
            ledger,
        })
    }

    fn current(&self) -> Arc<ThreadedProducer<EdgeContext>> {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn create(k: &KafkaConfig, ledger: Arc<Ledger>) -> Result<ThreadedProducer<EdgeContext>> {
    let context = EdgeContext {
        metrics: ledger.metrics().clone(),
        ledger,
        topic: k.topic.clone(),
        partitions: AtomicU32::new(0),
        hits_held: AtomicUsize::new(0),
        connected: AtomicBool::new(false),
        last_failure_log_s: AtomicU64::new(0),
        failures_since_log: AtomicU64::new(0),
        started: Instant::now(),
    };
    Ok(client_config(k).create_with_context(context)?)
}

thread_local! {
    /// Each batcher thread's packer, so its buffers are reused batch to batch.
    static PACKER: RefCell<Packer> = RefCell::new(Packer::default());
}

impl KafkaProducer {
    /// Hands one message to librdkafka: a hit by its key, or a pack to its partition.
    /// `BufferFull` when `kafka.buffer_max_hits` would be passed or librdkafka's queue is full;
    /// any other refusal is reported to the ledger here.
    fn produce(
        &self,
        producer: &ThreadedProducer<EdgeContext>,
        to: To<'_>,
        payload: &[u8],
        origin: Origin,
    ) -> Result<(), BufferFull> {
        let hits = match to {
            To::Key(_) => 1,
            To::Pack(pack) => pack.hits.len(),
        };
        let context = producer.context();
        let held = context.hits_held.fetch_add(hits, Ordering::Relaxed);
        if held + hits > self.config.buffer_max_hits {
            context.hits_held.fetch_sub(hits, Ordering::Relaxed);
            return Err(BufferFull);
        }
        let handed = Box::new(Handed {
            at: Instant::now(),
            origin,
            hits,
            keys: match to {
                To::Key(_) => None,
                To::Pack(pack) => Some(pack.keys.clone()),
            },
        });
        let mut record = BaseRecord::with_opaque_to(&self.config.topic, handed).payload(payload);
        match to {
            To::Key(Some(key)) => record = record.key(key),
            To::Key(None) => {}
            To::Pack(pack) => {
                if let Some(partition) = pack.partition {
                    record = record.partition(partition);
                }
            }
        }
        let refused = match producer.send(record) {
            Ok(()) => {
                self.ledger.metrics().message_sent(hits);
                return Ok(());
            }
            Err((error, record)) => {
                drop(record);
                error
            }
        };
        context.hits_held.fetch_sub(hits, Ordering::Relaxed);
        if let KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) = refused {
            return Err(BufferFull);
        }
        // Refused outright (e.g. over message.max.bytes, or the producer is unusable): its fate
        // is decided now.
        match to {
            To::Key(key) => self.ledger.failed(origin, key, payload, failure(&refused)),
            To::Pack(pack) => {
                self.ledger
                    .failed_packed(origin, &pack.keys, payload, failure(&refused))
            }
        }
        context.log_failure(&refused);
        Ok(())
    }
}

impl HitProducer for KafkaProducer {
    fn send(&self, key: Option<&[u8]>, payload: &[u8], origin: Origin) -> Result<(), BufferFull> {
        let guard = self.producer.read().unwrap_or_else(|e| e.into_inner());
        self.produce(&guard, To::Key(key), payload, origin)
    }

    fn send_batch(&self, batch: &Encoded, origin: Origin, not_taken: &mut NotTaken<'_>) {
        let guard = self.producer.read().unwrap_or_else(|e| e.into_inner());
        let partitions = guard.context().partitions.load(Ordering::Relaxed);
        if self.config.pack_max_bytes == 0 || partitions == 0 || batch.len() < 2 {
            for (key, payload) in batch.iter() {
                if let Err(BufferFull) = self.produce(&guard, To::Key(key), payload, origin) {
                    not_taken(key, payload);
                }
            }
            return;
        }
        PACKER.with_borrow_mut(|packer| {
            packer.pack(
                batch,
                partitions,
                self.config.pack_max_bytes,
                |pack: &Pack| {
                    let sent = self.produce(&guard, To::Pack(pack), &pack.payload, origin);
                    if let Err(BufferFull) = sent {
                        for &i in &pack.hits {
                            let (key, payload) = batch.get(i);
                            not_taken(key, payload);
                        }
                    }
                },
            )
        });
    }

    fn flush(&self, timeout: Duration) {
        let producer = self.current();
        if let Err(error) = producer.flush(timeout) {
            tracing::warn!(%error, in_flight = producer.in_flight_count(), "kafka flush did not finish");
        }
    }

    fn connected(&self) -> bool {
        self.current().context().connected.load(Ordering::Relaxed)
    }

    /// librdkafka's fatal errors (idempotence lost its sequence or epoch) leave the producer
    /// refusing everything for good; its documentation's remedy is a new producer. Hits the old
    /// one held are purged when it is dropped, and the ledger spools them for replay.
    fn recover(&self) {
        let Some((code, reason)) = self.current().client().fatal_error() else {
            return;
        };
        tracing::error!(?code, %reason, "the kafka producer hit a fatal error; replacing it");
        match create(&self.config, self.ledger.clone()) {
            Ok(fresh) => {
                let old = std::mem::replace(
                    &mut *self.producer.write().unwrap_or_else(|e| e.into_inner()),
                    Arc::new(fresh),
                );
                drop(old);
            }
            Err(error) => tracing::error!(%error, "could not create a new kafka producer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_properties_win() {
        let mut k = KafkaConfig::default();
        k.properties.insert("linger.ms".into(), "3".into());
        k.properties
            .insert("sasl.mechanisms".into(), "PLAIN".into());
        let c = client_config(&k);
        assert_eq!(c.get("linger.ms"), Some("3"));
        assert_eq!(c.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
    }
}
