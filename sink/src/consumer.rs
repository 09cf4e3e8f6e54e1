//! The consumer loop: read hits in bulk, write a batch, and only then commit its offsets.
//!
//! Owns the at-least-once rule. A batch is written when it is full or old enough; a failed write
//! keeps the batch, pauses consumption (memory stays bounded: nothing new is fetched while a
//! batch is stuck) and retries with capped exponential backoff and jitter; offsets are committed
//! only after ClickHouse (and, for bad messages, the dead-letter topic) has the rows, and only
//! for partitions this consumer still owns. On a rebalance, rows of revoked partitions are
//! dropped from the batch unwritten: their new owner reads them again from the last commit.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::OwnedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::batch::Batch;
use crate::config::SinkConfig;
use crate::dlq::DeadLetters;
use crate::enrich::Enricher;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::row::{self, Decoded};
use crate::store::RowWriter;

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
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[&partition.to_string()])
                        .set(p.consumer_lag);
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

/// The consumer for the configured group: manual commits, earliest offset for a new group.
pub fn create(config: &SinkConfig, metrics: Metrics) -> Result<StreamConsumer<SinkContext>> {
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
    Ok(consumer)
}

/// The loop's state.
pub struct Sink<W, D> {
    consumer: StreamConsumer<SinkContext>,
    writer: W,
    dead_letters: D,
    config: SinkConfig,
    metrics: Metrics,
    enricher: Enricher,
    stop: watch::Receiver<bool>,
    /// Messages that arrived while consumption was paused for a stuck batch; they start the next.
    held: VecDeque<OwnedMessage>,
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Stored,
    Abandoned,
}

