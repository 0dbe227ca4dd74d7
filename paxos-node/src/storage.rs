//! Carrying out the node's checkpoint effects on a
//! [`paxos_log::checkpoint::CheckpointStore`]: the same functions serve
//! the production driver (on background threads, over the real file system)
//! and the simulator (inline, over a simulated disk), so the checkpoint
//! format, restore and transfer code is what the simulator tests.
//!
//! # Checkpoint data layout
//!
//! The store frames the file (header with [`CheckpointMeta`], per-block
//! CRC32C, trailer). Inside, the data is:
//!
//! ```text
//! "PXNODE01" | u32 section_len | directory section | u32 crc32c(section) | state machine snapshot …
//! ```
//!
//! The node's section comes first so that restoring reads it, then hands
//! the rest of the stream to [`StateMachine::restore`]; the state machine
//! must consume the stream exactly.

use crate::directory::Directory;
use crate::effect::{CheckpointJob, TransferOp};
use crate::state_machine::{Snapshot, SnapshotError, StateMachine};
use crate::xfer::{XferMessage, CHUNK_BYTES};
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::Slot;
use paxos_log::checkpoint::{CheckpointMeta, CheckpointReader, CheckpointStore, CheckpointWriter};
use paxos_log::StorageError;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Number of checkpoints kept on disk (the newest may turn out unreadable).
pub const CHECKPOINTS_KEPT: usize = 2;
const SECTION_MAGIC: &[u8; 8] = b"PXNODE01";
/// Largest node section accepted (bounds what a corrupt length can make us
/// allocate).
const MAX_SECTION_BYTES: usize = 16 << 20;
/// Bytes read from the store per refill while restoring.
const RESTORE_READ_BYTES: usize = 1 << 20;

/// Why a checkpoint could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed (I/O, or a block that failed its checksum).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The node's section is missing or malformed.
    #[error("checkpoint {path}: {reason}")]
    NodeSection {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The state machine refused the snapshot.
    #[error("checkpoint {path} does not restore: {source}")]
    Snapshot {
        /// The checkpoint file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// Writing the snapshot failed.
    #[error("writing the snapshot: {0}")]
    Write(#[source] std::io::Error),
}

/// Opens (creating) the checkpoint store in `dir` on the real file system.
pub fn open_checkpoints(dir: &Path) -> Result<CheckpointStore, StorageError> {
    CheckpointStore::new(dir, CHECKPOINTS_KEPT)
}

/// Encodes the node's section for a checkpoint.
pub fn encode_node_section(directory: &Directory) -> Bytes {
    let mut section = BytesMut::new();
    directory.encode(&mut section);
    let mut out = BytesMut::with_capacity(section.len() + 16);
    out.put_slice(SECTION_MAGIC);
    out.put_u32_le(section.len() as u32);
    out.put_slice(&section);
    out.put_u32_le(crc32c::crc32c(&section));
    out.freeze()
}

/// Writes one checkpoint durably (temp file, fsync, verify, rename). Blocks
/// for as long as that takes: run it off the event loop.
pub fn write_checkpoint<P: Snapshot>(
    store: &CheckpointStore,
    job: CheckpointJob<P>,
) -> Result<Slot, CheckpointError> {
    let CheckpointJob {
        meta,
        node_section,
        mut snapshot,
    } = job;
    let slot = meta.last_applied;
    let mut writer = store.begin(meta)?;
    writer.write(&node_section)?;
    snapshot
        .write_to(&mut writer)
        .map_err(CheckpointError::Write)?;
    writer.finish()?;
    Ok(slot)
}

/// A checkpoint restored into a state machine.
#[derive(Clone, Debug)]
pub struct Restored {
    /// What it covers.
    pub meta: CheckpointMeta,
    /// The node's directory as of its slot.
    pub directory: Directory,
    /// The file it came from.
    pub path: PathBuf,
    /// Bytes of snapshot data it held (and the restore read).
    pub data_len: u64,
    /// Newer checkpoints that failed verification and were skipped.
    pub skipped: Vec<String>,
}

/// The snapshot data of a checkpoint as a [`Read`], verified block by block
/// as it is read; memory: one refill.
struct CheckpointStream<'a> {
    reader: &'a CheckpointReader,
    offset: u64,
    buf: Bytes,
    /// Why reading the store failed, if it did: reported as what it is (a
    /// corrupt block names file and offset), not as a malformed section or
    /// snapshot, which is all a reader of the stream can tell.
    failed: Option<StorageError>,
}

impl CheckpointStream<'_> {
    /// The store's error if reading failed, else `other`.
    fn error_or(&mut self, other: CheckpointError) -> CheckpointError {
        self.failed.take().map_or(other, CheckpointError::Storage)
    }
}

