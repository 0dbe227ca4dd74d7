//! A simulated file system for fault injection.
//!
//! It models what a real disk guarantees and no more:
//!
//! - File data written but not yet `sync_data`-ed may be lost on a crash,
//!   wholly or in part (a torn write keeps a prefix of the unsynced bytes).
//! - Directory changes (create, rename, remove) not yet made durable with
//!   `sync_dir` may be lost on a crash; they are journalled in order, so a
//!   crash keeps some prefix of them.
//! - A crash can be scheduled at any mutating operation: that operation
//!   fails (a write is cut short: part of its buffer lands, unsynced) and
//!   every later operation fails until [`SimFs::crash`] "reboots" the disk.
//!
//! Tests run the real [`crate::FileLog`] and [`crate::checkpoint`] code on
//! it, crash at every point of a write sequence, and check that what was
//! acknowledged survives.

use crate::fs::{FileSystem, ReadableFile, WritableFile};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// What happens to unsynced data on a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Every unsynced byte and directory change is lost.
    LoseUnsynced,
    /// Every unsynced byte and directory change happens to survive.
    KeepUnsynced,
    /// Each file keeps a pseudo-random prefix of its unsynced bytes and the
    /// directory keeps a pseudo-random prefix of its unsynced changes.
    Torn {
        /// Seed for the choices.
        seed: u64,
    },
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
}

impl DirOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            DirOp::Link(p, _) | DirOp::Unlink(p) => p.parent(),
        }
    }
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            DirOp::Unlink(p) => {
                names.remove(p);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending: Vec<DirOp>,
    next_inode: u64,
    /// Mutating operations before the scheduled crash (0: the next one).
    crash_in: Option<u64>,
    crashed: bool,
    mutating_ops: u64,
    data_syncs: u64,
    syncs_paused: bool,
}

impl State {
    /// Counts a mutating operation; `Err` if the disk is down or this is the
    /// scheduled crash point (then `crashed` is set and the caller applies
    /// any partial effect first via the returned flag).
    fn tick(&mut self) -> Result<bool, io::Error> {
        if self.crashed {
            return Err(crashed());
        }
        self.mutating_ops += 1;
        match self.crash_in {
            Some(0) => {
                self.crash_in = None;
                self.crashed = true;
                Ok(true)
            }
            Some(n) => {
                self.crash_in = Some(n - 1);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed {
            Err(crashed())
        } else {
            Ok(())
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )
        })
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: disk is down")
}

/// Splitmix64: small deterministic choices for torn crashes.
fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed.wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The simulated file system. Clones share one disk.
#[derive(Clone, Debug, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    unpaused: Arc<std::sync::Condvar>,
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a test failure already; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Schedules a crash at the `n`-th mutating operation from now (0: the
    /// next one).
    pub fn crash_after(&self, n: u64) {
        self.lock().crash_in = Some(n);
    }

    /// Whether the scheduled crash has happened.
    pub fn is_down(&self) -> bool {
        self.lock().crashed
    }

    /// Completed `sync_data` calls so far.
    pub fn data_syncs(&self) -> u64 {
        self.lock().data_syncs
    }

    /// While paused, `sync_data` blocks (to hold the log writer mid-flush).
    pub fn pause_syncs(&self, paused: bool) {
        self.lock().syncs_paused = paused;
        self.unpaused.notify_all();
    }

    /// Mutating operations so far (writes, syncs, creates, renames, removes,
    /// truncates, directory syncs).
    pub fn mutating_ops(&self) -> u64 {
        self.lock().mutating_ops
    }

    /// Crashes now (if not crashed already) and reboots: unsynced data and
    /// directory changes are dropped or kept as `policy` says, and the disk
    /// accepts operations again.
    pub fn crash(&self, policy: CrashPolicy) {
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.pending);
        let keep_ops = match policy {
            CrashPolicy::LoseUnsynced => 0,
            CrashPolicy::KeepUnsynced => pending.len(),
            CrashPolicy::Torn { seed } => (mix(seed, 1) % (pending.len() as u64 + 1)) as usize,
        };
        let mut names = s.durable_names.clone();
        for op in &pending[..keep_ops] {
            op.apply(&mut names);
        }
        s.durable_names = names.clone();
        s.names = names;
        let live: std::collections::HashSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| live.contains(ino));
        for (ino, inode) in s.inodes.iter_mut() {
            let new = if inode.data.starts_with(&inode.durable) {
                let extra = inode.data.len() - inode.durable.len();
                let keep = match policy {
                    CrashPolicy::LoseUnsynced => 0,
                    CrashPolicy::KeepUnsynced => extra,
                    CrashPolicy::Torn { seed } => {
                        (mix(seed, *ino + 2) % (extra as u64 + 1)) as usize
                    }
                };
                inode.data[..inode.durable.len() + keep].to_vec()
            } else {
                // Rewritten or cut since the last sync: either version may
                // be what the disk holds.
                match policy {
                    CrashPolicy::LoseUnsynced => inode.durable.clone(),
                    CrashPolicy::KeepUnsynced => inode.data.clone(),
                    CrashPolicy::Torn { seed } => {
                        if mix(seed, *ino + 2) % 2 == 0 {
                            inode.durable.clone()
                        } else {
                            inode.data.clone()
                        }
                    }
                }
            };
            inode.data = new.clone();
            inode.durable = new;
        }
        s.crashed = false;
        s.crash_in = None;
    }

    /// Flips one bit of `path`'s content, durably (media corruption).
    pub fn flip_bit(&self, path: &Path, bit: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(path)?;
        let inode = s.inodes.get_mut(&ino).ok_or_else(crashed)?;
        let byte = (bit / 8) as usize;
        if byte >= inode.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bit past end of file",
            ));
        }
        inode.data[byte] ^= 1 << (bit % 8);
        if byte < inode.durable.len() {
            inode.durable[byte] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// The length of `path`, if it exists.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let s = self.lock();
        let ino = s.names.get(path)?;
        s.inodes.get(ino).map(|i| i.data.len() as u64)
    }

    /// Paths of the files that exist now, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }

    /// Writes `data` into `path` durably (setting up a test scenario).
    pub fn put_durable(&self, path: &Path, data: Vec<u8>) {
        let mut s = self.lock();
        let ino = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(
            ino,
            Inode {
                data: data.clone(),
                durable: data,
            },
        );
        s.names.insert(path.to_path_buf(), ino);
        s.durable_names.insert(path.to_path_buf(), ino);
    }
}