impl<W: RowWriter, D: DeadLetters> Sink<W, D> {
    /// A sink reading from `consumer` until `stop` turns true.
    pub fn new(
        consumer: StreamConsumer<SinkContext>,
        writer: W,
        dead_letters: D,
        config: SinkConfig,
        metrics: Metrics,
        enricher: Enricher,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Sink {
            consumer,
            writer,
            dead_letters,
            config,
            metrics,
            enricher,
            stop,
            held: VecDeque::new(),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Runs until stop: then writes the batch in hand (or abandons it uncommitted after
    /// `retry.shutdown_timeout_ms`), and leaves the group.
    pub async fn run(mut self) -> Result<()> {
        let mut batch = Batch::default();
        let limits = self.config.batch.clone();
        while !self.stopping() {
            let next = match self.held.pop_front() {
                Some(m) => Some(m),
                None => {
                    let deadline = batch.deadline(&limits);
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        biased;
                        _ = stop.changed() => None,
                        _ = sleep_until(deadline) => None,
                        received = self.consumer.recv() => match received {
                            Ok(m) => Some(m.detach()),
                            Err(e) => {
                                tracing::warn!(error = %e, "kafka consume error");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                None
                            }
                        },
                    }
                }
            };
            self.forget_revoked(&mut batch);
            if let Some(message) = next {
                self.take(&mut batch, &message);
            }
            let due = batch.deadline(&limits).is_some_and(|d| Instant::now() >= d);
            if !batch.is_empty() && (due || batch.is_full(&limits)) {
                self.flush(&mut batch).await?;
            }
        }
        if !batch.is_empty() {
            tracing::info!(rows = batch.len(), "stopping: writing the batch in hand");
            self.flush(&mut batch).await?;
        }
        self.consumer.unsubscribe();
        tracing::info!("sink stopped");
        Ok(())
    }

    fn take(&mut self, batch: &mut Batch, message: &OwnedMessage) {
        self.metrics.consumed.inc();
        let payload = message.payload().unwrap_or_default();
        match row::decode(
            message.topic(),
            message.partition(),
            message.offset(),
            payload,
            &mut self.enricher,
        ) {
            Decoded::Hit(hit) => {
                self.metrics
                    .classified
                    .with_label_values(&[hit.traffic_class.as_str()])
                    .inc();
                batch.push_hit(*hit, payload.len())
            }
            Decoded::Bad(bad) => {
                tracing::warn!(partition = bad.kafka_partition, offset = bad.kafka_offset, reason = %bad.reason,
                    error = %bad.error, "dead-lettering a message");
                batch.push_bad(bad);
            }
        }
    }

    fn forget_revoked(&self, batch: &mut Batch) {
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .expect("revoked list"),
        );
        batch.drop_partitions(&revoked);
    }

    /// Writes `batch` until it is stored (then commits) or, once stopping, abandoned.
    async fn flush(&mut self, batch: &mut Batch) -> Result<Outcome> {
        let mut attempt = 0u32;
        let mut paused: Option<TopicPartitionList> = None;
        let mut give_up_at: Option<Instant> = None;
        let outcome = loop {
            self.forget_revoked(batch);
            if batch.is_empty() {
                break Outcome::Stored;
            }
            let token = batch.dedup_token(&self.config.kafka.topic);
            let started = Instant::now();
            let written = async {
                self.dead_letters.send(&batch.bad).await?;
                self.writer.write(batch, &token).await
            }
            .await;
            let error = match written {
                Ok(()) => {
                    self.metrics
                        .insert_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batch_rows.observe(batch.len() as f64);
                    self.metrics.batch_bytes.observe(batch.bytes as f64);
                    self.metrics.rows_inserted.inc_by(batch.hits.len() as u64);
                    for bad in &batch.bad {
                        self.metrics
                            .dead_lettered
                            .with_label_values(&[bad.reason.as_str()])
                            .inc();
                    }
                    self.commit(batch);
                    break Outcome::Stored;
                }
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => e,
            };
            attempt += 1;
            self.metrics.retries.inc();
            let backoff = backoff(
                attempt,
                self.config.retry.initial_backoff_ms,
                self.config.retry.max_backoff_ms,
            );
            tracing::warn!(%error, attempt, backoff_ms = backoff.as_millis() as u64, rows = batch.len(),
                "writing the batch failed; keeping it and retrying");
            if paused.is_none() {
                // Nothing new is fetched while this batch is stuck.
                let assignment = self.consumer.assignment()?;
                self.consumer.pause(&assignment)?;
                paused = Some(assignment);
            }
            if self.stopping() {
                give_up_at.get_or_insert_with(|| {
                    Instant::now() + Duration::from_millis(self.config.retry.shutdown_timeout_ms)
                });
            }
            if give_up_at.is_some_and(|g| Instant::now() + backoff > g) {
                tracing::warn!(
                    rows = batch.len(),
                    "stopping with a batch ClickHouse did not take: abandoned, not committed"
                );
                self.metrics.batches_abandoned.inc();
                break Outcome::Abandoned;
            }
            self.wait_serving_consumer(backoff).await;
        };
        if let Some(assignment) = paused {
            // Partitions revoked meanwhile are not ours to resume.
            let owned = self.consumer.assignment()?;
            let mine: HashSet<i32> = owned.elements().iter().map(|e| e.partition()).collect();
            let mut resume = TopicPartitionList::new();
            for e in assignment
                .elements()
                .iter()
                .filter(|e| mine.contains(&e.partition()))
            {
                resume.add_partition(e.topic(), e.partition());
            }
            self.consumer.resume(&resume)?;
        }
        *batch = Batch::default();
        Ok(outcome)
    }

    /// Sleeps for `backoff` while still polling the consumer, so the group does not expel it for
    /// silence; anything that arrives anyway (fetched before the pause) is held for later.
    async fn wait_serving_consumer(&mut self, backoff: Duration) {
        let wake = tokio::time::Instant::now() + backoff;
        loop {
            let mut stop = self.stop.clone();
            let stopping = self.stopping();
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => return,
                _ = stop.changed(), if !stopping => return,
                received = self.consumer.recv() => {
                    if let Ok(m) = received {
                        self.held.push_back(m.detach());
                    }
                }
            }
        }
    }

    /// Commits `last + 1` of each range whose partition this consumer still owns.
    fn commit(&self, batch: &Batch) {
        let owned: HashSet<i32> = match self.consumer.assignment() {
            Ok(a) => a.elements().iter().map(|e| e.partition()).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment; not committing (rows will be read again)");
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in batch
            .commit_offsets()
            .into_iter()
            .filter(|(p, _)| owned.contains(p))
        {
            if let Err(e) = tpl.add_partition_offset(
                &self.config.kafka.topic,
                partition,
                Offset::Offset(offset),
            ) {
                tracing::warn!(error = %e, partition, "bad offset");
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => self.metrics.commits.inc_by(tpl.count() as u64),
            // The rows are stored; a failed commit only means they are read (and folded) again.
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; stored rows will be read again")
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Capped exponential backoff with jitter: a random wait in [half, full] of
/// `min(max, initial * 2^(attempt-1))`, so many sinks do not retry in step.
pub fn backoff(attempt: u32, initial_ms: u64, max_ms: u64) -> Duration {
    let full = initial_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(max_ms);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = u64::from(nanos) % (full / 2 + 1);
    Duration::from_millis(full / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 1..30 {
            let b = backoff(attempt, 200, 30_000).as_millis() as u64;
            let full = (200u64 << (attempt - 1).min(20)).min(30_000);
            assert!(
                b >= full / 2 && b <= full,
                "attempt {attempt}: {b} not in [{}, {full}]",
                full / 2
            );
        }
    }
}