impl Read for CheckpointStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            let left = self.reader.info().data_len - self.offset;
            if left == 0 {
                return Ok(0);
            }
            let len = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(RESTORE_READ_BYTES);
            let chunk = match self.reader.read_chunk(self.offset, len) {
                Ok(chunk) => chunk,
                Err(e) => {
                    let error = std::io::Error::other(e.to_string());
                    self.failed = Some(e);
                    return Err(error);
                }
            };
            self.offset += chunk.data.len() as u64;
            self.buf = chunk.data;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// Restores `sm` from the checkpoint `reader` opens; returns what it
/// covers. On error `sm` is as before: the state machine refuses a snapshot
/// it cannot read to its very end without changing anything (the
/// [`StateMachine::restore`] contract), so a checkpoint with bytes left over
/// is refused by it.
pub fn restore_from<S: StateMachine>(
    reader: &CheckpointReader,
    sm: &mut S,
) -> Result<Restored, CheckpointError> {
    let info = reader.info().clone();
    let path = info.path.clone();
    let bad = |reason| CheckpointError::NodeSection {
        path: path.clone(),
        reason,
    };
    let mut stream = CheckpointStream {
        reader,
        offset: 0,
        buf: Bytes::new(),
        failed: None,
    };
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).is_err() {
        return Err(stream.error_or(bad("no node section (written by another version?)")));
    }
    if &head[..8] != SECTION_MAGIC {
        return Err(bad("no node section (written by another version?)"));
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if len > MAX_SECTION_BYTES {
        return Err(bad("node section length out of range"));
    }
    let mut section = vec![0u8; len + 4];
    if stream.read_exact(&mut section).is_err() {
        return Err(stream.error_or(bad("node section truncated")));
    }
    let crc = u32::from_le_bytes([
        section[len],
        section[len + 1],
        section[len + 2],
        section[len + 3],
    ]);
    section.truncate(len);
    if crc32c::crc32c(&section) != crc {
        return Err(bad("node section checksum mismatch"));
    }
    let directory = Directory::decode(&section).ok_or_else(|| bad("node section malformed"))?;
    if let Err(source) = sm.restore(&mut stream) {
        return Err(stream.error_or(CheckpointError::Snapshot {
            path: path.clone(),
            source,
        }));
    }
    let mut rest = [0u8; 1];
    // The state machine replaced its state but left bytes unread: it broke
    // the trait's contract, and its state cannot be trusted any more.
    // Crash-stop rather than execute on top of it.
    assert!(
        matches!(stream.read(&mut rest), Ok(0)),
        "the state machine restored {path:?} without reading its snapshot to the end (StateMachine::restore must refuse bytes left over)"
    );
    Ok(Restored {
        meta: info.meta,
        directory,
        path,
        data_len: info.data_len,
        skipped: Vec::new(),
    })
}

