//! One process per directory: an advisory lock on a `LOCK` file inside it, held as long as the
//! returned file is open. The kernel releases it when the process ends, even by `kill -9`, so a
//! crash never leaves a stale lock behind.
//!
//! The spool (`spool.dir`) and the file producer (`file.dir`) lock their directories with it, so
//! a second edge pointed at the same one fails at start instead of mixing its files with the
//! first one's. This module owns the lock file and the locking; callers name their setting.

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;

/// The lock file's name inside a locked directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why a directory could not be locked.
#[derive(Debug)]
pub struct LockError {
    /// What failed: `cannot create its lock file`, `cannot lock it`, or `is in use by another
    /// process`.
    pub what: &'static str,
    /// The operating system's error.
    pub source: io::Error,
}

/// Locks `dir`, which must exist, for as long as the returned file stays open.
///
/// # Errors
/// The lock file cannot be created or locked, or another process (or another open of the same
/// directory in this one) holds the lock.
pub fn lock(dir: &Path) -> Result<File, LockError> {
    let file = File::create(dir.join(LOCK_FILE)).map_err(|source| LockError {
        what: "cannot create its lock file",
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(LockError {
            what: "is in use by another process",
            source: io::ErrorKind::WouldBlock.into(),
        }),
        Err(TryLockError::Error(source)) => Err(LockError {
            what: "cannot lock it",
            source,
        }),
    }
}
