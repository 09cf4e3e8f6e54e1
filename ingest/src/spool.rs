//! The edge's write-ahead spool: hits Kafka has not (yet) taken, kept on local disk until Kafka
//! acknowledges them.
//!
//! Append-only segment files (`<id>.seg`, ids increasing) under `spool.dir`, each a run of
//! checksummed records ([`record`]). One segment is *active* and takes appends; it is sealed when
//! it reaches `spool.segment_bytes`, or when replay has caught up and wants to read it. A segment
//! is deleted only when replay has read it, every record in it is *settled* (delivered, dropped
//! for good, or appended again to a later segment), and that later segment has been fsynced.
//! Total size is capped by `spool.max_bytes`; an append beyond it fails with [`AppendError::Full`].
//!
//! Writes go straight to the file (no user-space buffer), so a record survives the process being
//! killed as soon as `append` returns; [`Spool::sync`] fsyncs, which makes it survive a power
//! loss, every `spool.fsync_interval_ms`.
//!
//! On open, every segment left by a previous run is scanned: its intact records are counted and
//! later replayed, live or not (that process's deliveries are unknown; a hit delivered twice has
//! one `event_id`, which the exact-count query folds). Torn and corrupt records are skipped and
//! counted, never fatal.
//!
//! This module owns files and their accounting. What a record holds is opaque bytes; when to
//! append, replay or settle is decided by `ledger` and `replay`.

pub mod record;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pixelpipe_common::layers::{check, ConfigError};
use serde::{Deserialize, Serialize};

use crate::dir_lock;
use crate::metrics::Metrics;
use record::{Decoded, Record};

/// A segment's number; its file is `<id as 20 digits>.seg`.
pub type SegmentId = u64;

const SEGMENT_SUFFIX: &str = ".seg";

/// When a hit reaches the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Hits go to Kafka from memory and reach the spool only when Kafka did not take them
    /// (channel full, producer buffer full, any delivery failure). A kill -9 loses what was in
    /// memory: the channel and librdkafka's buffer (docs/reliability.md).
    Memory,
    /// Every hit is appended to the spool before it is handed to Kafka, one write per batch. A
    /// kill -9 loses only the channel's content; a power loss, one fsync interval.
    Disk,
}

/// The spool's settings (`[spool]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the segment files; created if missing, and locked, so two edges cannot
    /// share it. Default `/var/lib/pixelpipe/spool`.
    pub dir: PathBuf,
    /// `memory` or `disk`, see [`Durability`]. Default `memory`.
    pub durability: Durability,
    /// Segment files together hold at most this many bytes; beyond it hits are dropped and
    /// counted `spool_full`. Default 1073741824 (1 GiB).
    pub max_bytes: u64,
    /// A segment is sealed and a new one started at this size. Default 16777216 (16 MiB).
    pub segment_bytes: u64,
    /// How often appended records are fsynced (and settled segments deleted). Default 1000.
    pub fsync_interval_ms: u64,
    /// `/readyz` says not ready while the spool is at least this full. Default 50.
    pub high_water_percent: u8,
    /// Spooled hits replayed to Kafka per second at most, beside live traffic. Default 5000.
    pub replay_rate_hits_per_s: u32,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/lib/pixelpipe/spool"),
            durability: Durability::Memory,
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            fsync_interval_ms: 1000,
            high_water_percent: 50,
            replay_rate_hits_per_s: 5000,
        }
    }
}

