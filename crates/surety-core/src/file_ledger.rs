//! A [`SettledLedger`] that outlives its consumer process: the [`MemoryLedger`]'s window,
//! with every handled stamp also appended to a file that is read back at open. A copy
//! that the broker stored twice (RabbitMQ and Kafka have no publish dedupe across
//! producer sessions; NATS's is a time window) is then dropped after a restart of the
//! consumer too, not only while it runs.
//!
//! Durability: each handled stamp is written to the file (`write(2)`) before the driver
//! acks its delivery, so a killed process forgets nothing; the file is fsynced by a
//! background thread every [`FileLedgerOptions::sync_interval`], so a power loss can
//! forget the stamps of that last interval — their copies, if a second one ever comes,
//! run again. That is the ledger's contract everywhere: it bounds duplicates, it never
//! drops a message it cannot vouch for (a stamp it forgot is run), and exactly-once
//! effects remain the `Inbox`'s job.
//!
//! One process owns a ledger file at a time (an exclusive `flock` on `<file>.lock`): two
//! consumers sharing a file would each miss the other's stamps and undo each other's
//! compaction. Format (docs/backends.md, "The consumer's ledger file"): the magic
//! `SURETYL1`, then records `crc32c (u32) | producer length (u16) | producer | sequence
//! (u64)`, little-endian, the CRC over everything after it. A torn or damaged tail is cut
//! off at open. Compaction rewrites the live window into `<file>.tmp`, fsyncs it, renames
//! it over the file and fsyncs the directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::settled_ledger::{
    Claim, DEFAULT_PRODUCERS, DEFAULT_WINDOW, MemoryLedger, SettledLedger,
};

const MAGIC: &[u8; 8] = b"SURETYL1";
/// crc32c + producer length.
const RECORD_HEAD: usize = 4 + 2;
/// The longest producer id a record can hold.
pub const MAX_PRODUCER_BYTES: usize = u16::MAX as usize;

/// How a [`FileLedger`] remembers.
#[derive(Debug, Clone)]
pub struct FileLedgerOptions {
    /// Sequences remembered per producer.
    pub window: u64,
    /// Producers remembered (the oldest first seen is forgotten first).
    pub producers: usize,
    /// How often written stamps are fsynced.
    pub sync_interval: Duration,
    /// The file is compacted once it holds this many records and four times the live
    /// window's.
    pub compact_after_records: u64,
}

impl Default for FileLedgerOptions {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            producers: DEFAULT_PRODUCERS,
            sync_interval: Duration::from_millis(100),
            compact_after_records: 1 << 20,
        }
    }
}

/// Why a ledger file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FileLedgerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a Surety ledger file (it does not start with {MAGIC:?})")]
    NotALedger { path: PathBuf },
    #[error("{path}: in use by another process (it holds {path}.lock)")]
    Locked { path: PathBuf },
}

/// What [`FileLedger::open`] found in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerRecovery {
    /// Records read back.
    pub records: u64,
    /// Bytes cut off the end: a record torn by a crash, or damage.
    pub truncated_bytes: u64,
}

/// A settled ledger kept in a file; see the module docs.
pub struct FileLedger {
    memory: MemoryLedger,
    shared: Arc<Shared>,
    recovery: LedgerRecovery,
    syncer: Option<JoinHandle<()>>,
}

struct Shared {
    path: PathBuf,
    options: FileLedgerOptions,
    journal: Mutex<Journal>,
    stop: Mutex<bool>,
    wake: Condvar,
}

struct Journal {
    file: File,
    records: u64,
    dirty: bool,
    /// Held for the ledger's life; closing it releases the lock.
    _lock: File,
    /// The first write error, logged once; the memory keeps working without the file.
    failed: bool,
}

