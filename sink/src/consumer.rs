//! The consumer loop: read hits in bulk, write a batch, and only then commit its offsets.
//!
//! Owns the at-least-once rule. A batch is written when it is full or old enough. One batch is
//! written while the next fills: consuming, decoding and enriching overlap the insert, and
//! batches are still stored and committed one at a time, in order. When the next batch is ready
//! before the previous one is stored, the loop waits for that write; if the write is failing, it
//! pauses its partitions (librdkafka stops fetching; what it already fetched is held) and keeps
//! polling, so the group keeps it. Memory stays bounded by two batches. A failed write keeps its
//! batch and retries with capped exponential backoff and jitter; offsets are committed only
//! after ClickHouse (and, for bad hits, the dead-letter topic) has the rows, and only for
//! partitions this consumer still owns. On a rebalance, rows of revoked partitions are dropped
//! from both batches unwritten (before the next attempt, for the one being written): their new
//! owner reads them again from the last commit.
//!
//! Every I/O is behind a seam (`kafka::HitConsumer`, `store::RowWriter`, `dlq::DeadLetters`), so
//! these rules are unit-tested with a consumer and a writer that fail on demand
//! (`consumer/tests.rs`); the real clients are tested against the real services.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};

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
    io: Io<C, W, D>,
    enricher: Enricher,
}

/// What both the filling and the writing of batches use, shared between them.
struct Io<C, W, D> {
    consumer: C,
    writer: W,
    dead_letters: D,
    config: SinkConfig,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
    /// Revoked partitions not yet dropped from the batch being filled.
    revoked_filling: Mutex<Vec<i32>>,
    /// Revoked partitions not yet dropped from the batch being written.
    revoked_writing: Mutex<Vec<i32>>,
    /// Whether the batch being written has failed and is waiting to retry.
    write_failing: AtomicBool,
    /// Wakes the loop when a write fails.
    write_failed: Notify,
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Stored,
    Abandoned,
}

