//! Checkpoints: durable state-machine snapshots with per-block checksums.
//!
//! A checkpoint of the state after applying every slot up to `last_applied`
//! is the file `<last_applied, 20 digits>.ckpt` in the store's directory:
//!
//! ```text
//! header:  magic "PXCKPT01" | version u32 | header_len u32 | last_applied u64
//!          | ballot round u64 | ballot leader u32 | block_size u32
//!          | voters u32 | learners u32 | ids u32 × (voters + learners)
//!          | crc32c u32 (of every header byte before it)
//! blocks:  block_count × (data [block_size, the last may be shorter] | crc32c u32 of that data)
//! trailer: magic "PXCKEND1" | data_len u64 | block_count u64 | 0 u32 | crc32c u32 (of the 28 bytes before)
//! ```
//!
//! # Writing without blocking execution
//!
//! [`CheckpointStore::begin`] returns a [`CheckpointWriter`], which is
//! `Send`: the node hands it, with a snapshot of its state machine, to a
//! background thread that streams the bytes in ([`CheckpointWriter::write`]
//! or `std::io::Write`) while execution goes on. Memory stays bounded by one
//! block. [`CheckpointWriter::finish`] writes the trailer, fsyncs, re-reads
//! and verifies the temporary file, renames it into place, fsyncs the
//! directory and deletes all but the newest `keep` checkpoints. Only after
//! `finish` returns may the node truncate its log through `last_applied`.
//!
//! # Reading and state transfer
//!
//! [`CheckpointStore::open`] checks the header and trailer;
//! [`CheckpointReader::verify`] and [`CheckpointReader::copy_to`] check
//! every block; [`CheckpointReader::read_chunk`] returns any byte range,
//! verified block by block, as a [`Chunk`] with its own CRC32C, so a peer
//! can stream a checkpoint in chunks and the receiver can feed them to
//! [`CheckpointWriter::write_chunk`], which checks each one.
//!
//! # Damage
//!
//! A block whose checksum fails, or that cannot be read (EIO), is read once
//! more: a transient fault passes the second time. If it fails again it is
//! `StorageError::Corrupt` naming the file and offset (an unreadable block
//! is corruption, not an I/O error: the bytes are damaged, not the
//! request). [`CheckpointStore::survey`] (and [`CheckpointStore::latest`]
//! on top of it) skips damaged checkpoints, sets each aside (renamed to
//! `<name>.damaged`, so it is neither tried again nor counted when pruning
//! to the newest `keep`) and reports it as a [`Damage`]. A misdirected
//! write that clobbered a checkpoint fails its block checksums the same
//! way; one that missed a checkpoint being written leaves stale bytes that
//! `finish` catches when it re-reads the file before publishing it.
//!
//! # Invariants
//!
//! - A file named `*.ckpt` was complete and verified before its rename was
//!   made durable; a crash leaves at most a `*.ckpt.tmp`, removed when the
//!   store is opened.
//! - No byte of a checkpoint is returned without its block checksum having
//!   been checked; a mismatch is `StorageError::Corrupt` naming the file and
//!   offset.

use crate::fs::{is_media_error, OsFs, ReadableFile, SharedFs, WritableFile};
use crate::recovery::set_aside_name;
use crate::storage::Damage;
use crate::StorageError;
use bytes::Bytes;
use paxos_contracts::{ensures, requires};
use paxos_core::{Ballot, Membership, ReplicaId, Slot};
use std::path::{Path, PathBuf};

/// Magic at the start of a checkpoint.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"PXCKPT01";
/// Magic at the start of a checkpoint's trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"PXCKEND1";
/// Checkpoint format version.
pub const CHECKPOINT_VERSION: u32 = 1;
/// Default bytes per checksummed block.
pub const DEFAULT_BLOCK_SIZE: u32 = 1 << 20;
/// Largest block size accepted (bounds the memory a reader allocates).
pub const MAX_BLOCK_SIZE: u32 = 64 << 20;
/// Largest chunk [`CheckpointReader::read_chunk`] returns.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;
/// Most replica ids a header may hold.
pub const MAX_MEMBERS: usize = 4096;
const HEADER_FIXED: usize = 48;
const TRAILER_LEN: usize = 32;
const SUFFIX: &str = ".ckpt";
const TMP_SUFFIX: &str = ".ckpt.tmp";
/// A pruned checkpoint being removed (see [`remove_gradually`]).
const DELETING_SUFFIX: &str = ".ckpt.deleting";
/// How much of a pruned checkpoint each step of [`remove_gradually`]
/// frees.
const DELETE_STEP_BYTES: u64 = 16 << 20;

/// What a checkpoint covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// Every slot up to and including this one is applied in the snapshot.
    pub last_applied: Slot,
    /// The highest ballot the replica knew when it took the snapshot.
    pub ballot: Ballot,
    /// The membership in force after `last_applied`.
    pub membership: Membership,
}

/// A checkpoint on disk whose header and trailer check out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// What it covers.
    pub meta: CheckpointMeta,
    /// Bytes of snapshot data.
    pub data_len: u64,
    /// Bytes per checksummed block.
    pub block_size: u32,
    /// The file.
    pub path: PathBuf,
}

/// A verified byte range of a checkpoint, with its own checksum for
/// transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of `data` in the snapshot data.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// CRC32C of `data`.
    pub crc32c: u32,
}

impl Chunk {
    /// Whether `data` matches `crc32c`.
    pub fn is_intact(&self) -> bool {
        crc32c::crc32c(&self.data) == self.crc32c
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        file: path.display().to_string(),
        offset,
        reason: reason.into(),
    }
}

