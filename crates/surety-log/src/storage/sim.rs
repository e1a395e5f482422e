//! A power-loss simulator for the crash tests (after redb's `crash_consistency.rs`).
//!
//! It keeps two views of every file and directory: what the running program sees, and
//! what would survive a power cut (only what a completed sync covered). A countdown can
//! "cut the power" at the Nth mutating operation: that operation fails half-done (a
//! write may land partially), and every later operation fails with EIO, as on a dead disk.
//! [`SimStorage::crash_image`] then builds the storage a machine would find on reboot:
//! the durable bytes, plus — in torn mode — a random subset of the 512-byte sectors that
//! were written but not yet synced, the way page-cache writeback can land them in any
//! order.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Storage, StorageFile};

const SECTOR: u64 = 512;

/// How the simulator misbehaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimOptions {
    /// Fail (crash) at this mutating operation, counting from 1; `None` never crashes.
    pub crash_at_op: Option<u64>,
    /// At crash time, let a random subset of unsynced sectors survive (else none do).
    pub torn_writes: bool,
    /// Seed for every random choice, so a failure can be replayed.
    pub seed: u64,
}

/// In-memory [`Storage`] that models what survives a power cut. Clones share state.
#[derive(Debug, Clone)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug)]
struct SimState {
    /// Names the running program sees.
    live_names: BTreeMap<PathBuf, Arc<Mutex<Node>>>,
    /// Names that survive a crash (made durable by `sync_dir`).
    durable_names: BTreeMap<PathBuf, Arc<Mutex<Node>>>,
    dirs: BTreeSet<PathBuf>,
    ops: u64,
    options: SimOptions,
    crashed: bool,
    rng: StdRng,
}

#[derive(Debug, Default, Clone)]
struct Node {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges written since the last sync, in write order.
    unsynced: Vec<(u64, u64)>,
}

impl SimStorage {
    pub fn new(options: SimOptions) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState {
                live_names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dirs: BTreeSet::new(),
                ops: 0,
                options,
                crashed: false,
                rng: StdRng::seed_from_u64(options.seed),
            })),
        }
    }

    /// Whether the simulated power cut has happened.
    pub fn has_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Mutating operations performed so far (to pick crash points in a later run).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Cuts the power now, whatever the countdown says.
    pub fn crash_now(&self) {
        self.lock().crashed = true;
    }

    /// The storage found after reboot; `options` configure the new simulator.
    pub fn crash_image(&self, options: SimOptions) -> SimStorage {
        let mut st = self.lock();
        let torn = st.options.torn_writes;
        let mut names = BTreeMap::new();
        for (path, node) in &st.durable_names.clone() {
            let node = node.lock().unwrap();
            let mut bytes = node.durable.clone();
            if torn {
                for &(start, end) in &node.unsynced {
                    let mut s = start - start % SECTOR;
                    while s < end {
                        let e = (s + SECTOR).min(end);
                        let from = s.max(start);
                        if st.rng.random_bool(0.5) && (e as usize) <= node.live.len() {
                            if bytes.len() < e as usize {
                                bytes.resize(e as usize, 0);
                            }
                            bytes[from as usize..e as usize]
                                .copy_from_slice(&node.live[from as usize..e as usize]);
                        }
                        s += SECTOR;
                    }
                }
            }
            let fresh = Node {
                live: bytes.clone(),
                durable: bytes,
                unsynced: Vec::new(),
            };
            names.insert(path.clone(), Arc::new(Mutex::new(fresh)));
        }
        let image = SimStorage::new(options);
        {
            let mut new = image.lock();
            new.dirs = st.dirs.clone();
            new.durable_names = names.clone();
            new.live_names = names;
        }
        image
    }

    /// Reads a whole file as the running program sees it (for tests that corrupt bytes).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let node = st.live_names.get(path).ok_or_else(not_found)?;
        Ok(node.lock().unwrap().live.clone())
    }

    /// Overwrites a file's bytes, durably, bypassing the crash model (to plant corruption).
    pub fn write_file_durably(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let st = self.lock();
        let node = st.live_names.get(path).ok_or_else(not_found)?;
        let mut node = node.lock().unwrap();
        node.live = bytes.to_vec();
        node.durable = bytes.to_vec();
        node.unsynced.clear();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap()
    }
}

