//! Preallocated segments, prepared ahead of the writer.
//!
//! With [`crate::LogOptions::preallocate_segments`], a new segment is not
//! created when the writer rolls: a *spare* was made earlier, a temporary
//! file (`spare-<n>.log.tmp`) zero-filled to the full segment size, its
//! blocks allocated and written and synced. Rolling then writes the new
//! segment's header and state record into the spare, syncs it (no metadata:
//! the blocks and the length are already durable), renames it into place
//! and syncs the directory, as the unprepared path does.
//!
//! Who prepares spares follows the writer mode. With a writer thread, a
//! thread of its own keeps one spare ready, as etcd's WAL `filePipeline`
//! does: it makes one, hands it over when the writer asks, and starts the
//! next. In [`crate::WriterMode::Inline`] (the simulator) there is no
//! thread: the writer prepares the next spare itself after a group commit
//! has published its appends durable, so the work never delays an append's
//! own write and sync, and a crash can fall in the middle of it.
//!
//! A crash while a spare is being prepared or waits leaves only a `.log.tmp`
//! file, which recovery removes like any unfinished segment: a spare never
//! holds an append until it has been renamed into place.

use crate::codec::StateSummary;
use crate::fs::{SharedFs, WritableFile};
use crate::recovery::{SegmentMeta, SEGMENT_TMP_SUFFIX};
use crate::storage::StorageError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A zero-filled, synced file, ready to become the next segment.
pub(crate) struct Spare {
    path: PathBuf,
    file: Box<dyn WritableFile>,
}

/// Zero-fill step of the preparing thread: it checks for shutdown between
/// steps, so closing the log never waits for a whole segment of zeros.
const FILL_STEP: u64 = 8 << 20;

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

/// Makes spare number `n` in `dir`: `len` bytes of zeros, written and
/// synced. `stop` is polled between fill steps (`None` from a stopped fill).
fn prepare(
    fs: &SharedFs,
    dir: &Path,
    n: u64,
    len: u64,
    stop: Option<&AtomicBool>,
) -> Result<Option<Spare>, StorageError> {
    let path = dir.join(format!("spare-{n}{SEGMENT_TMP_SUFFIX}"));
    let context = || format!("preparing {}", path.display());
    let mut file = fs.create(&path).map_err(io_err(context()))?;
    let mut filled = 0;
    while filled < len {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            drop(file);
            // Left behind, recovery would remove it anyway.
            let _ = fs.remove_file(&path);
            return Ok(None);
        }
        filled = (filled + FILL_STEP).min(len);
        file.zero_fill_to(filled).map_err(io_err(context()))?;
    }
    file.sync_data().map_err(io_err(context()))?;
    Ok(Some(Spare { path, file }))
}

/// Turns `spare` into the segment whose first append is `first_lsn`: its
/// header and state record written at its start and synced, then renamed
/// into place and the directory synced (so a segment name that survives a
/// crash names a complete header and state record, as for a segment made
/// without a spare). Returns the file, positioned after the state record.
pub(crate) fn install(
    fs: &SharedFs,
    dir: &Path,
    spare: Spare,
    first_lsn: u64,
    summary: &StateSummary,
) -> Result<(Box<dyn WritableFile>, SegmentMeta), StorageError> {
    let Spare { path: tmp, file } = spare;
    crate::log::seal_segment(fs, dir, &tmp, file, first_lsn, true, summary)
}

/// Where the writer gets its spares.
pub(crate) enum Spares {
    /// Preallocation is off: segments are created when the writer rolls.
    Off,
    /// A thread keeps one spare ready.
    Thread {
        /// The next spare (or why it could not be made); a rendezvous
        /// channel, so the thread prepares one ahead, no more.
        ready: Option<Receiver<Result<Spare, StorageError>>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    },
    /// The writer prepares spares itself between group commits.
    Inline(Box<InlineSpares>),
}

