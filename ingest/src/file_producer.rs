//! The file producer (`output = "file"`): each hit's wire bytes as one line of a local file (JSON
//! Lines), rotated by size. For shipping hits with other tools, for looking at what the edge
//! produces, and for measuring the edge without a broker. It sits behind the same
//! [`HitProducer`] seam as Kafka, so spool, replay and readiness work unchanged.
//!
//! Files are `hits-<first write, ms since the epoch, 20 digits>.jsonl` under `file.dir`, which is
//! locked (`dir_lock`) so that a second edge cannot finish this one's live file. The file
//! being written ends in `.part`; it is renamed to its final name (one `rename`, so a shipper that
//! globs `*.jsonl` only ever sees complete files) when it reaches `file.rotate_bytes`, at exit,
//! and at the next start for a `.part` a killed process left. Finished files are never deleted:
//! taking them away is the shipper's job.
//!
//! A hit is *delivered* once its line has been handed to the operating system (`write`), which
//! it survives a kill of the edge; a line is buffered for at most `file.flush_interval_ms` first.
//! A write that fails fails every hit it held, and the ledger spools them for replay. The
//! message key is not written (it only picks a Kafka partition).
//!
//! It does not encode hits (`wire`), decide their fate after a failure (`ledger`), or fsync
//! (a power loss may lose the last seconds; `spool.durability = "disk"` keeps them on the spool
//! until written here).

use std::fs::{self, File};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pixelpipe_common::layers::{check, ConfigError};
use serde::{Deserialize, Serialize};

use crate::dir_lock;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::produce::{BufferFull, DeliveryFailure, HitProducer, Origin};

const PART_SUFFIX: &str = ".part";

/// The file producer's settings (`[file]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Directory of the hit files; created if missing, and locked, so two edges cannot share
    /// it. Default `/var/lib/pixelpipe/hits`.
    pub dir: PathBuf,
    /// A file is finished and a new one started after the write that takes it to this many
    /// bytes (so it may pass it by one write). Default 268435456 (256 MiB).
    pub rotate_bytes: u64,
    /// Longest a line waits in memory before it is written. Default 100.
    pub flush_interval_ms: u64,
    /// Bytes buffered before a write, whatever the interval. Default 262144 (256 KiB).
    pub buffer_bytes: usize,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            dir: PathBuf::from("/var/lib/pixelpipe/hits"),
            rotate_bytes: 256 << 20,
            flush_interval_ms: 100,
            buffer_bytes: 256 << 10,
        }
    }
}

impl FileConfig {
    /// Checks the settings, naming the first wrong one.
    pub fn check(&self) -> std::result::Result<(), ConfigError> {
        check(
            !self.dir.as_os_str().is_empty(),
            "file.dir",
            "must not be empty",
        )?;
        check(
            self.rotate_bytes >= 4096,
            "file.rotate_bytes",
            "must be at least 4096",
        )?;
        check(
            self.flush_interval_ms > 0,
            "file.flush_interval_ms",
            "must be at least 1",
        )?;
        check(
            self.buffer_bytes > 0,
            "file.buffer_bytes",
            "must be at least 1",
        )
    }
}

/// Lines waiting to be written, and what each came from.
struct Buffered {
    /// The lines, each `payload\n`.
    bytes: Vec<u8>,
    lines: Vec<Line>,
    keys: Vec<u8>,
}

/// One buffered line: what the ledger needs to settle it, or to spool it should the write fail.
struct Line {
    origin: Origin,
    handed_over: Instant,
    /// In [`Buffered::keys`].
    key: Option<Range<usize>>,
    /// In [`Buffered::bytes`], without the newline.
    payload: Range<usize>,
}

struct Open {
    file: File,
    /// Its name without [`PART_SUFFIX`].
    path: PathBuf,
    written_bytes: u64,
}

struct State {
    buffered: Buffered,
    open: Option<Open>,
    stopping: bool,
}

struct Shared {
    config: FileConfig,
    ledger: Arc<Ledger>,
    state: Mutex<State>,
    /// Wakes the flusher early (a full buffer, or stop).
    wake: Condvar,
    /// Whether the last write succeeded.
    healthy: AtomicBool,
}

/// Writes hits to rotated JSON Lines files; see the module docs.
pub struct FileProducer {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// Held open for its lock: `file.dir` is this process's alone. A field, so it is released
    /// only after `drop` has finished the last file.
    _lock: File,
}