/// Reads `buf.len()` bytes at `at`, trying once more after a media error
/// (a transient fault may pass); a media error that stays is corruption at
/// `at`, any other error an I/O error.
fn read_at(
    file: &dyn ReadableFile,
    path: &Path,
    buf: &mut [u8],
    at: u64,
) -> Result<(), StorageError> {
    let result = match file.read_exact_at(buf, at) {
        Err(e) if is_media_error(&e) => file.read_exact_at(buf, at),
        other => other,
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_media_error(&e) => Err(corrupt(
            path,
            at,
            format!("{} bytes unreadable, also when read again: {e}", buf.len()),
        )),
        Err(e) => Err(io_err(format!("reading {} at {at}", path.display()))(e)),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
thread_local! {
    /// Planted defect for the fault tests: while set on a thread, block
    /// checksums read on that thread are not checked.
    pub(crate) static SKIP_BLOCK_CHECKSUM: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

fn block_checksum_ok(data: &[u8], stored: u32) -> bool {
    #[cfg(test)]
    if SKIP_BLOCK_CHECKSUM.with(|s| s.get()) {
        return true;
    }
    crc32c::crc32c(data) == stored
}

fn checkpoint_name(slot: Slot) -> String {
    format!("{slot:020}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<Slot> {
    let stem = name.strip_suffix(SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(Slot)
}

fn encode_header(meta: &CheckpointMeta, block_size: u32) -> Vec<u8> {
    let ids = meta.membership.voters.len() + meta.membership.learners.len();
    let header_len = HEADER_FIXED + 4 * ids + 4;
    let mut h = Vec::with_capacity(header_len);
    h.extend_from_slice(&CHECKPOINT_MAGIC);
    h.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    h.extend_from_slice(&(header_len as u32).to_le_bytes());
    h.extend_from_slice(&meta.last_applied.0.to_le_bytes());
    h.extend_from_slice(&meta.ballot.round.to_le_bytes());
    h.extend_from_slice(&meta.ballot.leader.0.to_le_bytes());
    h.extend_from_slice(&block_size.to_le_bytes());
    h.extend_from_slice(&(meta.membership.voters.len() as u32).to_le_bytes());
    h.extend_from_slice(&(meta.membership.learners.len() as u32).to_le_bytes());
    for id in meta
        .membership
        .voters
        .iter()
        .chain(meta.membership.learners.iter())
    {
        h.extend_from_slice(&id.0.to_le_bytes());
    }
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

fn encode_trailer(data_len: u64, blocks: u64) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..8].copy_from_slice(&TRAILER_MAGIC);
    t[8..16].copy_from_slice(&data_len.to_le_bytes());
    t[16..24].copy_from_slice(&blocks.to_le_bytes());
    let crc = crc32c::crc32c(&t[0..28]);
    t[28..32].copy_from_slice(&crc.to_le_bytes());
    t
}

/// A directory of checkpoints, keeping the newest `keep`.
#[derive(Clone)]
pub struct CheckpointStore {
    fs: SharedFs,
    dir: PathBuf,
    keep: usize,
    block_size: u32,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("dir", &self.dir)
            .field("keep", &self.keep)
            .finish()
    }
}

/// The newest checkpoint that verified, and the newer ones that did not.
#[derive(Debug)]
pub struct Latest {
    /// The checkpoint, every block verified.
    pub reader: CheckpointReader,
    /// Newer checkpoints that failed verification, each set aside and
    /// logged. Non-empty means local corruption: if the log was truncated
    /// past `reader`'s slot, the state in between must come from a peer.
    pub skipped: Vec<Damage>,
}

/// What [`CheckpointStore::survey`] found: the newest checkpoint whose every
/// block verifies, if any, and the damaged ones newer than it.
#[derive(Debug)]
pub struct Survey {
    /// The newest intact checkpoint.
    pub newest: Option<CheckpointReader>,
    /// Newer checkpoints that failed verification, newest first; each was
    /// set aside.
    pub damaged: Vec<Damage>,
}

impl CheckpointStore {
    /// Opens (or creates) a store in `dir` on the real file system, keeping
    /// the newest `keep` checkpoints, with 1 MiB blocks.
    pub fn new(dir: impl AsRef<Path>, keep: usize) -> Result<CheckpointStore, StorageError> {
        CheckpointStore::with_fs(OsFs::shared(), dir, keep, DEFAULT_BLOCK_SIZE)
    }

    /// [`CheckpointStore::new`] over any file system and block size.
    pub fn with_fs(
        fs: SharedFs,
        dir: impl AsRef<Path>,
        keep: usize,
        block_size: u32,
    ) -> Result<CheckpointStore, StorageError> {
        if keep == 0 || block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(StorageError::OutOfRange(format!(
                "checkpoint store needs keep >= 1 and block size in 1..={MAX_BLOCK_SIZE}"
            )));
        }
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(io_err(format!("creating {}", dir.display())))?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs.sync_dir(&parent)
            .map_err(io_err(format!("syncing {}", parent.display())))?;
        let names = fs
            .list_dir(&dir)
            .map_err(io_err(format!("listing {}", dir.display())))?;
        let mut removed = false;
        for name in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
            // An unfinished checkpoint: never renamed, never relied on.
            let path = dir.join(name);
            fs.remove_file(&path)
                .map_err(io_err(format!("removing {}", path.display())))?;
            removed = true;
        }
        for name in names.iter().filter(|n| n.ends_with(DELETING_SUFFIX)) {
            // A pruned checkpoint whose removal a crash interrupted.
            remove_gradually(&fs, &dir.join(name))?;
            removed = true;
        }
        if removed {
            fs.sync_dir(&dir)
                .map_err(io_err(format!("syncing {}", dir.display())))?;
        }
        Ok(CheckpointStore {
            fs,
            dir,
            keep,
            block_size,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Slots of the checkpoints present (by name), oldest first.
    pub fn list(&self) -> Result<Vec<Slot>, StorageError> {
        let names = self
            .fs
            .list_dir(&self.dir)
            .map_err(io_err(format!("listing {}", self.dir.display())))?;
        let mut slots: Vec<Slot> = names.iter().filter_map(|n| parse_name(n)).collect();
        slots.sort_unstable();
        Ok(slots)
    }

    /// Opens the checkpoint of `slot`, checking its header and trailer.
    /// Blocks are checked as they are read.
    pub fn open(&self, slot: Slot) -> Result<CheckpointReader, StorageError> {
        CheckpointReader::open(&self.fs, &self.dir.join(checkpoint_name(slot)), Some(slot))
    }

    /// The newest checkpoint whose every block verifies, if any. Newer ones
    /// that fail are set aside, reported in [`Latest::skipped`] and logged,
    /// never used. If every checkpoint present fails, that is an error (the
    /// first damage, as `StorageError::Corrupt`), not "none"; see
    /// [`CheckpointStore::survey`] for the same search without that error.
    pub fn latest(&self) -> Result<Option<Latest>, StorageError> {
        let survey = self.survey()?;
        match (survey.newest, survey.damaged.first()) {
            (Some(reader), _) => Ok(Some(Latest {
                reader,
                skipped: survey.damaged,
            })),
            (None, Some(d)) => Err(StorageError::Corrupt {
                file: d.location.clone(),
                offset: d.offset,
                reason: format!(
                    "{} (every checkpoint is damaged; set aside: {})",
                    d.reason,
                    survey
                        .damaged
                        .iter()
                        .flat_map(|d| d.set_aside.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
            (None, None) => Ok(None),
        }
    }

    /// Searches from the newest checkpoint down for one whose header,
    /// trailer and every block verify (each read that fails is tried once
    /// more, so transient faults pass). Damaged ones are set aside (renamed
    /// to `<name>.damaged`, made durable) and reported; damage is never an
    /// error here, only I/O that fails for other reasons is.
    pub fn survey(&self) -> Result<Survey, StorageError> {
        let mut damaged = Vec::new();
        for slot in self.list()?.into_iter().rev() {
            let check = || self.open(slot).and_then(|r| r.verify().map(|()| r));
            let result = match check() {
                // Once more, from the header: a transient fault passes.
                Err(StorageError::Corrupt { .. }) => check(),
                other => other,
            };
            match result {
                Ok(reader) => {
                    return Ok(Survey {
                        newest: Some(reader),
                        damaged,
                    })
                }
                Err(StorageError::Corrupt {
                    file,
                    offset,
                    reason,
                }) => {
                    let set_aside = self.set_aside(slot)?;
                    let damage = Damage {
                        location: file,
                        offset,
                        reason,
                        last_kept_seq: None,
                        // It was durable once (published only after it
                        // verified): whatever only it held is gone.
                        may_have_lost_acknowledged: true,
                        set_aside: vec![set_aside.display().to_string()],
                    };
                    tracing::error!(%damage, "checkpoint damaged; set aside, trying an older one");
                    damaged.push(damage);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Survey {
            newest: None,
            damaged,
        })
    }

    /// Renames checkpoint `slot` to a `*.damaged` name, durably, so that
    /// later recoveries skip it (for damage found after [`Self::survey`],
    /// say a sector that went bad while it was being restored); returns the
    /// new path.
    pub fn set_aside(&self, slot: Slot) -> Result<PathBuf, StorageError> {
        let name = checkpoint_name(slot);
        let taken = self
            .fs
            .list_dir(&self.dir)
            .map_err(io_err(format!("listing {}", self.dir.display())))?
            .into_iter()
            .collect();
        let from = self.dir.join(&name);
        let to = self.dir.join(set_aside_name(&name, &taken));
        self.fs
            .rename(&from, &to)
            .map_err(io_err(format!("setting {} aside", from.display())))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err(format!("syncing {}", self.dir.display())))?;
        Ok(to)
    }

    /// Reads `len` bytes at `offset` of checkpoint `slot`'s data, verified
    /// (for streaming a checkpoint to a peer).
    pub fn read_chunk(&self, slot: Slot, offset: u64, len: usize) -> Result<Chunk, StorageError> {
        self.open(slot)?.read_chunk(offset, len)
    }

    /// Starts writing a checkpoint.
    pub fn begin(&self, meta: CheckpointMeta) -> Result<CheckpointWriter, StorageError> {
        let ids = meta.membership.voters.len() + meta.membership.learners.len();
        if ids > MAX_MEMBERS {
            return Err(StorageError::OutOfRange(format!(
                "membership of {ids} ids exceeds {MAX_MEMBERS}"
            )));
        }
        let final_path = self.dir.join(checkpoint_name(meta.last_applied));
        let tmp_path = self
            .dir
            .join(format!("{:020}{TMP_SUFFIX}", meta.last_applied));
        let mut file = self
            .fs
            .create(&tmp_path)
            .map_err(io_err(format!("creating {}", tmp_path.display())))?;
        let header = encode_header(&meta, self.block_size);
        file.write_all(&header)
            .map_err(io_err(format!("writing {}", tmp_path.display())))?;
        Ok(CheckpointWriter {
            store: self.clone(),
            file: Some(file),
            tmp_path,
            final_path,
            block: Vec::with_capacity(self.block_size as usize + 4),
            data_len: 0,
            write_behind: true,
            written_behind: 0,
            blocks: 0,
            meta,
        })
    }

    /// Deletes all but the newest `keep` checkpoints.
    fn prune(&self) -> Result<(), StorageError> {
        let slots = self.list()?;
        if slots.len() <= self.keep {
            return Ok(());
        }
        for slot in &slots[..slots.len() - self.keep] {
            let path = self.dir.join(checkpoint_name(*slot));
            // Renamed first, so nothing finds a checkpoint the steps below
            // have shortened (a reader that opened it before fails its
            // read, and a retry finds no such checkpoint, as after an
            // unlink); a crash leaves a `.deleting` file, removed at open.
            let doomed = self.dir.join(format!("{slot:020}{DELETING_SUFFIX}"));
            self.fs.rename(&path, &doomed).map_err(io_err(format!(
                "renaming {} to {}",
                path.display(),
                doomed.display()
            )))?;
            remove_gradually(&self.fs, &doomed)?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(io_err(format!("syncing {}", self.dir.display())))
    }
}

/// Removes the file at `path` by shortening it [`DELETE_STEP_BYTES`] at a
/// time (each step synced) before unlinking it. Unlinking a checkpoint of
/// a gigabyte or more at once frees all its extents in one journal commit,
/// which on ext4 mounted with `discard` (as the bench machine's root is)
/// also trims them all: the unlink took 255 ms, and an `fdatasync` of 4 KiB
/// beside it waited up to 46 ms (0.2-3.8 ms otherwise). That is the log's
/// sync every replica's writes wait for, and the replicas prune at about the
/// same slots. In 16 MiB steps the removal took 300 ms and that sync's worst
/// was 2.8 ms (docs/BENCHMARKS.md).
fn remove_gradually(fs: &SharedFs, path: &Path) -> Result<(), StorageError> {
    let mut len = fs
        .open_read(path)
        .and_then(|f| f.file_len())
        .map_err(io_err(format!("measuring {}", path.display())))?;
    while len > DELETE_STEP_BYTES {
        len -= DELETE_STEP_BYTES;
        fs.truncate(path, len)
            .map_err(io_err(format!("shortening {}", path.display())))?;
    }
    fs.remove_file(path)
        .map_err(io_err(format!("removing {}", path.display())))?;
    ensures!(
        fs.open_read(path).is_err(),
        "a removed checkpoint cannot be opened"
    );
    Ok(())
}

/// Writes one checkpoint; see the module documentation. Dropping it without
/// [`CheckpointWriter::finish`] abandons the checkpoint (its temporary file
/// is removed).
pub struct CheckpointWriter {
    store: CheckpointStore,
    file: Option<Box<dyn WritableFile>>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    /// The block being filled (its checksum is appended when it is written).
    block: Vec<u8>,
    data_len: u64,
    /// Whether to ask for write-behind (see [`CheckpointWriter::without_write_behind`]).
    write_behind: bool,
    /// `data_len` when write-behind was last asked for.
    written_behind: u64,
    blocks: u64,
    meta: CheckpointMeta,
}

/// A checkpoint being written asks the OS to start writing back every this
/// many bytes ([`WritableFile::write_behind`]): the disk then never holds a
/// whole checkpoint of dirty pages for the log's syncs to queue behind.
pub const WRITE_BEHIND_BYTES: u64 = 8 << 20;

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("path", &self.final_path)
            .field("data_len", &self.data_len)
            .finish()
    }
}

impl CheckpointWriter {
    /// Bytes of snapshot data written so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    fn flush_block(&mut self) -> Result<(), StorageError> {
        if self.block.is_empty() {
            return Ok(());
        }
        let crc = crc32c::crc32c(&self.block);
        self.block.extend_from_slice(&crc.to_le_bytes());
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| StorageError::Closed("checkpoint writer failed earlier".into()))?;
        let behind = self.write_behind && self.data_len - self.written_behind >= WRITE_BEHIND_BYTES;
        let r = file
            .write_all(&self.block)
            .and_then(|()| if behind { file.write_behind() } else { Ok(()) })
            .map_err(io_err(format!("writing {}", self.tmp_path.display())));
        if r.is_err() {
            self.file = None;
        }
        r?;
        self.blocks += 1;
        self.block.clear();
        if behind {
            self.written_behind = self.data_len;
        }
        Ok(())
    }

    /// Leaves every byte dirty until `finish` (no
    /// [`WritableFile::write_behind`]): for a writer driven from an event
    /// loop, where waiting for the device's previous step is a stall. Its
    /// `finish` must then run off the loop.
    pub fn without_write_behind(mut self) -> CheckpointWriter {
        self.write_behind = false;
        self
    }

    /// Appends snapshot bytes.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        let before = self.data_len;
        let block_size = self.store.block_size as usize;
        while !data.is_empty() {
            let room = block_size - self.block.len();
            let n = room.min(data.len());
            self.block.extend_from_slice(&data[..n]);
            self.data_len += n as u64;
            data = &data[n..];
            if self.block.len() == block_size {
                self.flush_block()?;
            }
        }
        ensures!(self.data_len >= before);
        Ok(())
    }

    /// Appends a chunk received from a peer, checking that it continues the
    /// data and that its checksum matches.
    pub fn write_chunk(&mut self, chunk: &Chunk) -> Result<(), StorageError> {
        if chunk.offset != self.data_len {
            return Err(StorageError::OutOfRange(format!(
                "chunk at offset {} does not continue the checkpoint at {}",
                chunk.offset, self.data_len
            )));
        }
        if !chunk.is_intact() {
            return Err(corrupt(
                &self.tmp_path,
                chunk.offset,
                "received chunk fails its checksum",
            ));
        }
        self.write(&chunk.data)
    }

    /// Completes the checkpoint durably (fsync, verify, rename, directory
    /// fsync) and prunes old ones.
    pub fn finish(mut self) -> Result<CheckpointInfo, StorageError> {
        self.flush_block()?;
        let trailer = encode_trailer(self.data_len, self.blocks);
        let tmp = self.tmp_path.clone();
        let mut file = self
            .file
            .take()
            .ok_or_else(|| StorageError::Closed("checkpoint writer failed earlier".into()))?;
        file.write_all(&trailer)
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        file.sync_data()
            .map_err(io_err(format!("syncing {}", tmp.display())))?;
        drop(file);
        // Read back before publishing: a checkpoint that does not verify is
        // never renamed into place.
        let reader = CheckpointReader::open(&self.store.fs, &tmp, Some(self.meta.last_applied))?;
        reader.verify()?;
        let fs = &self.store.fs;
        fs.rename(&tmp, &self.final_path)
            .map_err(io_err(format!("renaming {}", tmp.display())))?;
        fs.sync_dir(&self.store.dir)
            .map_err(io_err(format!("syncing {}", self.store.dir.display())))?;
        self.tmp_path = PathBuf::new(); // published: nothing to clean up
        self.store.prune()?;
        let info = CheckpointInfo {
            path: self.final_path.clone(),
            ..reader.info
        };
        ensures!(info.data_len == self.data_len && info.meta == self.meta);
        Ok(info)
    }
}

impl std::io::Write for CheckpointWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CheckpointWriter::write(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            self.file = None;
            // Best effort: a leftover is removed when the store is opened.
            let _ = self.store.fs.remove_file(&self.tmp_path);
        }
    }
}

/// An open checkpoint whose header and trailer check out.
pub struct CheckpointReader {
    info: CheckpointInfo,
    file: Box<dyn ReadableFile>,
    header_len: u64,
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointReader")
            .field("info", &self.info)
            .finish()
    }
}

impl CheckpointReader {
    fn open(
        fs: &SharedFs,
        path: &Path,
        want_slot: Option<Slot>,
    ) -> Result<CheckpointReader, StorageError> {
        let file = fs
            .open_read(path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let file_len = file
            .file_len()
            .map_err(io_err(format!("reading {}", path.display())))?;
        let read = |buf: &mut [u8], at: u64| read_at(&*file, path, buf, at);
        if file_len < (HEADER_FIXED + 4 + TRAILER_LEN) as u64 {
            return Err(corrupt(
                path,
                0,
                format!("checkpoint of {file_len} bytes is too short"),
            ));
        }
        let mut fixed = [0u8; HEADER_FIXED];
        read(&mut fixed, 0)?;
        if fixed[0..8] != CHECKPOINT_MAGIC {
            return Err(corrupt(path, 0, "bad checkpoint magic"));
        }
        let header_len = u32_at(&fixed, 12) as usize;
        let ids = u32_at(&fixed, 40) as u64 + u32_at(&fixed, 44) as u64;
        if ids > MAX_MEMBERS as u64 || header_len as u64 != HEADER_FIXED as u64 + 4 * ids + 4 {
            return Err(corrupt(path, 12, "bad checkpoint header length"));
        }
        if header_len as u64 + TRAILER_LEN as u64 > file_len {
            return Err(corrupt(path, 12, "checkpoint header longer than the file"));
        }
        let mut header = vec![0u8; header_len];
        read(&mut header, 0)?;
        if crc32c::crc32c(&header[..header_len - 4]) != u32_at(&header, header_len - 4) {
            return Err(corrupt(path, 0, "checkpoint header checksum mismatch"));
        }
        let version = u32_at(&header, 8);
        if version != CHECKPOINT_VERSION {
            return Err(corrupt(
                path,
                8,
                format!("unsupported checkpoint version {version}"),
            ));
        }
        let last_applied = Slot(u64_at(&header, 16));
        let ballot = Ballot::new(u64_at(&header, 24), ReplicaId(u32_at(&header, 32)));
        let block_size = u32_at(&header, 36);
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(corrupt(path, 36, format!("bad block size {block_size}")));
        }
        if let Some(want) = want_slot {
            if want != last_applied {
                return Err(corrupt(
                    path,
                    16,
                    format!("header covers slot {last_applied}, file name {want}"),
                ));
            }
        }
        let voters = u32_at(&header, 40) as usize;
        let mut all = header[HEADER_FIXED..header_len - 4]
            .chunks_exact(4)
            .map(|c| ReplicaId(u32_at(c, 0)));
        let membership = Membership {
            voters: all.by_ref().take(voters).collect(),
            learners: all.collect(),
        };
        let trailer_at = file_len - TRAILER_LEN as u64;
        let mut trailer = [0u8; TRAILER_LEN];
        read(&mut trailer, trailer_at)?;
        if crc32c::crc32c(&trailer[0..28]) != u32_at(&trailer, 28) || trailer[0..8] != TRAILER_MAGIC
        {
            return Err(corrupt(
                path,
                trailer_at,
                "checkpoint trailer is damaged or missing",
            ));
        }
        let data_len = u64_at(&trailer, 8);
        let blocks = u64_at(&trailer, 16);
        let bs = block_size as u64;
        let want_blocks = data_len.div_ceil(bs);
        let want_len = want_blocks
            .checked_mul(4)
            .and_then(|c| c.checked_add(data_len))
            .and_then(|n| n.checked_add(header_len as u64 + TRAILER_LEN as u64));
        if blocks != want_blocks || want_len != Some(file_len) {
            return Err(corrupt(
                path,
                trailer_at,
                format!(
                    "trailer says {data_len} bytes in {blocks} blocks; file is {file_len} bytes"
                ),
            ));
        }
        let info = CheckpointInfo {
            meta: CheckpointMeta {
                last_applied,
                ballot,
                membership,
            },
            data_len,
            block_size,
            path: path.to_path_buf(),
        };
        Ok(CheckpointReader {
            info,
            file,
            header_len: header_len as u64,
        })
    }

    /// What the checkpoint covers.
    pub fn info(&self) -> &CheckpointInfo {
        &self.info
    }

    /// Reads and verifies block `index` into `buf` (cleared first). A block
    /// that fails its checksum is read once more before it is reported: a
    /// bit flipped on the way (not on the medium) passes the second time.
    fn read_block(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), StorageError> {
        let bs = self.info.block_size as u64;
        requires!(index < self.info.data_len.div_ceil(bs));
        let data = (self.info.data_len - index * bs).min(bs) as usize;
        let at = self.header_len + index * (bs + 4);
        for attempt in 0..2 {
            buf.clear();
            buf.resize(data + 4, 0);
            read_at(&*self.file, &self.info.path, buf, at)?;
            let crc = u32_at(buf, data);
            buf.truncate(data);
            if block_checksum_ok(buf, crc) {
                if attempt > 0 {
                    tracing::warn!(file = %self.info.path.display(), block = index,
                        "checkpoint block failed its checksum once and passed when read again");
                }
                return Ok(());
            }
        }
        Err(corrupt(
            &self.info.path,
            at,
            format!("block {index} checksum mismatch, also when read again"),
        ))
    }

    /// Checks every block.
    pub fn verify(&self) -> Result<(), StorageError> {
        let mut buf = Vec::new();
        for i in 0..self.info.data_len.div_ceil(self.info.block_size as u64) {
            self.read_block(i, &mut buf)?;
        }
        Ok(())
    }

    /// Streams the whole snapshot into `out`, verifying each block before
    /// handing it over. Memory: one block.
    pub fn copy_to(&self, out: &mut dyn std::io::Write) -> Result<u64, StorageError> {
        let mut buf = Vec::new();
        for i in 0..self.info.data_len.div_ceil(self.info.block_size as u64) {
            self.read_block(i, &mut buf)?;
            out.write_all(&buf)
                .map_err(io_err("writing checkpoint data out".into()))?;
        }
        Ok(self.info.data_len)
    }

    /// Reads `len` bytes (fewer at the end) at `offset` of the snapshot data,
    /// verifying every block it touches.
    pub fn read_chunk(&self, offset: u64, len: usize) -> Result<Chunk, StorageError> {
        if offset > self.info.data_len || len > MAX_CHUNK_BYTES {
            return Err(StorageError::OutOfRange(format!(
                "chunk of {len} bytes at {offset} outside a checkpoint of {} bytes (max chunk {MAX_CHUNK_BYTES})",
                self.info.data_len
            )));
        }
        let end = (offset + len as u64).min(self.info.data_len);
        let bs = self.info.block_size as u64;
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut buf = Vec::new();
        let mut pos = offset;
        while pos < end {
            let index = pos / bs;
            self.read_block(index, &mut buf)?;
            let from = (pos - index * bs) as usize;
            let to = ((end - index * bs).min(bs)) as usize;
            out.extend_from_slice(&buf[from..to]);
            pos = index * bs + to as u64;
        }
        let data = Bytes::from(out);
        let chunk = Chunk {
            offset,
            crc32c: crc32c::crc32c(&data),
            data,
        };
        ensures!(chunk.data.len() as u64 == end - offset);
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, OsFs, ReadableFile};
    use crate::sim_fs::{CrashPolicy, SimFaults, SimFs};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn meta(slot: Slot) -> CheckpointMeta {
        CheckpointMeta {
            last_applied: slot,
            ballot: Ballot::new(4, ReplicaId(2)),
            membership: Membership {
                voters: vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)],
                learners: vec![ReplicaId(9)],
            },
        }
    }

    fn data(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ salt)
            .collect()
    }

    fn sim_store(keep: usize, block: u32) -> (SimFs, CheckpointStore) {
        let fs = SimFs::new();
        let store = CheckpointStore::with_fs(Arc::new(fs.clone()), "/ckpt", keep, block).unwrap();
        (fs, store)
    }

    fn write(
        store: &CheckpointStore,
        slot: Slot,
        bytes: &[u8],
    ) -> Result<CheckpointInfo, StorageError> {
        let mut w = store.begin(meta(slot))?;
        // Uneven pieces exercise block boundaries.
        for piece in bytes.chunks(37) {
            w.write(piece)?;
        }
        w.finish()
    }

    fn read_all(store: &CheckpointStore, slot: Slot) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        store.open(slot)?.copy_to(&mut out)?;
        Ok(out)
    }

    #[test]
    fn write_then_read_round_trips_on_the_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), 2).unwrap();
        let bytes = data(3 << 20 | 123, 5);
        let info = write(&store, Slot(10), &bytes).unwrap();
        assert_eq!(info.data_len, bytes.len() as u64);
        assert_eq!(info.meta, meta(Slot(10)));
        assert_eq!(read_all(&store, Slot(10)).unwrap(), bytes);
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.reader.info().meta.last_applied, Slot(10));
        assert!(latest.skipped.is_empty());
        // Background-thread use: the writer is Send.
        let s2 = store.clone();
        let t = std::thread::spawn(move || write(&s2, Slot(20), b"from another thread").unwrap());
        t.join().unwrap();
        assert_eq!(read_all(&store, Slot(20)).unwrap(), b"from another thread");
    }

    /// A file system that counts `write_behind` calls and passes
    /// everything to the real one.
    struct CountingFs {
        write_behinds: Arc<std::sync::atomic::AtomicU64>,
        /// The lengths files were truncated to, in order.
        truncated_to: Arc<std::sync::Mutex<Vec<u64>>>,
    }

    struct CountingFile {
        inner: Box<dyn WritableFile>,
        write_behinds: Arc<std::sync::atomic::AtomicU64>,
    }

    impl WritableFile for CountingFile {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.inner.write_all(buf)
        }
        fn zero_fill_to(&mut self, len: u64) -> std::io::Result<()> {
            self.inner.zero_fill_to(len)
        }
        fn sync_data(&mut self) -> std::io::Result<()> {
            self.inner.sync_data()
        }
        fn write_behind(&mut self) -> std::io::Result<()> {
            self.write_behinds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.write_behind()
        }
    }

    impl FileSystem for CountingFs {
        fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            OsFs.create_dir_all(dir)
        }
        fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            OsFs.list_dir(dir)
        }
        fn create(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
            Ok(Box::new(CountingFile {
                inner: OsFs.create(path)?,
                write_behinds: Arc::clone(&self.write_behinds),
            }))
        }
        fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
            OsFs.open_append(path)
        }
        fn open_write_at(
            &self,
            path: &Path,
            offset: u64,
        ) -> std::io::Result<Box<dyn WritableFile>> {
            OsFs.open_write_at(path, offset)
        }
        fn open_read(&self, path: &Path) -> std::io::Result<Box<dyn ReadableFile>> {
            OsFs.open_read(path)
        }
        fn read_all(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            OsFs.read_all(path)
        }
        fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
            self.truncated_to.lock().unwrap().push(len);
            OsFs.truncate(path, len)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            OsFs.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            OsFs.remove_file(path)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            OsFs.sync_dir(dir)
        }
    }

    /// A large checkpoint is written back to the device as it goes, not
    /// left dirty for one big sync at the end, and still reads back whole.
    #[test]
    fn a_large_checkpoint_is_written_back_as_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let write_behinds = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fs = CountingFs {
            write_behinds: Arc::clone(&write_behinds),
            truncated_to: Default::default(),
        };
        let store = CheckpointStore::with_fs(Arc::new(fs), dir.path(), 2, 64 << 10).unwrap();
        let bytes = data(40 << 20, 9);
        write(&store, Slot(7), &bytes).unwrap();
        // One call per 8 MiB of data: 5 for 40 MiB.
        let calls = write_behinds.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(calls, (40 << 20) / WRITE_BEHIND_BYTES);
        assert_eq!(read_all(&store, Slot(7)).unwrap(), bytes);
        // A writer driven from an event loop never asks (and never waits).
        let mut w = store.begin(meta(Slot(8))).unwrap().without_write_behind();
        w.write(&bytes).unwrap();
        w.finish().unwrap();
        assert_eq!(
            write_behinds.load(std::sync::atomic::Ordering::Relaxed),
            calls
        );
        assert_eq!(read_all(&store, Slot(8)).unwrap(), bytes);
    }

    /// A pruned checkpoint is renamed out of the way and shortened 16 MiB
    /// at a time before it is unlinked; one whose removal a crash
    /// interrupted is finished when the store is opened.
    #[test]
    fn a_pruned_checkpoint_is_removed_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let truncated_to = Arc::new(std::sync::Mutex::new(Vec::new()));
        let fs = Arc::new(CountingFs {
            write_behinds: Default::default(),
            truncated_to: Arc::clone(&truncated_to),
        });
        let store = CheckpointStore::with_fs(fs.clone(), dir.path(), 1, 1 << 20).unwrap();
        write(&store, Slot(7), &data(40 << 20, 3)).unwrap();
        let old_len = std::fs::metadata(dir.path().join(checkpoint_name(Slot(7))))
            .unwrap()
            .len();
        assert!(truncated_to.lock().unwrap().is_empty());
        write(&store, Slot(8), &data(10, 4)).unwrap();
        assert_eq!(store.list().unwrap(), vec![Slot(8)]);
        let steps = truncated_to.lock().unwrap().clone();
        let want: Vec<u64> = (1..)
            .map(|i| old_len.saturating_sub(i * DELETE_STEP_BYTES))
            .take_while(|&len| len > 0)
            .collect();
        assert_eq!(steps, want, "shortened a step at a time, then unlinked");
        let names = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 1, "only the newest checkpoint is left");

        // A crash in the middle left a `.deleting` file: opening removes it.
        let leftover = dir.path().join(format!("{:020}{DELETING_SUFFIX}", 3));
        std::fs::write(&leftover, vec![0u8; 100]).unwrap();
        drop(store);
        let store = CheckpointStore::with_fs(fs, dir.path(), 1, 1 << 20).unwrap();
        assert!(!leftover.exists());
        assert_eq!(store.list().unwrap(), vec![Slot(8)]);
    }

    #[test]
    fn keeps_only_the_newest_k_and_empty_snapshots_work() {
        let (_fs, store) = sim_store(2, 64);
        for slot in [5, 9, 3, 12] {
            write(&store, Slot(slot), &data(slot as usize * 10, 1)).unwrap();
        }
        assert_eq!(store.list().unwrap(), vec![Slot(9), Slot(12)]);
        write(&store, Slot(15), &[]).unwrap();
        assert_eq!(read_all(&store, Slot(15)).unwrap(), Vec::<u8>::new());
        assert_eq!(store.list().unwrap(), vec![Slot(12), Slot(15)]);
    }

    #[test]
    fn chunks_stream_a_checkpoint_to_another_store() {
        let (_fs, store) = sim_store(3, 100);
        let bytes = data(1234, 9);
        write(&store, Slot(7), &bytes).unwrap();
        let (_fs2, other) = sim_store(3, 64);
        let mut w = other.begin(meta(Slot(7))).unwrap();
        let mut offset = 0u64;
        loop {
            let chunk = store.read_chunk(Slot(7), offset, 150).unwrap();
            assert!(chunk.is_intact());
            assert_eq!(
                &chunk.data[..],
                &bytes[offset as usize..offset as usize + chunk.data.len()]
            );
            if chunk.data.is_empty() {
                break;
            }
            w.write_chunk(&chunk).unwrap();
            offset += chunk.data.len() as u64;
        }
        w.finish().unwrap();
        assert_eq!(read_all(&other, Slot(7)).unwrap(), bytes);
        // A damaged or misplaced chunk is refused.
        let mut w = other.begin(meta(Slot(8))).unwrap();
        let mut chunk = store.read_chunk(Slot(7), 0, 10).unwrap();
        chunk.crc32c ^= 1;
        assert!(matches!(
            w.write_chunk(&chunk),
            Err(StorageError::Corrupt { .. })
        ));
        let chunk = store.read_chunk(Slot(7), 5, 10).unwrap();
        assert!(matches!(
            w.write_chunk(&chunk),
            Err(StorageError::OutOfRange(_))
        ));
        assert!(matches!(
            store.read_chunk(Slot(7), 5000, 10),
            Err(StorageError::OutOfRange(_))
        ));
        assert!(matches!(
            store.read_chunk(Slot(7), 0, MAX_CHUNK_BYTES + 1),
            Err(StorageError::OutOfRange(_))
        ));
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing_behind() {
        let (fs, store) = sim_store(2, 64);
        let mut w = store.begin(meta(Slot(4))).unwrap();
        w.write(&data(500, 1)).unwrap();
        drop(w);
        assert!(store.list().unwrap().is_empty());
        assert!(fs.paths().is_empty(), "{:?}", fs.paths());
    }

    #[test]
    fn latest_skips_a_corrupt_newest_checkpoint_and_says_so() {
        let (fs, store) = sim_store(3, 64);
        write(&store, Slot(1), &data(300, 1)).unwrap();
        let info = write(&store, Slot(2), &data(300, 2)).unwrap();
        fs.flip_bit(&info.path, 8 * 200).unwrap();
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.reader.info().meta.last_applied, Slot(1));
        assert_eq!(latest.skipped.len(), 1);
        let d = &latest.skipped[0];
        assert_eq!(d.location, info.path.display().to_string());
        assert!(d.reason.contains("checksum"), "{d}");
        assert_eq!(d.last_kept_seq, None);
        let aside = format!("{}.damaged", info.path.display());
        assert_eq!(d.set_aside, vec![aside.clone()]);
        assert!(
            fs.file_len(Path::new(&aside)).is_some(),
            "kept for inspection"
        );
        assert_eq!(
            store.list().unwrap(),
            vec![Slot(1)],
            "no longer tried or counted"
        );
        let old = store.open(Slot(1)).unwrap().info().path.clone();
        fs.flip_bit(&old, 8 * 100).unwrap();
        assert!(
            matches!(store.latest(), Err(StorageError::Corrupt { .. })),
            "all corrupt is an error"
        );
        let survey = store.survey().unwrap();
        assert!(
            survey.newest.is_none() && survey.damaged.is_empty(),
            "set aside"
        );
    }

    #[test]
    fn an_unreadable_block_is_damage_and_the_checkpoint_is_set_aside() {
        let (fs, store) = sim_store(3, 64);
        write(&store, Slot(1), &data(300, 1)).unwrap();
        let info = write(&store, Slot(2), &data(3000, 2)).unwrap();
        fs.make_unreadable(&info.path, 1500, 1).unwrap();
        // Read directly, the damage is corruption at the block's offset.
        match store.open(Slot(2)).unwrap().copy_to(&mut Vec::new()) {
            Err(StorageError::Corrupt { offset, reason, .. }) => {
                assert!(reason.contains("unreadable"), "{reason}");
                // The first block touching the bad 512-byte sector.
                assert!(offset < 1536 && 1024 < offset + 68, "{offset}");
            }
            other => panic!("expected damage, got {other:?}"),
        }
        let survey = store.survey().unwrap();
        let newest = survey.newest.unwrap();
        assert_eq!(newest.info().meta.last_applied, Slot(1));
        assert_eq!(survey.damaged.len(), 1);
        assert!(survey.damaged[0].reason.contains("unreadable"));
        assert!(survey.damaged[0].may_have_lost_acknowledged);
        let mut got = Vec::new();
        newest.copy_to(&mut got).unwrap();
        assert_eq!(got, data(300, 1));
    }

    #[test]
    fn transient_read_faults_in_checkpoints_are_cured_or_reported_never_served() {
        let bytes = data(5000, 3);
        let (mut served, mut refused) = (0, 0);
        let (fs, store) = sim_store(3, 256);
        write(&store, Slot(1), &bytes).unwrap();
        for seed in 0..40 {
            fs.set_faults(SimFaults {
                seed,
                read_bit_flip_per_million: 30_000,
                read_error_per_million: 30_000,
                ..SimFaults::default()
            });
            let reader = store.open(Slot(1));
            match reader.and_then(|r| {
                let mut out = Vec::new();
                r.copy_to(&mut out).map(|_| out)
            }) {
                Ok(out) => {
                    assert_eq!(out, bytes, "seed {seed}: wrong bytes served");
                    served += 1;
                }
                Err(StorageError::Corrupt { .. }) => refused += 1,
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        let c = fs.fault_counters();
        assert!(
            c.read_bit_flips > 10 && c.transient_read_errors > 10,
            "{c:?}"
        );
        assert!(
            served > 20,
            "re-reads cure most faults ({served} served, {refused} refused)"
        );
    }

    #[test]
    fn misdirected_writes_into_or_out_of_a_checkpoint_are_detected() {
        for seed in 0..12 {
            let (fs, store) = sim_store(3, 64);
            write(&store, Slot(1), &data(700, 1)).unwrap();
            // A checkpoint being written misses its place: `finish` re-reads
            // it and refuses to publish it.
            fs.set_faults(SimFaults {
                seed,
                misdirected_write_per_million: 1_000_000,
                ..SimFaults::default()
            });
            let mut w = store.begin(meta(Slot(2))).unwrap();
            let finished = w.write(&data(700, 2)).and_then(|()| w.finish());
            assert!(
                matches!(finished, Err(StorageError::Corrupt { .. })),
                "seed {seed}: {finished:?}"
            );
            fs.set_faults(SimFaults::default());
            // Its data landed on checkpoint 1 (the only other file).
            match store.latest() {
                Err(StorageError::Corrupt { .. }) => {}
                Ok(Some(l)) => panic!("seed {seed}: clobbered checkpoint served: {l:?}"),
                other => panic!("seed {seed}: {other:?}"),
            }
            assert!(fs.fault_counters().misdirected_writes > 0);
        }
    }

    /// The fault tests can fail: with block checksums skipped (a planted
    /// defect), a flipped bit is served.
    #[test]
    fn a_skipped_block_checksum_serves_a_flipped_bit() {
        let (fs, store) = sim_store(3, 64);
        let bytes = data(300, 1);
        let info = write(&store, Slot(1), &bytes).unwrap();
        fs.flip_bit(
            &info.path,
            8 * (info.path.display().to_string().len() as u64 + 100),
        )
        .unwrap();
        let read = |store: &CheckpointStore| {
            let mut out = Vec::new();
            store.open(Slot(1))?.copy_to(&mut out).map(|_| out)
        };
        assert!(matches!(read(&store), Err(StorageError::Corrupt { .. })));
        SKIP_BLOCK_CHECKSUM.with(|s| s.set(true));
        let got = read(&store);
        SKIP_BLOCK_CHECKSUM.with(|s| s.set(false));
        let got = got.unwrap();
        assert_ne!(got, bytes, "the flipped bit is served");
    }

    #[test]
    fn crash_at_every_point_of_writing_a_checkpoint_keeps_old_or_new_whole() {
        let old = data(400, 1);
        let new = data(700, 2);
        let (fs, store) = sim_store(1, 128);
        write(&store, Slot(1), &old).unwrap();
        let start = fs.mutating_ops();
        write(&store, Slot(2), &new).unwrap();
        let ops = fs.mutating_ops() - start;
        for at in 0..ops + 1 {
            for policy in [
                CrashPolicy::LoseUnsynced,
                CrashPolicy::KeepUnsynced,
                CrashPolicy::Torn { seed: at },
            ] {
                let (fs, store) = sim_store(1, 128);
                write(&store, Slot(1), &old).unwrap();
                fs.crash_after(at);
                let finished = write(&store, Slot(2), &new).is_ok();
                fs.crash(policy);
                let store =
                    CheckpointStore::with_fs(Arc::new(fs.clone()), "/ckpt", 1, 128).unwrap();
                let latest = store.latest().unwrap().expect("some checkpoint survives");
                let mut got = Vec::new();
                latest.reader.copy_to(&mut got).unwrap();
                let slot = latest.reader.info().meta.last_applied;
                assert!(
                    latest.skipped.is_empty(),
                    "crash at {at} {policy:?} left a corrupt checkpoint"
                );
                match slot {
                    Slot(1) => assert_eq!(got, old),
                    Slot(2) => assert_eq!(got, new),
                    other => panic!("unexpected checkpoint {other}"),
                }
                if finished {
                    assert_eq!(
                        slot,
                        Slot(2),
                        "a finished checkpoint survives a crash (at {at}, {policy:?})"
                    );
                }
                assert!(fs
                    .paths()
                    .iter()
                    .all(|p| !p.to_string_lossy().ends_with(".tmp")));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Any single bit flip anywhere in a checkpoint file is detected by
        /// opening and verifying it.
        #[test]
        fn any_bit_flip_in_a_checkpoint_is_detected(len in 0usize..600, bit in any::<u64>()) {
            let (fs, store) = sim_store(2, 128);
            let info = write(&store, Slot(3), &data(len, 4)).unwrap();
            let file_len = fs.file_len(&info.path).unwrap();
            let bit = bit % (file_len * 8);
            fs.flip_bit(&info.path, bit).unwrap();
            let result = store.open(Slot(3)).and_then(|r| r.verify());
            prop_assert!(matches!(result, Err(StorageError::Corrupt { .. })), "flip of bit {} undetected", bit);
        }

        /// Chunks of any range equal the original bytes.
        #[test]
        fn any_chunk_reads_back_the_original(len in 0usize..2000, off in 0usize..2100, n in 0usize..700) {
            let (_fs, store) = sim_store(2, 97);
            let bytes = data(len, 3);
            write(&store, Slot(1), &bytes).unwrap();
            match store.read_chunk(Slot(1), off as u64, n) {
                Ok(c) => {
                    prop_assert!(off <= len);
                    prop_assert_eq!(&c.data[..], &bytes[off..(off + n).min(len)]);
                    prop_assert!(c.is_intact());
                }
                Err(e) => {
                    prop_assert!(off > len, "{}", e);
                }
            }
        }
    }

    #[test]
    fn garbage_files_are_errors_not_panics() {
        let (fs, store) = sim_store(2, 64);
        for len in [0usize, 10, 60, 100, 200] {
            fs.put_durable(
                &store.dir().join(checkpoint_name(Slot(len as u64))),
                data(len, 7),
            );
            assert!(
                matches!(
                    store.open(Slot(len as u64)),
                    Err(StorageError::Corrupt { .. })
                ),
                "len {len}"
            );
        }
    }
}
