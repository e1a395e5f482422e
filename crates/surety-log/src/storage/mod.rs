//! The storage seam: every byte the log reads or writes goes through these traits, so the
//! same log code runs on real files ([`FileStorage`]) and on the power-loss simulator
//! ([`SimStorage`]) that the crash tests use.
//!
//! Contract, as the log relies on it (the same as POSIX on Linux ext4/xfs):
//! - a write is durable only after `sync_data`/`sync_all` on that file returned `Ok`;
//! - a created, renamed or removed name is durable only after `sync_dir` on its directory;
//! - `sync_data` makes the file length durable too when it is needed to read the data;
//! - any error from a sync means the state of unsynced data is unknown: callers must not
//!   retry the sync and report success.

mod fs;
mod sim;

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use fs::{DIR_MODE, FILE_MODE, FileStorage};
pub use sim::{SimOptions, SimStorage};

/// A directory tree of files.
pub trait Storage: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the regular files directly in `dir`.
    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a new file, failing if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file with positional I/O; shared between one writer and many readers.
#[allow(clippy::len_without_is_empty)] // a file's emptiness is never the question here
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `pos`; fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves blocks up to `len` so later overwrites need no allocation (reads as zeros).
    fn preallocate(&self, len: u64) -> io::Result<()>;
    /// fdatasync: data and the metadata needed to read it.
    fn sync_data(&self) -> io::Result<()>;
    /// fsync: data and all metadata.
    fn sync_all(&self) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes unless end of file comes first; returns the count read.
pub(crate) fn read_full_at(file: &dyn StorageFile, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