struct SimWritable {
    fs: SimFs,
    ino: u64,
}

impl WritableFile for SimWritable {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.fs.lock();
        let crash_now = s.tick()?;
        let inode = s.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
        if crash_now {
            // A write cut short by the crash: part of it reached the file.
            inode.data.extend_from_slice(&buf[..buf.len() / 2]);
            return Err(crashed());
        }
        inode.data.extend_from_slice(buf);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut s = self.fs.lock();
        while s.syncs_paused {
            s = self.fs.unpaused.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.data_syncs += 1;
        if s.tick()? {
            return Err(crashed());
        }
        let inode = s.inodes.get_mut(&self.ino).ok_or_else(crashed)?;
        inode.durable = inode.data.clone();
        Ok(())
    }
}

struct SimReadable {
    data: Vec<u8>,
}

impl ReadableFile for SimReadable {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self
            .data
            .get(start..end)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.lock().alive()
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        s.alive()?;
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(crashed());
        }
        let ino = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(ino, Inode::default());
        s.names.insert(path.to_path_buf(), ino);
        s.pending.push(DirOp::Link(path.to_path_buf(), ino));
        Ok(Box::new(SimWritable {
            fs: self.clone(),
            ino,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let s = self.lock();
        s.alive()?;
        let ino = s.lookup(path)?;
        Ok(Box::new(SimWritable {
            fs: self.clone(),
            ino,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        Ok(Box::new(SimReadable {
            data: self.read_all(path)?,
        }))
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        s.alive()?;
        let ino = s.lookup(path)?;
        Ok(s.inodes
            .get(&ino)
            .map(|i| i.data.clone())
            .unwrap_or_default())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(path)?;
        // Two steps on a real disk (set_len, then fsync): a crash may fall
        // between them.
        if s.tick()? {
            return Err(crashed());
        }
        let inode = s.inodes.get_mut(&ino).ok_or_else(crashed)?;
        inode.data.truncate(len as usize);
        if s.tick()? {
            return Err(crashed());
        }
        let inode = s.inodes.get_mut(&ino).ok_or_else(crashed)?;
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(from)?;
        if s.tick()? {
            return Err(crashed());
        }
        s.names.remove(from);
        s.names.insert(to.to_path_buf(), ino);
        // Rename is atomic in the journal: one record covers both names.
        s.pending.push(DirOp::Unlink(from.to_path_buf()));
        s.pending.push(DirOp::Link(to.to_path_buf(), ino));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.lookup(path)?;
        if s.tick()? {
            return Err(crashed());
        }
        s.names.remove(path);
        s.pending.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.tick()? {
            return Err(crashed());
        }
        let pending = std::mem::take(&mut s.pending);
        let mut rest = Vec::new();
        for op in pending {
            if op.dir() == Some(dir) {
                op.apply(&mut s.durable_names);
            } else {
                rest.push(op);
            }
        }
        s.pending = rest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn unsynced_data_and_names_are_lost_on_crash() {
        let fs = SimFs::new();
        let mut f = fs.create(&p("/d/a")).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync_data().unwrap();
        f.write_all(b" world").unwrap();
        // The name was never made durable: the file vanishes.
        fs.crash(CrashPolicy::LoseUnsynced);
        assert!(fs.read_all(&p("/d/a")).is_err());

        let mut f = fs.create(&p("/d/b")).unwrap();
        f.write_all(b"hello").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        f.write_all(b" world").unwrap();
        fs.crash(CrashPolicy::LoseUnsynced);
        assert_eq!(fs.read_all(&p("/d/b")).unwrap(), b"hello");
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_unsynced_bytes() {
        for seed in 0..20 {
            let fs = SimFs::new();
            let mut f = fs.create(&p("/d/a")).unwrap();
            fs.sync_dir(&p("/d")).unwrap();
            f.write_all(b"abc").unwrap();
            f.sync_data().unwrap();
            f.write_all(b"defghij").unwrap();
            fs.crash(CrashPolicy::Torn { seed });
            let got = fs.read_all(&p("/d/a")).unwrap();
            assert!(got.len() >= 3 && b"abcdefghij".starts_with(&got), "{got:?}");
        }
    }

    #[test]
    fn scheduled_crash_cuts_the_write_and_stops_the_disk() {
        let fs = SimFs::new();
        let mut f = fs.create(&p("/d/a")).unwrap();
        fs.crash_after(0);
        assert!(f.write_all(b"abcdef").is_err());
        assert!(fs.is_down());
        assert!(f.sync_data().is_err());
        assert!(fs.read_all(&p("/d/a")).is_err());
        fs.crash(CrashPolicy::KeepUnsynced);
        assert_eq!(fs.read_all(&p("/d/a")).unwrap(), b"abc");
    }
}