impl FileProducer {
    /// Creates and locks `config.dir`, finishes any `.part` file a previous run left, and starts
    /// the thread that writes buffered lines every `flush_interval_ms`.
    ///
    /// # Errors
    /// When the directory cannot be created, locked (another edge writes there) or read, a
    /// left-over file cannot be renamed, or the thread cannot start.
    pub fn new(config: &FileConfig, ledger: Arc<Ledger>) -> Result<FileProducer> {
        fs::create_dir_all(&config.dir)
            .map_err(|e| Error::io(format!("creating file.dir {}", config.dir.display()), e))?;
        // Before anything is renamed: a `.part` file here may be another edge's live one.
        let lock = dir_lock::lock(&config.dir).map_err(|e| {
            Error::io(
                format!("file.dir {} {}", config.dir.display(), e.what),
                e.source,
            )
        })?;
        finish_left_over_parts(&config.dir)?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            ledger,
            state: Mutex::new(State {
                buffered: Buffered {
                    bytes: Vec::with_capacity(config.buffer_bytes + 4096),
                    lines: Vec::new(),
                    keys: Vec::new(),
                },
                open: None,
                stopping: false,
            }),
            wake: Condvar::new(),
            healthy: AtomicBool::new(true),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("file-producer".into())
                .spawn(move || shared.run_flusher())
                .map_err(|e| Error::io("starting the file producer thread", e))?
        };
        Ok(FileProducer {
            shared,
            flusher: Mutex::new(Some(flusher)),
            _lock: lock,
        })
    }
}

impl HitProducer for FileProducer {
    fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        origin: Origin,
    ) -> std::result::Result<(), BufferFull> {
        let mut state = self.shared.lock();
        let b = &mut state.buffered;
        let key = key.map(|k| {
            let start = b.keys.len();
            b.keys.extend_from_slice(k);
            start..b.keys.len()
        });
        let start = b.bytes.len();
        b.bytes.extend_from_slice(payload);
        let end = b.bytes.len();
        b.bytes.push(b'\n');
        b.lines.push(Line {
            origin,
            handed_over: Instant::now(),
            key,
            payload: start..end,
        });
        if b.bytes.len() >= self.shared.config.buffer_bytes {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    fn flush(&self, timeout: Duration) {
        let _ = timeout; // A local write does not wait on anyone else.
        let mut state = self.shared.lock();
        self.shared.write_out(&mut state);
    }

    fn connected(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }
}

impl Drop for FileProducer {
    /// Writes what is buffered and finishes the current file.
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        let flusher = self
            .flusher
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(flusher) = flusher {
            let _ = flusher.join();
        }
        let mut state = self.shared.lock();
        self.shared.write_out(&mut state);
        if let Some(open) = state.open.take() {
            self.shared.finish(open);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole lines behind at worst; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run_flusher(&self) {
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let mut state = self.lock();
        while !state.stopping {
            state = self
                .wake
                .wait_timeout(state, interval)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            self.write_out(&mut state);
        }
    }

    /// Writes every buffered line, then reports each hit delivered, or failed when the write
    /// failed; rotates when the file is full.
    fn write_out(&self, state: &mut State) {
        if state.buffered.lines.is_empty() {
            return;
        }
        let result = self.write_buffered(state);
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        let b = &mut state.buffered;
        match result {
            Ok(()) => {
                for line in b.lines.drain(..) {
                    self.ledger.delivered(line.origin, line.handed_over, 1);
                }
            }
            Err(error) => {
                tracing::warn!(%error, hits = b.lines.len(), "file producer: write failed; the hits go to the spool");
                for line in b.lines.drain(..) {
                    let key = line.key.map(|k| &b.keys[k]);
                    let payload = &b.bytes[line.payload];
                    self.ledger
                        .failed(line.origin, key, payload, DeliveryFailure::WriteFailed);
                }
            }
        }
        b.bytes.clear();
        b.keys.clear();
    }

    fn write_buffered(&self, state: &mut State) -> std::io::Result<()> {
        let open = match state.open.take() {
            Some(open) => open,
            None => self.start_file()?,
        };
        let mut open = open;
        let written = open.file.write_all(&state.buffered.bytes);
        if written.is_err() {
            // The file may end in a torn line now; a new one starts clean.
            self.finish(open);
            return written;
        }
        open.written_bytes += state.buffered.bytes.len() as u64;
        if open.written_bytes >= self.config.rotate_bytes {
            self.finish(open);
        } else {
            state.open = Some(open);
        }
        Ok(())
    }

    fn start_file(&self) -> std::io::Result<Open> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Two files started in the same millisecond get the next free number.
        for n in ms.. {
            let path = self.config.dir.join(format!("hits-{n:020}.jsonl"));
            let part = part_path(&path);
            if path.exists() {
                continue;
            }
            match File::options().append(true).create_new(true).open(&part) {
                Ok(file) => {
                    return Ok(Open {
                        file,
                        path,
                        written_bytes: 0,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("no free file name"))
    }

    /// Renames a file to its final name.
    fn finish(&self, open: Open) {
        drop(open.file);
        if let Err(error) = fs::rename(part_path(&open.path), &open.path) {
            tracing::error!(%error, file = %open.path.display(), "file producer: could not finish a file; it keeps its .part name");
        }
    }
}

fn part_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(PART_SUFFIX);
    PathBuf::from(s)
}

/// Renames the `.part` files a killed process left: their lines were written, so they are
/// complete but for perhaps a torn last line.
fn finish_left_over_parts(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading file.dir {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let Some(done) = name.to_str().and_then(|n| n.strip_suffix(PART_SUFFIX)) else {
            continue;
        };
        if done.starts_with("hits-") && done.ends_with(".jsonl") {
            fs::rename(&path, dir.join(done)).map_err(|e| {
                Error::io(format!("finishing a left-over file {}", path.display()), e)
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
