//! Replaying the dead-letter topic onto the hits topic, after the cause is fixed (for example a
//! sink upgraded to read a newer schema version). Copies every message's bytes and key as they are;
//! a message that is still bad simply returns to the dead-letter topic, and one stored twice is
//! folded by `event_id`. Owns nothing else.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::SinkConfig;
use crate::error::Result;
use crate::kafka::shared_client_config;

/// A message's key (if any) and payload.
type KeyAndPayload = (Option<Vec<u8>>, Vec<u8>);

/// Copies every message now on the dead-letter topic onto the hits topic; returns how many.
pub async fn replay_dead_letters(config: &SinkConfig) -> Result<u64> {
    let from = config.dead_letter_topic();
    let to = config.kafka.topic.clone();
    let consumer: BaseConsumer = shared_client_config(config)
        .set("group.id", "pixelpipe-replay")
        .set("enable.auto.commit", "false")
        .create()?;
    let producer: FutureProducer = shared_client_config(config)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;

    // Everything up to each partition's current end, read by assignment (no group offsets).
    let (from_c, consumer) = (from.clone(), consumer);
    let messages = tokio::task::spawn_blocking(move || -> Result<Vec<KeyAndPayload>> {
        let metadata = consumer.fetch_metadata(Some(&from_c), Duration::from_secs(10))?;
        let mut ends = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) =
                consumer.fetch_watermarks(&from_c, p.id(), Duration::from_secs(10))?;
            if high > low {
                tpl.add_partition_offset(&from_c, p.id(), Offset::Offset(low))?;
                ends.push((p.id(), high));
            }
        }
        let mut out = Vec::new();
        if ends.is_empty() {
            return Ok(out);
        }
        consumer.assign(&tpl)?;
        let mut remaining = ends.clone();
        while !remaining.is_empty() {
            let Some(m) = consumer.poll(Duration::from_secs(10)) else {
                break;
            };
            let m = m?;
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
            ));
            remaining.retain(|(p, end)| !(*p == m.partition() && m.offset() + 1 >= *end));
        }
        Ok(out)
    })
    .await
    .map_err(|_| rdkafka::error::KafkaError::Canceled)??;

    let mut pending = Vec::with_capacity(messages.len());
    for (key, payload) in &messages {
        let mut record = FutureRecord::<[u8], [u8]>::to(&to).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for delivery in pending {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_) => return Err(rdkafka::error::KafkaError::Canceled.into()),
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(messages.len() as u64)
}