/// Restores `sm` from the newest checkpoint that verifies and restores
/// (newer damaged ones are set aside by the store, and listed in
/// [`Restored::skipped`]). `None`: no checkpoint is usable — there is none,
/// or every one is damaged (each damage is logged).
///
/// Starting from an older checkpoint, or from none, is safe: the log holds
/// every vote (a checkpoint holds only chosen, applied state), and if the
/// log was already truncated past what the state machine holds, the core
/// says it needs a snapshot and the node fetches one from a peer.
///
/// The medium can fail between the survey's verification and the restore
/// (a read error or a bad checksum while streaming): the restore is tried
/// once more (transient faults pass), then the checkpoint is set aside as
/// damaged and the next older one is tried. A checkpoint that reads
/// cleanly but that the state machine refuses is an error, not damage: it
/// points at a bug or a version mismatch an operator must see.
pub fn restore_newest<S: StateMachine>(
    store: &CheckpointStore,
    sm: &mut S,
) -> Result<Option<Restored>, CheckpointError> {
    let mut skipped = Vec::new();
    // Each round either returns or sets one checkpoint aside.
    loop {
        let survey = store.survey()?;
        skipped.extend(survey.damaged.iter().map(|d| d.to_string()));
        let Some(reader) = survey.newest else {
            for d in &skipped {
                tracing::error!(damage = %d, "checkpoint damaged and set aside; no usable checkpoint is left");
            }
            return Ok(None);
        };
        let result = match restore_from(&reader, sm) {
            Err(CheckpointError::Storage(StorageError::Corrupt { .. })) => {
                restore_from(&reader, sm)
            }
            other => other,
        };
        match result {
            Ok(mut restored) => {
                restored.skipped = skipped;
                return Ok(Some(restored));
            }
            Err(CheckpointError::Storage(StorageError::Corrupt {
                file,
                offset,
                reason,
            })) => {
                let slot = reader.info().meta.last_applied;
                drop(reader);
                let aside = store.set_aside(slot)?;
                let damage = set_aside_damage(file, offset, reason, vec![aside]);
                tracing::error!(%damage, "checkpoint failed while restoring; set aside, trying an older one");
                skipped.push(damage.to_string());
            }
            Err(e) => return Err(e),
        }
    }
}

/// The report for a checkpoint found damaged at `offset` of `file` and
/// moved to `set_aside`: its state may hold acknowledged writes that the
/// log no longer has.
fn set_aside_damage(
    file: String,
    offset: u64,
    reason: String,
    set_aside: Vec<std::path::PathBuf>,
) -> paxos_log::Damage {
    paxos_log::Damage {
        location: file,
        offset,
        reason,
        last_kept_seq: None,
        may_have_lost_acknowledged: true,
        set_aside: set_aside.iter().map(|p| p.display().to_string()).collect(),
    }
}

/// What [`serve_chunk`] produced.
#[derive(Debug)]
pub struct Served {
    /// The reply for the peer.
    pub reply: XferMessage,
    /// The checkpoint that turned out damaged while reading it (a read
    /// error or a bad checksum, also when read again): it was set aside.
    /// Report it with [`crate::Node::on_checkpoint_damaged`].
    pub damaged: Option<Slot>,
}