impl std::fmt::Debug for FileLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLedger")
            .field("path", &self.shared.path)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl FileLedger {
    /// Opens (creating it if needed) the ledger at `path` and reads its stamps back.
    pub fn open(
        path: impl AsRef<Path>,
        options: FileLedgerOptions,
    ) -> Result<FileLedger, FileLedgerError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| FileLedgerError::Io {
            path: path.clone(),
            source,
        };
        let lock = lock_file(&path)?;
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let memory = MemoryLedger::new(options.window, options.producers);
        let mut recovery = LedgerRecovery::default();
        if bytes.is_empty() {
            file.write_all(MAGIC).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            if created {
                sync_parent(&path).map_err(io_err)?;
            }
        } else {
            if !bytes.starts_with(MAGIC) {
                return Err(FileLedgerError::NotALedger { path });
            }
            let good = decode(&bytes[MAGIC.len()..], |producer, sequence| {
                memory.remember(producer, sequence);
                recovery.records += 1;
            });
            let end = (MAGIC.len() + good) as u64;
            recovery.truncated_bytes = bytes.len() as u64 - end;
            if recovery.truncated_bytes > 0 {
                tracing::warn!(
                    path = %path.display(),
                    bytes = recovery.truncated_bytes,
                    records = recovery.records,
                    "settled ledger: cut off a torn or damaged tail"
                );
                file.set_len(end).map_err(io_err)?;
                file.sync_all().map_err(io_err)?;
            }
        }
        let shared = Arc::new(Shared {
            path: path.clone(),
            journal: Mutex::new(Journal {
                file,
                records: recovery.records,
                dirty: false,
                _lock: lock,
                failed: false,
            }),
            options,
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let syncer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("surety-ledger-sync".into())
                .spawn(move || shared.sync_loop())
                .map_err(io_err)?
        };
        Ok(FileLedger {
            memory,
            shared,
            recovery,
            syncer: Some(syncer),
        })
    }

    /// What the open read back.
    pub fn recovery(&self) -> LedgerRecovery {
        self.recovery
    }

    /// Fsyncs every stamp written so far (the background thread does it every
    /// `sync_interval`; this is for a clean shutdown or a test).
    pub fn sync(&self) -> io::Result<()> {
        self.shared.sync_now()
    }

    fn append(&self, producer: &str, sequence: u64) {
        let record = encode(producer, sequence);
        let mut j = self.shared.journal.lock().unwrap();
        if j.failed {
            return;
        }
        if let Err(e) = j.file.write_all(&record) {
            j.fail(&self.shared.path, &e);
            return;
        }
        j.records += 1;
        j.dirty = true;
        let live = self.memory.len() as u64;
        if j.records >= self.shared.options.compact_after_records
            && j.records >= live * 4
            && let Err(e) = self.compact(&mut j)
        {
            j.fail(&self.shared.path, &e);
        }
    }

    /// Rewrites the file with the live window only; called with the journal locked.
    fn compact(&self, j: &mut Journal) -> io::Result<()> {
        let path = &self.shared.path;
        let tmp = path.with_extension("tmp");
        let mut out = Vec::with_capacity(MAGIC.len() + self.memory.len() * 32);
        out.extend_from_slice(MAGIC);
        let mut records = 0;
        for (producer, sequences) in self.memory.handled() {
            for s in sequences {
                out.extend_from_slice(&encode(&producer, s));
                records += 1;
            }
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)?;
        j.file = OpenOptions::new().append(true).open(path)?;
        j.records = records;
        j.dirty = false;
        Ok(())
    }
}

impl SettledLedger for FileLedger {
    fn claim(&self, producer: &str, sequence: u64) -> Claim {
        self.memory.claim(producer, sequence)
    }

    fn finish(&self, producer: &str, sequence: u64, handled: bool) {
        self.memory.finish(producer, sequence, handled);
        if handled && producer.len() <= MAX_PRODUCER_BYTES {
            self.append(producer, sequence);
        }
    }
}

impl Drop for FileLedger {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    /// Fsyncs written stamps every `sync_interval`, and once more when stopped.
    fn sync_loop(&self) {
        loop {
            let stop = {
                let guard = self.stop.lock().unwrap();
                let (guard, _) = self
                    .wake
                    .wait_timeout_while(guard, self.options.sync_interval, |stop| !*stop)
                    .unwrap();
                *guard
            };
            if let Err(e) = self.sync_now() {
                self.journal.lock().unwrap().fail(&self.path, &e);
            }
            if stop {
                return;
            }
        }
    }

    fn sync_now(&self) -> io::Result<()> {
        // fsync a duplicate of the descriptor outside the lock: handlers go on writing.
        let file = {
            let mut j = self.journal.lock().unwrap();
            if !j.dirty || j.failed {
                return Ok(());
            }
            j.dirty = false;
            j.file.try_clone()?
        };
        file.sync_data()
    }
}

impl Journal {
    fn fail(&mut self, path: &Path, e: &io::Error) {
        if !self.failed {
            self.failed = true;
            metrics::counter!("surety_consumer_ledger_write_errors_total").increment(1);
            tracing::error!(
                path = %path.display(),
                error = %e,
                "settled ledger: writing failed; handled stamps are kept in memory only \
                 from now on (a copy after a restart runs again)"
            );
        }
    }
}

fn encode(producer: &str, sequence: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEAD + producer.len() + 8);
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(&(producer.len() as u16).to_le_bytes());
    r.extend_from_slice(producer.as_bytes());
    r.extend_from_slice(&sequence.to_le_bytes());
    let crc = crc32c::crc32c(&r[4..]);
    r[..4].copy_from_slice(&crc.to_le_bytes());
    r
}

/// Calls `each` for every whole, intact record; answers how many bytes they span.
fn decode(mut bytes: &[u8], mut each: impl FnMut(&str, u64)) -> usize {
    let mut good = 0;
    while bytes.len() >= RECORD_HEAD {
        let len = u16::from_le_bytes([bytes[4], bytes[5]]) as usize;
        let total = RECORD_HEAD + len + 8;
        if bytes.len() < total {
            break;
        }
        let crc = u32::from_le_bytes(bytes[..4].try_into().unwrap());
        if crc32c::crc32c(&bytes[4..total]) != crc {
            break;
        }
        let Ok(producer) = std::str::from_utf8(&bytes[RECORD_HEAD..RECORD_HEAD + len]) else {
            break;
        };
        let sequence = u64::from_le_bytes(bytes[total - 8..total].try_into().unwrap());
        each(producer, sequence);
        good += total;
        bytes = &bytes[total..];
    }
    good
}

