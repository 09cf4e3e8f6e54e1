//! The consumer loop: read hits in bulk, write a batch, and only then commit its offsets.
//!
//! Owns the at-least-once rule. A batch is written when it is full or old enough; a failed write
//! keeps the batch, pauses consumption (memory stays bounded: nothing new is fetched while a
//! batch is stuck) and retries with capped exponential backoff and jitter; offsets are committed
//! only after ClickHouse (and, for bad messages, the dead-letter topic) has the rows, and only
//! for partitions this consumer still owns. On a rebalance, rows of revoked partitions are
//! dropped from the batch unwritten: their new owner reads them again from the last commit.
//!
//! Every I/O is behind a seam (`kafka::HitConsumer`, `store::RowWriter`, `dlq::DeadLetters`), so
//! these rules are unit-tested with a consumer and a writer that fail on demand
//! (`consumer/tests.rs`); the real clients are tested against the real services.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::batch::Batch;
use crate::config::SinkConfig;
use crate::dlq::DeadLetters;
use crate::enrich::Enricher;
use crate::error::Result;
use crate::kafka::{HitConsumer, Message};
use crate::metrics::Metrics;
use crate::row::{self, Decoded};
use crate::store::RowWriter;

/// The loop's state.
pub struct Sink<C, W, D> {
    consumer: C,
    writer: W,
    dead_letters: D,
    config: SinkConfig,
    metrics: Metrics,
    enricher: Enricher,
    stop: watch::Receiver<bool>,
    /// Messages that arrived while consumption was paused for a stuck batch; they start the next.
    held: VecDeque<Message>,
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Stored,
    Abandoned,
}

impl<C: HitConsumer, W: RowWriter, D: DeadLetters> Sink<C, W, D> {
    /// A sink reading from `consumer` until `stop` turns true.
    pub fn new(
        consumer: C,
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
                            Ok(m) => Some(m),
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

    fn take(&mut self, batch: &mut Batch, message: &Message) {
        self.metrics.consumed();
        for decoded in row::decode_message(
            &message.topic,
            message.partition,
            message.offset,
            &message.payload,
            self.config.kafka.max_payload_bytes,
            &mut self.enricher,
        ) {
            match decoded {
                Decoded::Hit(hit) => {
                    self.metrics.classified(hit.traffic_class);
                    batch.push_hit(*hit)
                }
                Decoded::Bad(bad) => {
                    tracing::warn!(partition = bad.kafka_partition, offset = bad.kafka_offset, index = bad.kafka_index,
                        reason = bad.reason.as_str(), error = %bad.error, "dead-lettering a hit");
                    batch.push_bad(bad);
                }
            }
        }
        batch.took(message.partition, message.offset, message.payload.len());
    }

    fn forget_revoked(&self, batch: &mut Batch) {
        batch.drop_partitions(&self.consumer.take_revoked());
    }

    /// Writes `batch` until it is stored (then commits) or, once stopping, abandoned.
    async fn flush(&mut self, batch: &mut Batch) -> Result<Outcome> {
        let mut attempt = 0u32;
        let mut paused: Option<Vec<i32>> = None;
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
                    self.metrics.stored(
                        batch.len(),
                        batch.hits.len(),
                        batch.bytes,
                        started.elapsed(),
                    );
                    for bad in &batch.bad {
                        self.metrics.dead_lettered(bad.reason);
                    }
                    self.commit(batch);
                    break Outcome::Stored;
                }
                Err(e) => e,
            };
            let Some(cause) = error.retry_cause() else {
                return Err(error);
            };
            attempt += 1;
            self.metrics.retried(cause);
            let backoff = backoff(
                attempt,
                self.config.retry.initial_backoff_ms,
                self.config.retry.max_backoff_ms,
            );
            tracing::warn!(%error, cause = cause.as_str(), attempt, backoff_ms = backoff.as_millis() as u64,
                rows = batch.len(), "writing the batch failed; keeping it and retrying");
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
                self.metrics.abandoned();
                break Outcome::Abandoned;
            }
            self.wait_serving_consumer(backoff).await;
        };
        if let Some(assignment) = paused {
            // Partitions revoked meanwhile are not ours to resume.
            let mine: HashSet<i32> = self.consumer.assignment()?.into_iter().collect();
            let resume: Vec<i32> = assignment
                .into_iter()
                .filter(|p| mine.contains(p))
                .collect();
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
                        self.held.push_back(m);
                    }
                }
            }
        }
    }

    /// Commits `last + 1` of each range whose partition this consumer still owns.
    fn commit(&self, batch: &Batch) {
        let owned: HashSet<i32> = match self.consumer.assignment() {
            Ok(a) => a.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment; not committing (rows will be read again)");
                return;
            }
        };
        let offsets: Vec<(i32, i64)> = batch
            .commit_offsets()
            .into_iter()
            .filter(|(p, _)| owned.contains(p))
            .collect();
        if offsets.is_empty() {
            return;
        }
        match self.consumer.commit(&offsets) {
            Ok(()) => self.metrics.committed(offsets.len()),
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
mod tests;