/// The reply to a peer's request for a chunk of checkpoint `slot` (0: the
/// newest) at `offset`: a verified chunk of at most `max_bytes` (and at
/// most [`CHUNK_BYTES`]), or `None` if this store cannot serve it. A
/// checkpoint that fails to read twice is set aside as damaged (see
/// [`Served::damaged`]), so it is not offered again.
pub fn serve_chunk(store: &CheckpointStore, slot: Slot, offset: u64, max_bytes: usize) -> Served {
    let none = |damaged| Served {
        reply: XferMessage::None { slot },
        damaged,
    };
    let Ok(slots) = store.list() else {
        return none(None);
    };
    let found = if slot == Slot::ZERO {
        slots.last().copied()
    } else {
        slots.into_iter().find(|&s| s == slot)
    };
    let Some(found) = found else {
        return none(None);
    };
    let read = || -> Result<XferMessage, StorageError> {
        let reader = store.open(found)?;
        let info = reader.info().clone();
        let len = usize::try_from(info.data_len.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(CHUNK_BYTES)
            .min(max_bytes.max(1));
        let chunk = reader.read_chunk(offset, len)?;
        Ok(XferMessage::Chunk {
            meta: info.meta,
            data_len: info.data_len,
            chunk,
        })
    };
    let result = match read() {
        // Once more: a transient fault passes.
        Err(StorageError::Corrupt { .. }) => read(),
        other => other,
    };
    match result {
        Ok(reply) => Served {
            reply,
            damaged: None,
        },
        Err(StorageError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            let set_aside = match store.set_aside(found) {
                Ok(path) => vec![path],
                Err(e) => {
                    tracing::error!(error = %e, "setting a damaged checkpoint aside failed");
                    Vec::new()
                }
            };
            let damage = set_aside_damage(file, offset, reason, set_aside);
            tracing::error!(%damage, "checkpoint damaged while serving it to a peer");
            none(Some(found))
        }
        Err(_) => none(None),
    }
}

/// Carries out [`TransferOp`]s: writes a checkpoint received from a peer
/// into the local store.
#[derive(Debug)]
pub struct TransferSink {
    store: CheckpointStore,
    writer: Option<(Slot, CheckpointWriter)>,
}

impl TransferSink {
    /// A sink writing into `store`.
    pub fn new(store: CheckpointStore) -> TransferSink {
        TransferSink {
            store,
            writer: None,
        }
    }

    /// Carries out `Write` and `Abandon` at once. `Finish` (which fsyncs)
    /// is split off: use [`TransferSink::take_finish`] to run it elsewhere,
    /// or this method to run it here; it returns the finished slot.
    pub fn perform(&mut self, op: TransferOp) -> Result<Option<Slot>, StorageError> {
        match op {
            TransferOp::Write {
                meta,
                data_len: _,
                chunk,
            } => {
                let slot = meta.last_applied;
                if self.writer.as_ref().is_none_or(|(s, _)| *s != slot) || chunk.offset == 0 {
                    // Chunks are written on the driver's event loop:
                    // never wait there for the device (`Finish`, which
                    // syncs, runs elsewhere).
                    let writer = self.store.begin(meta)?.without_write_behind();
                    self.writer = Some((slot, writer));
                }
                let Some((_, writer)) = self.writer.as_mut() else {
                    return Ok(None);
                };
                if let Err(e) = writer.write_chunk(&chunk) {
                    self.writer = None;
                    return Err(e);
                }
                Ok(None)
            }
            TransferOp::Finish { slot } => match self.take_finish(slot) {
                Some(finish) => finish.run().map(Some),
                None => Err(StorageError::OutOfRange(format!(
                    "no transfer of checkpoint {slot} in progress"
                ))),
            },
            TransferOp::Abandon => {
                self.writer = None;
                Ok(None)
            }
        }
    }

    /// Detaches the writer of checkpoint `slot` so that its `finish`
    /// (verify, fsync, rename) can run on another thread.
    pub fn take_finish(&mut self, slot: Slot) -> Option<PendingFinish> {
        match self.writer.take() {
            Some((s, writer)) if s == slot => Some(PendingFinish { slot, writer }),
            other => {
                self.writer = other;
                None
            }
        }
    }
}

/// The last step of a transfer, detachable from the sink.
#[derive(Debug)]
pub struct PendingFinish {
    slot: Slot,
    writer: CheckpointWriter,
}

impl PendingFinish {
    /// Verifies, syncs and publishes the checkpoint; returns its slot.
    pub fn run(self) -> Result<Slot, StorageError> {
        self.writer.finish()?;
        Ok(self.slot)
    }
}

/// Opens checkpoint `slot` of `store` and restores `sm` from it.
pub fn restore_slot<S: StateMachine>(
    store: &CheckpointStore,
    slot: Slot,
    sm: &mut S,
) -> Result<Restored, CheckpointError> {
    let reader = store.open(slot)?;
    restore_from(&reader, sm)
}
