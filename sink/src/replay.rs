//! Replaying the dead-letter topic onto the hits topic, after the cause is fixed (for example a
//! sink upgraded to read a newer schema version). Copies every message's bytes and key as they are;
//! a message that is still bad simply returns to the dead-letter topic, and one stored twice is
//! folded by `event_id`. Owns nothing else.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::SinkConfig;
use crate::error::{Error, Result};
use crate::kafka::shared_client_config;

/// A message's key (if any) and payload.
type KeyAndPayload = (Option<Vec<u8>>, Vec<u8>);

/// Copies every message now on the dead-letter topic onto the hits topic; returns how many.
/// Reads everything first (each partition up to its end when the replay reaches it), then
/// produces: [`Error::ReplayIncomplete`] when the topic goes quiet for 10 s before that end, with
/// nothing copied. The dead-letter topic is left as it is: a message that is still bad is
/// appended to it again, and a second replay copies the old messages again, which the tables
/// fold by `event_id`.
pub async fn replay_dead_letters(config: &SinkConfig) -> Result<u64> {
    let from = config.dead_letter_topic();
    let to = config.kafka.topic.clone();
    let consumer: BaseConsumer = shared_client_config(config)
        .set("group.id", "pixelpipe-replay")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let producer: FutureProducer = shared_client_config(config)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;

    // Everything up to each partition's end, read by assignment (no group offsets). The end is
    // where the consumer first reports reaching it (`enable.partition.eof`, from the fetch
    // responses' high watermarks) rather than a watermark asked for up front: the local broker
    // (tansu 0.6.0 on PostgreSQL 15) fails that request (ListOffsets for the latest offset).
    let from_c = from.clone();
    let messages = tokio::task::spawn_blocking(move || -> Result<Vec<KeyAndPayload>> {
        let metadata = consumer.fetch_metadata(Some(&from_c), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(&from_c, p.id(), Offset::Beginning)?;
        }
        let mut remaining: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| p.id())
            .collect();
        let mut out = Vec::new();
        if remaining.is_empty() {
            return Ok(out);
        }
        consumer.assign(&tpl)?;
        while !remaining.is_empty() {
            // Copying part of the topic and reporting success would let an operator believe
            // the rest was replayed; nothing is copied until every partition is read.
            let Some(m) = consumer.poll(Duration::from_secs(10)) else {
                return Err(Error::ReplayIncomplete {
                    topic: from_c,
                    read: out.len(),
                    partitions: remaining.len(),
                });
            };
            match m {
                Ok(m) if remaining.contains(&m.partition()) => out.push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                )),
                // A partition already read to its end: what came after the end is not copied.
                Ok(_) => {}
                Err(KafkaError::PartitionEOF(p)) => remaining.retain(|r| *r != p),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    })
    .await
    .map_err(|_| KafkaError::Canceled)??;

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
            Err(_) => return Err(KafkaError::Canceled.into()),
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(messages.len() as u64)
}
