//! Replaying the dead-letter topic onto the hits topic, after the cause is fixed (for example a
//! sink upgraded to read a newer schema version). Copies every message's bytes and key as they are;
//! a message that is still bad simply returns to the dead-letter topic, and one stored twice is
//! folded by `event_id`. Owns nothing else.
//!
//! Where a replay got to is kept as the consumer group `pixelpipe-replay`'s committed offsets, so
//! the next replay copies only what came after: a message that went back to the dead-letter topic
//! is copied once more by the next replay, not by every one. Offsets are committed only after the
//! hits topic has confirmed the copies, in rounds of [`ROUND_MESSAGES`], so memory stays bounded
//! and an interrupted replay resumes where its last confirmed round ended.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::SinkConfig;
use crate::error::{Error, Result};
use crate::kafka::shared_client_config;

/// The consumer group whose committed offsets say where the last replay ended.
pub const REPLAY_GROUP: &str = "pixelpipe-replay";
/// Messages read, copied and confirmed before their offsets are committed.
pub const ROUND_MESSAGES: usize = 10_000;
/// How long the topic may give neither a message nor a partition's end before the replay stops.
const QUIET: Duration = Duration::from_secs(10);

/// A message's key (if any) and payload.
type KeyAndPayload = (Option<Vec<u8>>, Vec<u8>);

/// Copies every message on the dead-letter topic after the last replay's end (all of them the
/// first time) onto the hits topic, each partition up to its end when the replay reaches it
/// (`enable.partition.eof`: the fetch responses' high watermarks, since the local broker, tansu
/// 0.6.0 on PostgreSQL 15, fails a request for the latest offset). Returns how many it copied.
///
/// Errors: the dead-letter topic missing; [`Error::ReplayIncomplete`] when the topic gives
/// nothing for 10 s before every partition's end (what was confirmed is committed, so running it
/// again resumes); a copy the hits topic did not confirm (its round is not committed, and is
/// copied again next time).
pub async fn replay_dead_letters(config: &SinkConfig) -> Result<u64> {
    let from = config.dead_letter_topic();
    let to = config.kafka.topic.clone();
    let consumer: BaseConsumer = shared_client_config(config)
        .set("group.id", REPLAY_GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()?;
    let producer: FutureProducer = shared_client_config(config)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;

    let mut reader = blocking(move || Reader::open(consumer, from)).await??;
    let mut copied = 0u64;
    loop {
        let (r, round) = blocking(move || {
            let round = reader.round();
            (reader, round)
        })
        .await?;
        reader = r;
        let round = round?;
        copy(&producer, &to, &round.messages).await?;
        copied += round.messages.len() as u64;
        reader = blocking(move || reader.commit().map(|()| reader)).await??;
        match round.end {
            RoundEnd::More => {}
            RoundEnd::Done => return Ok(copied),
            RoundEnd::Quiet { partitions } => {
                return Err(Error::ReplayIncomplete {
                    topic: reader.topic,
                    copied,
                    partitions,
                })
            }
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| KafkaError::Canceled.into())
}

/// Produces `messages` to `to` and waits until each is confirmed.
async fn copy(producer: &FutureProducer, to: &str, messages: &[KeyAndPayload]) -> Result<()> {
    let mut pending = Vec::with_capacity(messages.len());
    for (key, payload) in messages {
        let mut record = FutureRecord::<[u8], [u8]>::to(to).payload(payload);
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
    Ok(())
}

/// How a round of reading ended.
enum RoundEnd {
    /// The round is full; more may follow.
    More,
    /// Every partition reached its end.
    Done,
    /// Nothing came for [`QUIET`] while these many partitions had not reached their end.
    Quiet { partitions: usize },
}

struct Round {
    messages: Vec<KeyAndPayload>,
    end: RoundEnd,
}

/// The dead-letter topic, read by assignment from the group's committed offsets.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    /// Partitions not read to their end yet.
    remaining: Vec<i32>,
    /// The next offset of each partition read from, to commit once its copies are confirmed.
    next: BTreeMap<i32, i64>,
}

impl Reader {
    fn open(consumer: BaseConsumer, topic: String) -> Result<Reader> {
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions())
            .map(|p| p.id())
            .collect();
        if partitions.is_empty() {
            return Err(Error::config(
                "kafka.dead_letter_topic",
                format!("topic `{topic}` does not exist on the brokers"),
            ));
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&topic, *p, Offset::Stored)?;
        }
        consumer.assign(&tpl)?;
        Ok(Reader {
            consumer,
            topic,
            remaining: partitions,
            next: BTreeMap::new(),
        })
    }

    /// Reads up to [`ROUND_MESSAGES`] messages.
    fn round(&mut self) -> Result<Round> {
        let mut messages = Vec::new();
        let mut progress = Instant::now();
        while !self.remaining.is_empty() && messages.len() < ROUND_MESSAGES {
            if progress.elapsed() > QUIET {
                let partitions = self.remaining.len();
                return Ok(Round {
                    messages,
                    end: RoundEnd::Quiet { partitions },
                });
            }
            match self.consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Ok(m)) => {
                    progress = Instant::now();
                    // A partition already read to its end is paused; what it still delivers came
                    // after the end and waits for the next replay.
                    if self.remaining.contains(&m.partition()) {
                        messages.push((
                            m.key().map(<[u8]>::to_vec),
                            m.payload().unwrap_or_default().to_vec(),
                        ));
                        self.next.insert(m.partition(), m.offset() + 1);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    progress = Instant::now();
                    self.remaining.retain(|r| *r != p);
                    let mut done = TopicPartitionList::new();
                    done.add_partition(&self.topic, p);
                    self.consumer.pause(&done)?;
                }
                // A broker's connection lost for a moment: librdkafka retries by itself, and the
                // quiet timeout bounds the wait.
                Some(Err(e @ KafkaError::MessageConsumption(_))) => {
                    tracing::warn!(error = %e, "reading the dead-letter topic");
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
        let end = if self.remaining.is_empty() {
            RoundEnd::Done
        } else {
            RoundEnd::More
        };
        Ok(Round { messages, end })
    }

    /// Commits the next offset of every partition read from.
    fn commit(&mut self) -> Result<()> {
        if self.next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &self.next {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*offset))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync)?;
        self.next.clear();
        Ok(())
    }
}
