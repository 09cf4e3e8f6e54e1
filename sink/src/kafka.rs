//! The sink's Kafka clients: the consumer group member behind [`HitConsumer`], its librdkafka
//! configuration and callbacks (consumer lag, rebalances), and the one list of pass-through
//! properties that also apply to the sink's producers (dead letters, replay).
//!
//! It does not decide anything: when to commit, pause or drop rows is the consumer loop's rule
//! (`consumer`).

use std::future::Future;
use std::sync::Mutex;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList};

use crate::config::SinkConfig;
use crate::error::Result;
use crate::metrics::Metrics;

/// Prefixes of the `kafka.properties` that also apply to the sink's producers: connection and
/// security. The rest of `kafka.properties` is the consumer's alone.
const SHARED_PROPERTIES: [&str; 6] = [
    "security.",
    "sasl.",
    "ssl.",
    "socket.",
    "client.",
    "broker.",
];

/// A client configuration for a producer or a side consumer of the sink: the brokers, and the
/// connection and security entries of `kafka.properties`.
pub fn shared_client_config(config: &SinkConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in &config.kafka.properties {
        if SHARED_PROPERTIES.iter().any(|p| k.starts_with(p)) {
            c.set(k, v);
        }
    }
    c
}

/// One message as the consumer loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Its payload (empty for a tombstone).
    pub payload: Vec<u8>,
}

/// A consumer group member, as the loop uses it. Partitions are of the one topic the member is
/// subscribed to.
pub trait HitConsumer: Send + Sync {
    /// The next message from an assigned, unpaused partition (a real consumer may still hand
    /// out what it fetched just before a pause). An error is a consume error the loop logs and
    /// waits out.
    fn recv(&self) -> impl Future<Output = Result<Message>> + Send;
    /// The partitions this member owns now.
    fn assignment(&self) -> Result<Vec<i32>>;
    /// Stops fetching from `partitions`.
    fn pause(&self, partitions: &[i32]) -> Result<()>;
    /// Fetches from `partitions` again.
    fn resume(&self, partitions: &[i32]) -> Result<()>;
    /// Commits `(partition, next offset to read)` pairs and waits for the broker's answer.
    fn commit(&self, offsets: &[(i32, i64)]) -> Result<()>;
    /// The partitions revoked by rebalances since the last call.
    fn take_revoked(&self) -> Vec<i32>;
    /// Leaves the group.
    fn unsubscribe(&self);
}

/// Callbacks librdkafka calls while the consumer is polled.
pub struct SinkContext {
    metrics: Metrics,
    topic: String,
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for SinkContext {
    fn stats(&self, stats: Statistics) {
        if let Some(topic) = stats.topics.get(&self.topic) {
            for (partition, p) in &topic.partitions {
                // -1 is librdkafka's internal partition; lag -1 means not known yet.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag(*partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions revoked");
                for p in &partitions {
                    self.metrics.forget_partition(*p);
                }
                self.revoked
                    .lock()
                    .expect("revoked list")
                    .extend(partitions);
            }
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// The configured consumer group member (rdkafka's `StreamConsumer`).
pub struct KafkaConsumer {
    consumer: StreamConsumer<SinkContext>,
    topic: String,
}

impl KafkaConsumer {
    /// Joins the configured group with manual commits (`enable.auto.commit` and
    /// `enable.auto.offset.store` off) and reads a new group's partitions from the earliest
    /// offset; `kafka.properties` are applied last.
    pub fn new(config: &SinkConfig, metrics: Metrics) -> Result<KafkaConsumer> {
        let k = &config.kafka;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &k.brokers)
            .set("group.id", &k.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "statistics.interval.ms",
                k.statistics_interval_ms.to_string(),
            );
        for (name, value) in &k.properties {
            c.set(name, value);
        }
        let context = SinkContext {
            metrics,
            topic: k.topic.clone(),
            revoked: Mutex::new(Vec::new()),
        };
        let consumer: StreamConsumer<SinkContext> = c.create_with_context(context)?;
        consumer.subscribe(&[&k.topic])?;
        Ok(KafkaConsumer {
            consumer,
            topic: k.topic.clone(),
        })
    }

    fn partitions(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        tpl
    }
}

impl HitConsumer for KafkaConsumer {
    async fn recv(&self) -> Result<Message> {
        let m = self.consumer.recv().await?;
        Ok(Message {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().unwrap_or_default().to_vec(),
        })
    }

    fn assignment(&self) -> Result<Vec<i32>> {
        let tpl = self.consumer.assignment()?;
        Ok(tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect())
    }

    fn pause(&self, partitions: &[i32]) -> Result<()> {
        Ok(self.consumer.pause(&self.partitions(partitions))?)
    }

    fn resume(&self, partitions: &[i32]) -> Result<()> {
        Ok(self.consumer.resume(&self.partitions(partitions))?)
    }

    fn commit(&self, offsets: &[(i32, i64)]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in offsets {
            tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*offset))?;
        }
        Ok(self.consumer.commit(&tpl, CommitMode::Sync)?)
    }

    fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .expect("revoked list"),
        )
    }

    fn unsubscribe(&self) {
        self.consumer.unsubscribe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_and_security_properties_reach_the_producers() {
        let mut config = SinkConfig::default();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "PLAIN"),
            ("session.timeout.ms", "6000"),
            ("fetch.min.bytes", "1"),
        ] {
            config.kafka.properties.insert(k.into(), v.into());
        }
        let c = shared_client_config(&config);
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(c.get("session.timeout.ms"), None);
        assert_eq!(c.get("fetch.min.bytes"), None);
    }
}
