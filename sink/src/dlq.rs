//! The dead-letter topic: [`DeadLetters`], the I/O seam, and its Kafka implementation.
//!
//! A message the sink cannot store goes to `<topic>.dlq` with its original bytes and key, and
//! headers saying why and where it came from, so it can be inspected and replayed (see
//! docs/operations-sink.md). Its offset is committed only after the dead-letter topic confirmed it.

use std::future::Future;

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::SinkConfig;
use crate::error::{Error, Result};
use crate::kafka::shared_client_config;
use crate::row::BadMessage;

/// Sends bad messages somewhere they are kept.
pub trait DeadLetters: Send + Sync {
    /// Sends every message and waits until each is confirmed; any failure fails the whole call
    /// (the batch is then retried, and a message may be dead-lettered twice, never zero times).
    fn send(&self, bad: &[BadMessage]) -> impl Future<Output = Result<()>> + Send;
}

/// The dead-letter topic on the same Kafka cluster.
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl KafkaDeadLetters {
    /// A producer for the configured dead-letter topic.
    pub fn new(config: &SinkConfig) -> Result<KafkaDeadLetters> {
        // Only the connection and security properties apply to this producer; the rest of
        // `kafka.properties` is the consumer's.
        let mut c = shared_client_config(config);
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            // A dead letter is as large as the message it copies, which the broker took from an
            // lz4 producer (the edge) under its limit: compressed alike, and without librdkafka's
            // own 1 MB cap on the uncompressed message, it fits where the original did. Otherwise
            // an oversized message would fail its batch for good and hold its partition.
            .set("compression.type", "lz4")
            .set("message.max.bytes", "1000000000");
        Ok(KafkaDeadLetters {
            producer: c.create()?,
            topic: config.dead_letter_topic(),
        })
    }

    /// Fails unless the dead-letter topic exists: a missing one would stall every batch holding a
    /// bad message, so it is a start-up error naming the setting rather than a retry loop.
    pub async fn check_topic(&self) -> Result<()> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
        })
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)??;
        let missing = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .is_none_or(|t| t.error().is_some() || t.partitions().is_empty());
        if missing {
            return Err(Error::config(
                "kafka.dead_letter_topic",
                format!(
                    "topic `{}` does not exist on the brokers; create it",
                    self.topic
                ),
            ));
        }
        Ok(())
    }
}

impl DeadLetters for KafkaDeadLetters {
    async fn send(&self, bad: &[BadMessage]) -> Result<()> {
        let mut pending = Vec::with_capacity(bad.len());
        for b in bad {
            let partition = b.kafka_partition.to_string();
            let offset = b.kafka_offset.to_string();
            let index = b.kafka_index.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "pixelpipe.reason",
                    value: Some(b.reason.as_str()),
                })
                .insert(Header {
                    key: "pixelpipe.error",
                    value: Some(b.error.as_str()),
                })
                .insert(Header {
                    key: "pixelpipe.source.topic",
                    value: Some(b.kafka_topic.as_str()),
                })
                .insert(Header {
                    key: "pixelpipe.source.partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "pixelpipe.source.offset",
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: "pixelpipe.source.index",
                    value: Some(index.as_str()),
                });
            let record = FutureRecord::<(), [u8]>::to(&self.topic)
                .payload(&b.raw)
                .headers(headers);
            // Enqueue all first, then wait: one round trip for the lot, not one per message.
            pending.push(self.producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_canceled) => return Err(rdkafka::error::KafkaError::Canceled.into()),
            }
        }
        Ok(())
    }
}