impl SpoolConfig {
    /// Checks the settings, naming the first wrong one.
    pub fn check(&self) -> Result<(), ConfigError> {
        check(
            !self.dir.as_os_str().is_empty(),
            "spool.dir",
            "must not be empty",
        )?;
        check(
            self.segment_bytes >= 64 * 1024,
            "spool.segment_bytes",
            "must be at least 65536",
        )?;
        check(
            self.max_bytes >= self.segment_bytes.saturating_mul(2),
            "spool.max_bytes",
            "must be at least twice spool.segment_bytes",
        )?;
        check(
            self.fsync_interval_ms > 0,
            "spool.fsync_interval_ms",
            "must be at least 1",
        )?;
        check(
            (1..=100).contains(&self.high_water_percent),
            "spool.high_water_percent",
            "must be between 1 and 100",
        )?;
        check(
            self.replay_rate_hits_per_s > 0,
            "spool.replay_rate_hits_per_s",
            "must be at least 1",
        )
    }
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// `spool.max_bytes` would be exceeded.
    #[error("the spool is full (spool.max_bytes)")]
    Full,
    /// The file could not be written.
    #[error("writing the spool: {0}")]
    Io(#[from] std::io::Error),
}

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("spool.dir {dir}: {what}: {source}")]
pub struct OpenError {
    dir: PathBuf,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// What the spool holds now, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Records not settled yet: waiting for replay, or handed to Kafka and not acknowledged.
    pub records: u64,
    /// The earliest time a record still waiting for replay entered the spool, over the segments
    /// holding such records (ms since the epoch; a moved record keeps its first time): an upper
    /// bound of the age of the oldest hit Kafka has not taken. Written-ahead records in flight
    /// (`disk` durability) do not count.
    pub oldest_appended_ms: Option<u64>,
}

/// What kind of record an append writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Written ahead of the hand-over to Kafka (`durability = "disk"`): the caller hands it over
    /// and settles it from its delivery report; replay in this process skips it.
    WrittenAhead,
    /// For replay to send: a hit Kafka did not take. Subject to `spool.max_bytes`.
    Pending,
    /// For replay to send, moving from an older segment (its replay failed, or it was written
    /// ahead and failed). Exempt from `spool.max_bytes`: refusing it would lose a hit already on
    /// disk, and the space comes back when the older segment is deleted. Keeps `since_ms`, when
    /// the hit first entered the spool (ms since the epoch), so its age is not reset.
    Moved {
        /// When the hit first entered the spool.
        since_ms: u64,
    },
}

/// A sealed segment handed to replay: its id and its bytes (records are read with
/// [`record::decode`]). When done, tell [`Spool::replayed`] how many records were handed over.
pub struct ReplayBatch {
    /// The segment; settle each record against it.
    pub segment: SegmentId,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Left by a previous run: every record is replayed, written-ahead ones too.
    pub recovered: bool,
}

/// The spool: shared by batchers (disk mode), the delivery callback and replay.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    high_water_bytes: u64,
    state: Mutex<State>,
    /// Mirror of the total size, read without the lock by `/readyz`.
    bytes: AtomicU64,
    /// An fsync failed: nothing is deleted any more in this run.
    fsync_failed: AtomicBool,
    metrics: Metrics,
    /// Held open for its advisory lock: the directory is this process's alone.
    _lock: File,
}

struct State {
    active: SegmentId,
    file: Arc<File>,
    /// Set when a failed write could not be undone: the next append starts a new segment first.
    active_damaged: bool,
    /// Sealed segments written since the last fsync; [`Spool::sync`] fsyncs them too.
    sealed_unsynced: Vec<Arc<File>>,
    segments: BTreeMap<SegmentId, Segment>,
    total_bytes: u64,
    scratch: Vec<u8>,
}

#[derive(Debug, Default)]
struct Segment {
    bytes: u64,
    /// Written-ahead records not yet settled by their delivery report.
    ahead: u64,
    /// Records for replay not yet settled (all intact records of a recovered segment).
    pending: u64,
    /// Of those, how many replay has not read yet; stable once the segment is sealed.
    to_replay: u64,
    /// Left by a previous run: replay sends its written-ahead records too.
    recovered: bool,
    first_pending_ms: Option<u64>,
}