/// A batch being written: it resolves to the batch (for its offsets) and its outcome.
type Writing<'a> = Pin<Box<dyn Future<Output = Result<(Batch, Outcome)>> + Send + 'a>>;

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
            io: Io {
                consumer,
                writer,
                dead_letters,
                config,
                metrics,
                stop,
                revoked_filling: Mutex::new(Vec::new()),
                revoked_writing: Mutex::new(Vec::new()),
                write_failing: AtomicBool::new(false),
                write_failed: Notify::new(),
            },
            enricher,
        }
    }

    /// Runs until stop: then finishes the write in flight, writes the batch in hand (either is
    /// abandoned uncommitted after `retry.shutdown_timeout_ms`, retries and an insert still
    /// running included; the batch in hand is not written at all after an abandoned one), and
    /// leaves the group. So a stop takes at most about twice `retry.shutdown_timeout_ms`.
    pub async fn run(self) -> Result<()> {
        let Sink { io, mut enricher } = self;
        let io = &io;
        let limits = io.config.batch.clone();
        let mut batch = Batch::default();
        let mut writing: Option<Writing<'_>> = None;
        // Messages that arrived while the next batch had no room; they start it once it has.
        let mut held: VecDeque<Message> = VecDeque::new();
        let mut paused: Option<Vec<i32>> = None;
        // A write given up at shutdown: no later batch may be written or committed after it, or
        // its commit would skip the abandoned rows for good.
        let mut abandoned = false;
        while !io.stopping() {
            let ready = |b: &Batch| {
                !b.is_empty()
                    && (b.is_full(&limits)
                        || b.deadline(&limits).is_some_and(|d| Instant::now() >= d))
            };
            if !ready(&batch) {
                io.forget_revoked(&mut batch, &mut held);
                if let Some(m) = held.pop_front() {
                    io.take(&mut batch, &m, &mut enricher);
                    continue;
                }
            }
            let room = !ready(&batch);
            let failing = io.write_failing.load(Ordering::Relaxed);
            if !room && failing {
                // The write is stuck: nothing more is fetched until it is stored, while the
                // consumer is still polled so the group keeps it. Partitions a rebalance assigns
                // meanwhile are paused too.
                let done = paused.get_or_insert_with(Vec::new);
                let new: Vec<i32> = io
                    .consumer
                    .assignment()?
                    .into_iter()
                    .filter(|p| !done.contains(p))
                    .collect();
                if !new.is_empty() {
                    io.consumer.pause(&new)?;
                    done.extend(new);
                }
            }
            let deadline = if room { batch.deadline(&limits) } else { None };
            // With no room and a healthy write, wait for the write without polling: pausing would
            // make librdkafka drop what it prefetched and fetch it again. A write that starts
            // failing wakes the loop, which then pauses.
            let poll = room || paused.is_some();
            let mut stop = io.stop.clone();
            tokio::select! {
                biased;
                _ = stop.changed() => {}
                done = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                    writing = None;
                    let (written, outcome) = done?;
                    match outcome {
                        Outcome::Stored => io.commit(&written),
                        Outcome::Abandoned => abandoned = true,
                    }
                    if let Some(assignment) = paused.take() {
                        io.resume_owned(assignment)?;
                    }
                }
                _ = sleep_until(deadline) => {}
                _ = io.write_failed.notified(), if !poll => {}
                received = io.consumer.recv(), if poll => match received {
                    Ok(m) if room => {
                        // Revocations seen so far go before this message: a partition revoked
                        // and assigned again keeps what it delivered after.
                        io.forget_revoked(&mut batch, &mut held);
                        io.take(&mut batch, &m, &mut enricher)
                    }
                    Ok(m) => held.push_back(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            if abandoned {
                break;
            }
            io.forget_revoked(&mut batch, &mut held);
            if writing.is_none() && ready(&batch) {
                // The batch is current with every revocation; the write notes only later ones.
                io.revoked(&io.revoked_writing).clear();
                writing = Some(Box::pin(io.store(std::mem::take(&mut batch))));
            }
        }
        if let Some(w) = writing.take() {
            let (written, outcome) = w.await?;
            match outcome {
                Outcome::Stored => io.commit(&written),
                Outcome::Abandoned => abandoned = true,
            }
        }
        io.forget_revoked(&mut batch, &mut held);
        io.revoked(&io.revoked_writing).clear();
        if abandoned && !batch.is_empty() {
            // The batch in hand follows the abandoned one on its partitions; both are read again
            // after a restart.
            tracing::warn!(
                rows = batch.len(),
                "stopping: the batch in hand follows an abandoned one; not written, not committed"
            );
            io.metrics.abandoned();
            batch = Batch::default();
        }
        if !batch.is_empty() {
            tracing::info!(rows = batch.len(), "stopping: writing the batch in hand");
            let (written, outcome) = io.store(batch).await?;
            if outcome == Outcome::Stored {
                io.commit(&written);
            }
        }
        io.consumer.unsubscribe();
        tracing::info!("sink stopped");
        Ok(())
    }
}

impl<C: HitConsumer, W: RowWriter, D: DeadLetters> Io<C, W, D> {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn take(&self, batch: &mut Batch, message: &Message, enricher: &mut Enricher) {
        self.metrics.consumed();
        for decoded in row::decode_message(
            &message.topic,
            message.partition,
            message.offset,
            &message.payload,
            self.config.kafka.max_payload_bytes,
            enricher,
        ) {
            match decoded {
                Decoded::Hit(hit) => {
                    self.metrics.classified(hit.traffic_class);
                    batch.push_hit(hit)
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

    fn revoked<'a>(&self, list: &'a Mutex<Vec<i32>>) -> std::sync::MutexGuard<'a, Vec<i32>> {
        list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the consumer's new revocations and notes them for both batches: whichever side
    /// (filling or writing) sees a rebalance first, the other still learns of it.
    fn collect_revoked(&self) {
        let revoked = self.consumer.take_revoked();
        if !revoked.is_empty() {
            self.revoked(&self.revoked_filling).extend(&revoked);
            self.revoked(&self.revoked_writing).extend(revoked);
        }
    }

    /// Drops from the batch being filled, and from the messages held for it, those of partitions
    /// taken away: a held message fetched before a revocation must not be committed after the
    /// partition comes back, ahead of what its new reading has not reached yet.
    fn forget_revoked(&self, batch: &mut Batch, held: &mut VecDeque<Message>) {
        self.collect_revoked();
        let revoked = std::mem::take(&mut *self.revoked(&self.revoked_filling));
        if !revoked.is_empty() {
            batch.drop_partitions(&revoked);
            held.retain(|m| !revoked.contains(&m.partition));
        }
    }

    /// Writes `batch` until it is stored or, once stopping, abandoned; returns it for its offsets.
    async fn store(&self, mut batch: Batch) -> Result<(Batch, Outcome)> {
        let mut attempt = 0u32;
        let mut give_up_at: Option<Instant> = None;
        loop {
            self.collect_revoked();
            let revoked = std::mem::take(&mut *self.revoked(&self.revoked_writing));
            batch.drop_partitions(&revoked);
            if batch.is_empty() {
                return Ok((batch, Outcome::Stored));
            }
            let token = batch.dedup_token(&self.config.kafka.topic);
            let started = Instant::now();
            let write = async {
                self.dead_letters.send(&batch.bad).await?;
                self.writer.write(&batch, &token).await
            };
            let Some(written) = self.unless_given_up(write, &mut give_up_at).await else {
                let outcome = self.abandon(&batch);
                return Ok((batch, outcome));
            };
            let error = match written {
                Ok(()) => {
                    self.write_failing.store(false, Ordering::Relaxed);
                    tracing::debug!(
                        rows = batch.len(),
                        bytes = batch.bytes,
                        write_ms = started.elapsed().as_millis() as u64,
                        "batch stored"
                    );
                    self.metrics.stored(
                        batch.len(),
                        batch.hits.len(),
                        batch.bytes,
                        started.elapsed(),
                    );
                    for bad in &batch.bad {
                        self.metrics.dead_lettered(bad.reason);
                    }
                    return Ok((batch, Outcome::Stored));
                }
                Err(e) => e,
            };
            let Some(cause) = error.retry_cause() else {
                return Err(error);
            };
            self.write_failing.store(true, Ordering::Relaxed);
            self.write_failed.notify_one();
            attempt += 1;
            self.metrics.retried(cause);
            let backoff = backoff(
                attempt,
                self.config.retry.initial_backoff_ms,
                self.config.retry.max_backoff_ms,
            );
            tracing::warn!(%error, cause = cause.as_str(), attempt, backoff_ms = backoff.as_millis() as u64,
                rows = batch.len(), "writing the batch failed; keeping it and retrying");
            if self.stopping() {
                give_up_at.get_or_insert_with(|| self.shutdown_deadline());
            }
            if give_up_at.is_some_and(|g| Instant::now() + backoff > g) {
                let outcome = self.abandon(&batch);
                return Ok((batch, outcome));
            }
            let mut stop = self.stop.clone();
            let stopping = self.stopping();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed(), if !stopping => {}
            }
        }
    }

    /// When a batch not stored yet is given up, once the sink is stopping.
    fn shutdown_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.retry.shutdown_timeout_ms)
    }

    /// Runs `write` to its end, unless the sink is stopping and the write is still running at
    /// `give_up_at` (set, if unset, once the stop is seen): then `None`, and the write is dropped
    /// mid-flight. So one insert that hangs for its whole `clickhouse.insert_timeout_ms` cannot
    /// hold a stopping sink past `retry.shutdown_timeout_ms`, and the supervisor's grace period
    /// need not cover it. Whether ClickHouse kept the rows of a dropped insert is unknown: like
    /// any abandoned batch it is not committed, so the next owner writes it again and the copy is
    /// folded by `event_id`.
    async fn unless_given_up<T>(
        &self,
        write: impl std::future::Future<Output = T>,
        give_up_at: &mut Option<Instant>,
    ) -> Option<T> {
        tokio::pin!(write);
        loop {
            let mut stop = self.stop.clone();
            let stopping = self.stopping();
            if stopping {
                give_up_at.get_or_insert_with(|| self.shutdown_deadline());
            }
            tokio::select! {
                // A write that ends at the deadline counts as done, not abandoned.
                biased;
                done = &mut write => return Some(done),
                _ = stop.changed(), if !stopping => {}
                _ = sleep_until(*give_up_at) => return None,
            }
        }
    }

    /// Gives a batch up at shutdown: it stays uncommitted, for the next owner to read again.
    fn abandon(&self, batch: &Batch) -> Outcome {
        tracing::warn!(
            rows = batch.len(),
            "stopping with a batch not stored (ClickHouse refused it or had not answered): abandoned, not committed"
        );
        self.metrics.abandoned();
        self.write_failing.store(false, Ordering::Relaxed);
        Outcome::Abandoned
    }

    /// Resumes the partitions of `assignment` this consumer still owns (those revoked meanwhile
    /// are not its to resume).
    fn resume_owned(&self, assignment: Vec<i32>) -> Result<()> {
        let mine: HashSet<i32> = self.consumer.assignment()?.into_iter().collect();
        let resume: Vec<i32> = assignment
            .into_iter()
            .filter(|p| mine.contains(p))
            .collect();
        self.consumer.resume(&resume)
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
