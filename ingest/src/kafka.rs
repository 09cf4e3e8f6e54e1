//! The Kafka side of the edge: an rdkafka `ThreadedProducer` behind [`HitProducer`].
//!
//! Owns the librdkafka configuration (pixelpipe's defaults, then the user's pass-through
//! properties), the delivery callback that reports every hit's fate to the [`Ledger`], the
//! statistics callback that feeds metrics and readiness, and replacing a producer librdkafka
//! declared unusable (a fatal error, e.g. an idempotent producer whose sequence broke). One
//! `send` per hit with a delivery callback, not a `FutureProducer` future per hit, which costs
//! about twice as much per message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use crate::produce::{BufferFull, DeliveryFailure, HitProducer, Origin};

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
    connected: AtomicBool,
    /// Seconds since `started` of the last failure log line, to log at most one per second.
    last_failure_log_s: AtomicU64,
    failures_since_log: AtomicU64,
    started: Instant,
}

impl ClientContext for EdgeContext {
    fn stats(&self, stats: Statistics) {
        self.metrics.producer_queue(stats.msg_cnt as i64);
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

/// What travels with each message to its delivery report: when it was handed over, and where
/// it is kept besides.
type Handed = Box<(Instant, Origin)>;

impl ProducerContext for EdgeContext {
    type DeliveryOpaque = Handed;

    fn delivery(&self, result: &DeliveryResult<'_>, handed: Handed) {
        let (handed_over, origin) = *handed;
        match result {
            Ok(_) => self.ledger.delivered(origin, handed_over),
            Err((error, message)) => {
                use rdkafka::Message;
                self.ledger.failed(
                    origin,
                    message.key(),
                    message.payload().unwrap_or_default(),
                    failure(error),
                );
                self.log_failure(error);
            }
        }
    }
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
        connected: AtomicBool::new(false),
        last_failure_log_s: AtomicU64::new(0),
        failures_since_log: AtomicU64::new(0),
        started: Instant::now(),
    };
    Ok(client_config(k).create_with_context(context)?)
}

impl HitProducer for KafkaProducer {
    fn send(&self, key: Option<&[u8]>, payload: &[u8], origin: Origin) -> Result<(), BufferFull> {
        let guard = self.producer.read().unwrap_or_else(|e| e.into_inner());
        let mut record =
            BaseRecord::with_opaque_to(&self.config.topic, Box::new((Instant::now(), origin)))
                .payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        match guard.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => Err(BufferFull),
            Err((error, record)) => {
                // Refused outright (e.g. over message.max.bytes, or the producer is unusable):
                // its fate is decided now.
                drop(record);
                self.ledger.failed(origin, key, payload, failure(&error));
                guard.context().log_failure(&error);
                Ok(())
            }
        }
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