/// What [`Spares::Inline`] keeps.
pub(crate) struct InlineSpares {
    fs: SharedFs,
    dir: PathBuf,
    len: u64,
    /// The spare prepared after the last group commit, if not used yet.
    next: Option<Spare>,
    /// Spares made so far (names the next one).
    made: u64,
}

impl Spares {
    /// Starts preparing spares of `len` bytes in `dir` (on a thread if
    /// `threaded`).
    pub(crate) fn start(
        fs: &SharedFs,
        dir: &Path,
        len: u64,
        threaded: bool,
    ) -> Result<Spares, StorageError> {
        if !threaded {
            return Ok(Spares::Inline(Box::new(InlineSpares {
                fs: fs.clone(),
                dir: dir.to_path_buf(),
                len,
                next: None,
                made: 0,
            })));
        }
        let (tx, rx) = sync_channel(0);
        let stop = Arc::new(AtomicBool::new(false));
        let (fs, dir, stop_flag) = (fs.clone(), dir.to_path_buf(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("paxos-log-prealloc".into())
            .spawn(move || {
                for n in 0u64.. {
                    let made = prepare(&fs, &dir, n, len, Some(&stop_flag));
                    let spare = match made {
                        Ok(Some(spare)) => Ok(spare),
                        Ok(None) => return,
                        Err(e) => Err(e),
                    };
                    let failed = spare.is_err();
                    if let Err(unsent) = tx.send(spare) {
                        // The writer is gone.
                        if let Ok(spare) = unsent.0 {
                            drop(spare.file);
                            let _ = fs.remove_file(&spare.path);
                        }
                        return;
                    }
                    if failed {
                        return;
                    }
                }
            })
            .map_err(io_err("spawning the log preallocation thread".into()))?;
        Ok(Spares::Thread {
            ready: Some(rx),
            stop,
            handle: Some(handle),
        })
    }

    /// Whether segments are preallocated.
    pub(crate) fn enabled(&self) -> bool {
        !matches!(self, Spares::Off)
    }

    /// The next spare, and whether the writer had to wait for it (it was
    /// not ready: the writer outran preparation).
    pub(crate) fn take(&mut self) -> Result<(Spare, bool), StorageError> {
        match self {
            Spares::Off => Err(StorageError::Closed(
                "no preallocated segment: preallocation is off".into(),
            )),
            Spares::Thread { ready, .. } => {
                let closed = || StorageError::Closed("the log preallocation thread stopped".into());
                let rx = ready.as_ref().ok_or_else(closed)?;
                let (got, waited) = match rx.try_recv() {
                    Ok(got) => (got, false),
                    Err(TryRecvError::Empty) => (rx.recv().map_err(|_| closed())?, true),
                    Err(TryRecvError::Disconnected) => return Err(closed()),
                };
                Ok((got?, waited))
            }
            Spares::Inline(inline) => {
                let waited = inline.next.is_none();
                inline.refill()?;
                let spare = inline
                    .next
                    .take()
                    .ok_or_else(|| StorageError::Closed("no preallocated segment".into()))?;
                Ok((spare, waited))
            }
        }
    }

    /// Inline mode: prepares the next spare if none is ready. Does nothing
    /// in the other modes (the thread refills on its own).
    pub(crate) fn refill(&mut self) -> Result<(), StorageError> {
        match self {
            Spares::Inline(inline) => inline.refill(),
            Spares::Off | Spares::Thread { .. } => Ok(()),
        }
    }
}

impl InlineSpares {
    fn refill(&mut self) -> Result<(), StorageError> {
        if self.next.is_none() {
            self.next = prepare(&self.fs, &self.dir, self.made, self.len, None)?;
            self.made += 1;
        }
        Ok(())
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        if let Spares::Thread {
            ready,
            stop,
            handle,
        } = self
        {
            stop.store(true, Ordering::Relaxed);
            // Unblocks a thread waiting to hand over a spare.
            drop(ready.take());
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}
