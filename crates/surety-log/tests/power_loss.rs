//! Guards G1/G5 against power loss: an acknowledged record must survive a power cut at
//! any instant (inside a write, before or after any sync, during a roll), recovery must
//! never mistake a torn unsynced tail for corruption, and no record may appear that was
//! never appended. Runs the real log code on the power-loss simulator (`SimStorage`).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use surety_log::storage::{SimOptions, SimStorage, Storage, StorageFile};
use surety_log::{AppendError, Log, LogConfig, NewRecord};

const DIR: &str = "/data/log";

fn config(rng: &mut StdRng) -> LogConfig {
    LogConfig {
        segment_bytes: 8 * 1024,
        max_record_bytes: 2 * 1024,
        index_interval_bytes: 256,
        preallocate: rng.random_bool(0.5),
        ..LogConfig::default()
    }
}

/// A payload that names itself, so any record found after a crash can be traced back to
/// exactly one append.
fn payload(id: u64, rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(0..1500);
    let mut p = format!("id={id};").into_bytes();
    p.extend((0..len).map(|i| (id as usize * 31 + i) as u8));
    p
}

fn id_of(payload: &[u8]) -> u64 {
    let s =
        std::str::from_utf8(&payload[..payload.iter().position(|&b| b == b';').unwrap()]).unwrap();
    s.strip_prefix("id=").unwrap().parse().unwrap()
}

/// Everything ever submitted (acked or not), and what was acknowledged at which offset.
#[derive(Default)]
struct History {
    submitted: HashMap<u64, Vec<u8>>,
    acked: HashMap<u64, (u64, Vec<u8>)>,
}

/// Appends from several threads until the simulated power cut stops the log.
fn run_until_crash(
    log: &Arc<Log>,
    history: &Arc<Mutex<History>>,
    next_id: &Arc<AtomicU64>,
    seed: u64,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (log, history, next_id, stop) =
                (log.clone(), history.clone(), next_id.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed ^ ((t + 1) * 0x9E37_79B9));
                for _ in 0..200 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Bursts of tickets in flight at once make the writer batch them.
                    let burst = rng.random_range(1..6);
                    let mut tickets = Vec::new();
                    for _ in 0..burst {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let p = payload(id, &mut rng);
                        history.lock().unwrap().submitted.insert(id, p.clone());
                        match log.submit(vec![NewRecord::new(p.clone())]) {
                            Ok(t) => tickets.push((id, p, t)),
                            Err(_) => {
                                stop.store(true, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    for (id, p, t) in tickets {
                        match t.wait() {
                            Ok(range) => {
                                history.lock().unwrap().acked.insert(id, (range.start, p));
                            }
                            Err(AppendError::Failed(_)) => stop.store(true, Ordering::Relaxed),
                            Err(e) => panic!("unexpected append error {e:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Checks the recovered log against the history; panics with the seed on any violation.
fn verify(log: &Log, history: &History, seed: u64) {
    let end = log.durable_end();
    let records = log
        .read_from(log.start_offset(), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(
        records.len() as u64,
        end,
        "seed {seed}: offsets are not dense"
    );
    let mut seen = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64, "seed {seed}");
        let id = id_of(&r.payload);
        let submitted = history
            .submitted
            .get(&id)
            .unwrap_or_else(|| panic!("seed {seed}: record {} was never appended", r.offset));
        assert_eq!(
            &r.payload, submitted,
            "seed {seed}: record {} differs from its append",
            r.offset
        );
        assert!(
            seen.insert(id, r.offset).is_none(),
            "seed {seed}: append {id} appears twice"
        );
    }
    for (id, (offset, p)) in &history.acked {
        let got = log.read(*offset).unwrap().unwrap_or_else(|| {
            panic!("seed {seed}: acknowledged offset {offset} (append {id}) lost")
        });
        assert_eq!(
            &got.payload, p,
            "seed {seed}: acknowledged offset {offset} changed"
        );
    }
}

fn one_case(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let cfg = config(&mut rng);
    let history = Arc::new(Mutex::new(History::default()));
    let next_id = Arc::new(AtomicU64::new(0));
    let mut storage = SimStorage::new(SimOptions {
        crash_at_op: Some(rng.random_range(1..120)),
        torn_writes: rng.random_bool(0.7),
        seed,
    });
    // Several crash-recover rounds on the same data: recovery's truncation must leave
    // nothing behind that a later crash could resurrect.
    for round in 0..3 {
        if let Ok(log) = Log::open(Arc::new(storage.clone()), DIR, cfg.clone()) {
            let log = Arc::new(log);
            run_until_crash(&log, &history, &next_id, seed.wrapping_add(round));
            storage.crash_now();
        }
        let next_crash = rng.random_range(1..150);
        storage = storage.crash_image(SimOptions {
            crash_at_op: Some(next_crash),
            torn_writes: rng.random_bool(0.7),
            seed: seed.wrapping_mul(31).wrapping_add(round),
        });
        // Verify on a crash-free copy of the image, so the check itself cannot be cut.
        let check = storage.crash_image(SimOptions {
            seed,
            ..SimOptions::default()
        });
        let log = Log::open(Arc::new(check), DIR, cfg.clone())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: recovery failed: {e}"));
        verify(&log, &history.lock().unwrap(), seed);
    }
}

#[test]
fn acknowledged_records_survive_power_loss_at_any_instant() {
    let cases: u64 = std::env::var("SURETY_POWER_LOSS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let base: u64 = std::env::var("SURETY_POWER_LOSS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for seed in base..base + cases {
        one_case(seed);
    }
}

/// A storage whose Nth `sync_data` fails once and then works again, like a transient EIO
/// after which the kernel has silently dropped the dirty pages.
#[derive(Debug)]
struct FlakySync {
    inner: SimStorage,
    fail_at: u64,
    syncs: Arc<AtomicU64>,
}

#[derive(Debug)]
struct FlakyFile {
    inner: Arc<dyn StorageFile>,
    fail_at: u64,
    syncs: Arc<AtomicU64>,
}

impl Storage for FlakySync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_files(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(self.wrap(self.inner.open(path)?))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(self.wrap(self.inner.create_new(path)?))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl FlakySync {
    fn wrap(&self, inner: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
        Arc::new(FlakyFile {
            inner,
            fail_at: self.fail_at,
            syncs: self.syncs.clone(),
        })
    }
}

impl StorageFile for FlakyFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.inner.preallocate(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.syncs.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
}

fn libc_eio() -> i32 {
    5 // EIO on Linux
}

#[test]
fn a_failed_fsync_is_fatal_and_never_reported_as_success() {
    let storage = FlakySync {
        inner: SimStorage::new(SimOptions::default()),
        fail_at: 3,
        syncs: Arc::new(AtomicU64::new(0)),
    };
    let log = Log::open(Arc::new(storage), DIR, LogConfig::default()).unwrap();
    assert_eq!(log.append(NewRecord::new("a")).unwrap(), 0);
    assert_eq!(log.append(NewRecord::new("b")).unwrap(), 1);
    let err = log.append(NewRecord::new("c")).unwrap_err();
    assert!(matches!(err, AppendError::Failed(_)), "{err:?}");
    assert!(log.failure().is_some());
    // The device "works" again, but the log must not pretend the lost write happened or
    // accept new ones: a retried fsync could succeed without the dropped pages.
    assert!(matches!(
        log.append(NewRecord::new("d")),
        Err(AppendError::Failed(_))
    ));
    assert_eq!(log.durable_end(), 2);
    assert_eq!(log.read(2).unwrap(), None);
}