impl SimState {
    /// Counts a mutating operation; `Err` once the power is cut. `Ok(true)` means this
    /// very operation is the one the power cut interrupts.
    fn tick(&mut self) -> io::Result<bool> {
        if self.crashed {
            return Err(dead());
        }
        self.ops += 1;
        if self.options.crash_at_op == Some(self.ops) {
            self.crashed = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.crashed { Err(dead()) } else { Ok(()) }
    }
}

fn dead() -> io::Error {
    io::Error::other("simulated power loss: device is gone")
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file (sim)")
}

impl Storage for SimStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.check_alive()?;
        // Directory creation is treated as durable: the log syncs the parent on create,
        // and the tests are about files, not about the data directory vanishing.
        for anc in dir.ancestors() {
            st.dirs.insert(anc.to_path_buf());
        }
        Ok(())
    }

    fn list_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        st.check_alive()?;
        if !st.dirs.contains(dir) {
            return Err(not_found());
        }
        Ok(st
            .live_names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let st = self.lock();
        st.check_alive()?;
        let node = st.live_names.get(path).ok_or_else(not_found)?.clone();
        Ok(Arc::new(SimFile {
            storage: self.clone(),
            node,
        }))
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.lock();
        let parent = path.parent().unwrap_or(Path::new(""));
        if !st.dirs.contains(parent) {
            return Err(not_found());
        }
        if st.live_names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "file exists (sim)",
            ));
        }
        st.tick()?;
        let node = Arc::new(Mutex::new(Node::default()));
        st.live_names.insert(path.to_path_buf(), node.clone());
        Ok(Arc::new(SimFile {
            storage: self.clone(),
            node,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.tick()? {
            return Err(dead());
        }
        st.live_names.remove(path).ok_or_else(not_found)?;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.tick()? {
            return Err(dead());
        }
        let node = st.live_names.remove(from).ok_or_else(not_found)?;
        st.live_names.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.tick()? {
            return Err(dead());
        }
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        let live: Vec<_> = st
            .live_names
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        st.durable_names.extend(live);
        Ok(())
    }
}

#[derive(Debug)]
struct SimFile {
    storage: SimStorage,
    node: Arc<Mutex<Node>>,
}

impl SimFile {
    fn sync(&self) -> io::Result<()> {
        let mut st = self.storage.lock();
        if st.tick()? {
            return Err(dead());
        }
        let mut node = self.node.lock().unwrap();
        node.durable = node.live.clone();
        node.unsynced.clear();
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.storage.lock().check_alive()?;
        let node = self.node.lock().unwrap();
        let len = node.live.len() as u64;
        if pos >= len {
            return Ok(0);
        }
        let n = buf.len().min((len - pos) as usize);
        buf[..n].copy_from_slice(&node.live[pos as usize..pos as usize + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut st = self.storage.lock();
        let interrupted = st.tick()?;
        // A write cut by the power lands only partially, at a random byte.
        let n = if interrupted {
            st.rng.random_range(0..=buf.len())
        } else {
            buf.len()
        };
        let mut node = self.node.lock().unwrap();
        let end = pos as usize + n;
        if node.live.len() < end {
            node.live.resize(end, 0);
        }
        node.live[pos as usize..end].copy_from_slice(&buf[..n]);
        node.unsynced.push((pos, end as u64));
        if interrupted { Err(dead()) } else { Ok(()) }
    }

    fn len(&self) -> io::Result<u64> {
        self.storage.lock().check_alive()?;
        Ok(self.node.lock().unwrap().live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.storage.lock();
        if st.tick()? {
            return Err(dead());
        }
        let mut node = self.node.lock().unwrap();
        node.live.resize(len as usize, 0);
        // Shrinking discards unsynced writes beyond the new end; growing adds zeros,
        // which is also what the durable image shows beyond its length.
        for w in &mut node.unsynced {
            w.1 = w.1.min(len);
            w.0 = w.0.min(w.1);
        }
        Ok(())
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        let mut st = self.storage.lock();
        if st.tick()? {
            return Err(dead());
        }
        let mut node = self.node.lock().unwrap();
        if (node.live.len() as u64) < len {
            node.live.resize(len as usize, 0);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_vanish_and_synced_ones_stay() {
        let sim = SimStorage::new(SimOptions::default());
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        let f = sim.create_new(&dir.join("a")).unwrap();
        sim.sync_dir(dir).unwrap();
        f.write_all_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"VOLATILE", 7).unwrap();
        let image = sim.crash_image(SimOptions::default());
        assert_eq!(image.read_file(&dir.join("a")).unwrap(), b"durable");
    }

    #[test]
    fn a_name_without_dir_sync_vanishes() {
        let sim = SimStorage::new(SimOptions::default());
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        let f = sim.create_new(&dir.join("a")).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        let image = sim.crash_image(SimOptions::default());
        assert!(image.list_files(dir).unwrap().is_empty());
    }

    #[test]
    fn countdown_cuts_power_and_everything_after_fails() {
        let sim = SimStorage::new(SimOptions {
            crash_at_op: Some(3),
            ..SimOptions::default()
        });
        let dir = Path::new("/d");
        sim.create_dir_all(dir).unwrap();
        let f = sim.create_new(&dir.join("a")).unwrap(); // op 1
        sim.sync_dir(dir).unwrap(); // op 2
        assert!(f.write_all_at(b"abc", 0).is_err()); // op 3: cut
        assert!(f.sync_data().is_err());
        assert!(sim.has_crashed());
    }
}