/// Takes `<path>.lock` exclusively, without waiting.
fn lock_file(path: &Path) -> Result<File, FileLedgerError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| FileLedgerError::Io {
            path: lock_path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            FileLedgerError::Locked {
                path: path.to_path_buf(),
            }
        } else {
            FileLedgerError::Io {
                path: lock_path,
                source: e,
            }
        });
    }
    Ok(lock)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(l: &FileLedger, producer: &str, sequence: u64) {
        assert_eq!(l.claim(producer, sequence), Claim::Run);
        l.finish(producer, sequence, true);
    }

    #[test]
    fn handled_stamps_survive_a_reopen_failed_and_running_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.ledger");
        {
            let l = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
            handle(&l, "p", 1);
            handle(&l, "q", 7);
            assert_eq!(l.claim("p", 2), Claim::Run);
            l.finish("p", 2, false);
            assert_eq!(l.claim("p", 3), Claim::Run); // still running at "shutdown"
        }
        let l = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
        assert_eq!(
            l.recovery(),
            LedgerRecovery {
                records: 2,
                truncated_bytes: 0
            }
        );
        assert_eq!(l.claim("p", 1), Claim::Handled);
        assert_eq!(l.claim("q", 7), Claim::Handled);
        assert_eq!(
            l.claim("p", 2),
            Claim::Run,
            "it failed: its redelivery runs"
        );
        assert_eq!(l.claim("p", 3), Claim::Run, "it never finished");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_writing_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.ledger");
        {
            let l = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
            handle(&l, "p", 1);
            handle(&l, "p", 2);
        }
        // A crash in the middle of the third record's write.
        let third = encode("p", 3);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&third[..third.len() - 3]).unwrap();
        drop(f);
        {
            let l = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
            assert_eq!(
                l.recovery(),
                LedgerRecovery {
                    records: 2,
                    truncated_bytes: third.len() as u64 - 3
                }
            );
            assert_eq!(l.claim("p", 2), Claim::Handled);
            assert_eq!(l.claim("p", 3), Claim::Run);
            l.finish("p", 3, true);
        }
        let l = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
        assert_eq!(l.recovery().records, 3);
        assert_eq!(l.claim("p", 3), Claim::Handled);
    }

    #[test]
    fn a_flipped_bit_ends_what_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.ledger");
        {
            let l = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
            for s in 1..=3 {
                handle(&l, "p", s);
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let second = MAGIC.len() + encode("p", 1).len();
        bytes[second + RECORD_HEAD] ^= 0x10; // inside the second record's producer
        std::fs::write(&path, &bytes).unwrap();
        let l = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
        assert_eq!(l.recovery().records, 1);
        assert_eq!(l.claim("p", 1), Claim::Handled);
        assert_eq!(
            l.claim("p", 2),
            Claim::Run,
            "an unreadable stamp runs again, never drops a message"
        );
    }

    #[test]
    fn compaction_keeps_the_window_and_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.ledger");
        let options = FileLedgerOptions {
            window: 10,
            compact_after_records: 50,
            ..FileLedgerOptions::default()
        };
        {
            let l = FileLedger::open(&path, options.clone()).unwrap();
            for s in 0..1_000 {
                handle(&l, "p", s);
            }
        }
        let record = encode("p", 0).len() as u64;
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size <= MAGIC.len() as u64 + 50 * record,
            "{size} bytes after 1000 stamps with a window of 10"
        );
        let l = FileLedger::open(&path, options).unwrap();
        for s in 990..1_000 {
            assert_eq!(l.claim("p", s), Claim::Handled, "sequence {s}");
        }
        assert_eq!(l.claim("p", 989), Claim::Run, "below the window");
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.ledger");
        let first = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
        let second = FileLedger::open(&path, FileLedgerOptions::default()).unwrap_err();
        assert!(matches!(second, FileLedgerError::Locked { .. }), "{second}");
        drop(first);
        FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_ledger_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, b"my notes").unwrap();
        let e = FileLedger::open(&path, FileLedgerOptions::default()).unwrap_err();
        assert!(matches!(e, FileLedgerError::NotALedger { .. }), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"my notes");
    }

    #[test]
    fn stamps_reach_the_disk_without_a_clean_shutdown() {
        // The syncer runs on its own; the file holds each stamp as soon as it is handled
        // (write before the ack), so a process killed before any sync forgets nothing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.ledger");
        let l = FileLedger::open(&path, FileLedgerOptions::default()).unwrap();
        handle(&l, "p", 42);
        let bytes = std::fs::read(&path).unwrap();
        let mut seen = Vec::new();
        decode(&bytes[MAGIC.len()..], |p, s| seen.push((p.to_owned(), s)));
        assert_eq!(seen, [("p".to_owned(), 42)]);
    }
}