impl Spool {
    /// Opens (creating if needed) and locks `config.dir`, scans what a previous run left, and
    /// starts a new active segment.
    ///
    /// # Errors
    /// The directory cannot be created, locked (another process holds it), read, or written.
    pub fn open(config: &SpoolConfig, metrics: Metrics) -> Result<Spool, OpenError> {
        let dir = config.dir.clone();
        let err = |what: &'static str| {
            let dir = dir.clone();
            move |source| OpenError { dir, what, source }
        };
        fs::create_dir_all(&dir).map_err(err("cannot create it"))?;
        let lock = dir_lock::lock(&dir).map_err(|e| err(e.what)(e.source))?;
        let mut segments = BTreeMap::new();
        let mut total_bytes = 0;
        for id in segment_ids(&dir).map_err(err("cannot list it"))? {
            let path = segment_path(&dir, id);
            let bytes = fs::read(&path).map_err(err("cannot read a segment"))?;
            let (records, corrupt) = scan(&bytes);
            metrics.spool_corrupt(corrupt);
            if corrupt > 0 {
                tracing::warn!(segment = %path.display(), corrupt, "spool segment has torn or corrupt records; they are skipped");
            }
            if records.is_empty() {
                fs::remove_file(&path).map_err(err("cannot remove an empty segment"))?;
                continue;
            }
            total_bytes += bytes.len() as u64;
            let n = records.len() as u64;
            segments.insert(
                id,
                Segment {
                    bytes: bytes.len() as u64,
                    ahead: 0,
                    pending: n,
                    to_replay: n,
                    recovered: true,
                    first_pending_ms: records.first().map(|r| r.appended_ms),
                },
            );
        }
        if !segments.is_empty() {
            let n: u64 = segments.values().map(|s| s.pending).sum();
            tracing::info!(
                segments = segments.len(),
                records = n,
                bytes = total_bytes,
                "spool holds hits from a previous run; replaying them"
            );
        }
        let first = segments.keys().next_back().map_or(1, |last| last + 1);
        let (active, file) = create_segment(&dir, first).map_err(err("cannot create a segment"))?;
        segments.insert(active, Segment::default());
        let spool = Spool {
            max_bytes: config.max_bytes,
            segment_bytes: config.segment_bytes,
            high_water_bytes: config.max_bytes / 100 * u64::from(config.high_water_percent),
            state: Mutex::new(State {
                active,
                file: Arc::new(file),
                active_damaged: false,
                sealed_unsynced: Vec::new(),
                segments,
                total_bytes,
                scratch: Vec::with_capacity(64 * 1024),
            }),
            bytes: AtomicU64::new(total_bytes),
            fsync_failed: AtomicBool::new(false),
            metrics,
            _lock: lock,
            dir,
        };
        spool.publish(&spool.lock());
        Ok(spool)
    }

    /// Appends records of one kind in one write and returns the segment that holds them all.
    ///
    /// # Errors
    /// [`AppendError::Full`] when they would take the spool over `spool.max_bytes` (never for
    /// [`Entry::Moved`]); [`AppendError::Io`] when the write fails. Either way nothing was
    /// appended: a partial write is cut off again, or, if that fails too, the segment is sealed
    /// and the next append starts a new one.
    pub fn append<'a>(
        &self,
        records: impl IntoIterator<Item = (Option<&'a [u8]>, &'a [u8])>,
        entry: Entry,
    ) -> Result<SegmentId, AppendError> {
        let appended_ms = match entry {
            Entry::Moved { since_ms } => since_ms,
            Entry::WrittenAhead | Entry::Pending => now_ms(),
        };
        let mut guard = self.lock();
        let state = &mut *guard;
        state.scratch.clear();
        let mut n = 0u64;
        for (key, payload) in records {
            Record {
                live: entry == Entry::WrittenAhead,
                appended_ms,
                key,
                payload,
            }
            .encode(&mut state.scratch);
            n += 1;
        }
        if n == 0 {
            return Ok(state.active);
        }
        let len = state.scratch.len() as u64;
        if !matches!(entry, Entry::Moved { .. }) && state.total_bytes + len > self.max_bytes {
            return Err(AppendError::Full);
        }
        if state.active_damaged || state.segments[&state.active].bytes >= self.segment_bytes {
            self.rotate(state)?;
        }
        if let Err(e) = (&*state.file).write_all(&state.scratch) {
            let written = state.segments[&state.active].bytes;
            if state.file.set_len(written).is_err() {
                state.active_damaged = true;
            }
            return Err(e.into());
        }
        let id = state.active;
        let seg = state
            .segments
            .get_mut(&id)
            .expect("active segment is tracked");
        seg.bytes += len;
        if entry == Entry::WrittenAhead {
            seg.ahead += n;
        } else {
            seg.pending += n;
            seg.to_replay += n;
            seg.first_pending_ms = Some(
                seg.first_pending_ms
                    .map_or(appended_ms, |t| t.min(appended_ms)),
            );
        }
        state.total_bytes += len;
        self.metrics.spool_appended(n);
        self.publish(state);
        Ok(id)
    }

    /// Settles one record of `segment`: delivered, dropped for good, or moved to a later
    /// segment. `entry` says which kind it was ([`Entry::WrittenAhead`] or a replayed one).
    pub fn settle(&self, segment: SegmentId, entry: Entry) {
        let mut state = self.lock();
        if let Some(seg) = state.segments.get_mut(&segment) {
            match entry {
                Entry::WrittenAhead => seg.ahead = seg.ahead.saturating_sub(1),
                Entry::Pending | Entry::Moved { .. } => seg.pending = seg.pending.saturating_sub(1),
            }
        }
        self.publish(&state);
    }

    /// The oldest sealed segment replay has not read yet, with its bytes. When none is left but
    /// the active segment has records to replay, it is sealed first so replay can read it.
    ///
    /// # Errors
    /// The segment cannot be read (retry later), or a new active one cannot be created. A
    /// segment file that has vanished is reported and its records counted lost.
    pub fn next_replay(&self) -> std::io::Result<Option<ReplayBatch>> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let next = state
            .segments
            .iter()
            .find(|(id, s)| **id != state.active && s.to_replay > 0)
            .map(|(id, _)| *id);
        let id = match next {
            Some(id) => id,
            None if state.segments[&state.active].to_replay > 0 => {
                let id = state.active;
                self.rotate(state)?;
                id
            }
            None => return Ok(None),
        };
        let (recovered, counted) = (state.segments[&id].recovered, state.segments[&id].bytes);
        drop(guard);
        match fs::read(segment_path(&self.dir, id)) {
            Ok(mut bytes) => {
                // This run's segment: only what appends counted (a cut-short write that could
                // not be undone lies beyond, and was never counted).
                if !recovered {
                    bytes.truncate(usize::try_from(counted).unwrap_or(usize::MAX));
                }
                Ok(Some(ReplayBatch {
                    segment: id,
                    bytes,
                    recovered,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(segment = id, "a spool segment vanished; its hits are lost");
                self.replayed(id, 0);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Replay has read all of `segment` and handed `handed_over` of its records to Kafka. Records
    /// it was told to expect but could not read (damaged on disk) are settled now and counted
    /// corrupt; a recovered segment's damage was counted when the spool was opened.
    pub fn replayed(&self, segment: SegmentId, handed_over: u64) {
        let mut state = self.lock();
        let Some(seg) = state.segments.get_mut(&segment) else {
            return;
        };
        let unreadable = seg.to_replay.saturating_sub(handed_over);
        seg.to_replay = 0;
        seg.pending = seg.pending.saturating_sub(unreadable);
        if unreadable > 0 {
            tracing::warn!(
                segment,
                unreadable,
                "spool records could not be read back; those hits are lost"
            );
            self.metrics.spool_corrupt(unreadable);
        }
        self.publish(&state);
    }

    /// Fsyncs every segment written since the last call (sealed ones and the active one), then
    /// deletes every sealed segment that was read and settled before the fsync began, so what
    /// it moved to later segments is durable first. Returns how many segments were deleted.
    ///
    /// # Errors
    /// An fsync or a deletion failed; nothing unsynced is deleted, and the next call tries
    /// again.
    pub fn sync(&self) -> std::io::Result<usize> {
        let (files, done): (Vec<Arc<File>>, Vec<SegmentId>) = {
            let mut state = self.lock();
            let done = (state.segments.iter())
                .filter(|(id, s)| {
                    **id != state.active && s.ahead == 0 && s.pending == 0 && s.to_replay == 0
                })
                .map(|(id, _)| *id)
                .collect();
            let mut files = std::mem::take(&mut state.sealed_unsynced);
            files.push(state.file.clone());
            (files, done)
        };
        if self.fsync_failed.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "an earlier fsync failed; no segment is deleted until the edge restarts",
            ));
        }
        for (i, file) in files.iter().enumerate() {
            if let Err(e) = file.sync_data() {
                // Linux may report a later fsync of the same pages as clean although they never
                // reached the disk (PostgreSQL's "fsyncgate"): deleting anything after this
                // could lose the only durable copy, so this run deletes no more segments.
                self.fsync_failed.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, "spool fsync failed; no spool segment is deleted until the edge restarts");
                // Keep the sealed ones for the next try.
                let mut state = self.lock();
                let active = state.file.clone();
                state.sealed_unsynced.extend(
                    files[i..]
                        .iter()
                        .filter(|f| !Arc::ptr_eq(f, &active))
                        .cloned(),
                );
                return Err(e);
            }
        }
        let mut first_error = None;
        let mut deleted = 0;
        for id in &done {
            match fs::remove_file(segment_path(&self.dir, *id)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            deleted += 1;
            let mut state = self.lock();
            if let Some(seg) = state.segments.remove(id) {
                state.total_bytes -= seg.bytes;
            }
            self.publish(&state);
        }
        first_error.map_or(Ok(deleted), Err)
    }

    /// Bytes, records and the oldest record's time.
    pub fn stats(&self) -> Stats {
        stats(&self.lock())
    }

    /// Whether the spool is at or above `spool.high_water_percent` of `spool.max_bytes`.
    pub fn above_high_water(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.high_water_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts, not files, inconsistent: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seals the active segment and starts the next one.
    fn rotate(&self, state: &mut State) -> std::io::Result<()> {
        let (next, file) = create_segment(&self.dir, state.active + 1)?;
        let sealed = std::mem::replace(&mut state.file, Arc::new(file));
        state.sealed_unsynced.push(sealed);
        state.active = next;
        state.active_damaged = false;
        state.segments.insert(next, Segment::default());
        Ok(())
    }

    /// Brings the gauges up to date; the oldest record's age grows even when nothing changes,
    /// so replay calls this on every tick.
    pub fn refresh_gauges(&self) {
        self.publish(&self.lock());
    }

    fn publish(&self, state: &State) {
        self.bytes.store(state.total_bytes, Ordering::Relaxed);
        let s = stats(state);
        let age_ms = s
            .oldest_appended_ms
            .map_or(0, |t| now_ms().saturating_sub(t));
        self.metrics
            .spool(s.bytes, s.records, Duration::from_millis(age_ms));
    }
}

fn stats(state: &State) -> Stats {
    Stats {
        bytes: state.total_bytes,
        records: state.segments.values().map(|s| s.ahead + s.pending).sum(),
        oldest_appended_ms: (state.segments.values())
            .filter(|s| s.pending > 0)
            .filter_map(|s| s.first_pending_ms)
            .min(),
    }
}

/// Every intact record in `bytes`, and how many were torn or corrupt.
pub fn scan(bytes: &[u8]) -> (Vec<Record<'_>>, u64) {
    let mut records = Vec::new();
    let mut corrupt = 0;
    let mut at = 0;
    loop {
        match record::decode(&bytes[at..]) {
            Decoded::Record(r, len) => {
                records.push(r);
                at += len;
            }
            Decoded::Corrupt { skip } => {
                corrupt += 1;
                at += skip;
            }
            Decoded::Torn => return (records, corrupt + 1),
            Decoded::End => return (records, corrupt),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn segment_path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
}

/// Creates the segment file `id`, or the next free id after it (a file left by a failed
/// attempt is never reused), and makes its name durable. Returns the id used.
fn create_segment(dir: &Path, mut id: SegmentId) -> std::io::Result<(SegmentId, File)> {
    loop {
        let path = segment_path(dir, id);
        match File::options().create_new(true).append(true).open(&path) {
            Ok(file) => {
                // The new name must survive a power loss too, or its records would vanish.
                if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                    let _ = fs::remove_file(&path);
                    return Err(e);
                }
                return Ok((id, file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => id += 1,
            Err(e) => return Err(e),
        }
    }
}

fn segment_ids(dir: &Path) -> std::io::Result<Vec<SegmentId>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        match stem.parse() {
            Ok(id) if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) => ids.push(id),
            _ => tracing::warn!(file = ?name, "not a spool segment name; left alone"),
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests;
