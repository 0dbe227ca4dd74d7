//! The file operations the log and the checkpoint store use, behind a trait
//! so tests can run the real code over a simulated disk that loses unsynced
//! data on a "crash" ([`crate::sim_fs::SimFs`]).
//!
//! The set is deliberately small: sequential writes from a position (the end
//! of the file, or a chosen offset of a preallocated one), zero-filling a
//! file to a length, `fdatasync`, whole-file and positional reads, truncate,
//! rename, remove and directory fsync. Every durability argument in this
//! crate is stated in terms of these calls.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file opened for writing at a position that each write advances.
pub trait WritableFile: Send {
    /// Writes all of `buf` at the handle's position (the end of the file
    /// for [`FileSystem::create`] and [`FileSystem::open_append`], the
    /// offset given to [`FileSystem::open_write_at`]) and moves the
    /// position past it. Bytes before the end of the file are overwritten
    /// in place; the file grows only if the write passes its end.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Extends the file to `len` bytes of zeros whose blocks are allocated
    /// and written (not left as unwritten extents, whose first write would
    /// still change metadata), without moving the write position. Does
    /// nothing if the file is already that long. Durable after
    /// `sync_data`; after that, writes inside the file and their
    /// `fdatasync` change no metadata.
    fn zero_fill_to(&mut self, len: u64) -> io::Result<()>;
    /// Makes every byte written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Starts writing back to the device the bytes written since the last
    /// call, and waits for the writeback the previous call started. Only a
    /// hint about *when* to write: nothing is durable before `sync_data`.
    ///
    /// Why: a checkpoint is hundreds of MB written at once; left dirty in
    /// the page cache until one `fdatasync` at the end, the device then
    /// flushes all of it in one go, and the log's small `fdatasync`s queue
    /// behind it (a 300 MB file stalled a 4 KiB append's sync for 190 ms
    /// on this machine's disk, 50–67 ms with write-behind every 8 MiB).
    /// Calling this every few MB keeps at most two steps dirty. The
    /// default does nothing (the simulated disk has no page cache).
    fn write_behind(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file opened for positional reads.
pub trait ReadableFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The file's length.
    fn file_len(&self) -> io::Result<u64>;
}

/// The file-system operations used by this crate.
pub trait FileSystem: Send + Sync + 'static {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates (or empties) `path` for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing `path` for appending (writing from its end).
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing `path` for writing from `offset` on, in place
    /// (a preallocated file is written inside its length).
    fn open_write_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing `path` for positional reads.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>>;
    /// Reads all of `path`.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Cuts `path` to `len` bytes and makes the new length durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`. Durable after `sync_dir`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes `path`. Durable after `sync_dir`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A shared file system handle.
pub type SharedFs = Arc<dyn FileSystem>;

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsFs;

impl OsFs {
    /// A shared handle to the real file system.
    pub fn shared() -> SharedFs {
        Arc::new(OsFs)
    }
}

struct OsWritable {
    file: File,
    /// Where the next write goes (`pwrite`): the file is never opened with
    /// `O_APPEND`, under which Linux ignores the offset of `pwrite`.
    written: u64,
    /// Writeback was started up to here by `write_behind`.
    started: u64,
    /// Writeback is known finished up to here.
    waited: u64,
}

impl OsWritable {
    fn at(file: File, offset: u64) -> OsWritable {
        OsWritable {
            file,
            written: offset,
            started: offset,
            waited: offset,
        }
    }
}

/// Bytes of zeros per write while zero-filling, and how often writeback is
/// started meanwhile (so a large fill does not reach the device as one
/// burst that the log's own small syncs queue behind).
const ZERO_CHUNK: usize = 1 << 20;
const ZERO_WRITE_BEHIND: u64 = 8 << 20;

impl WritableFile for OsWritable {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(buf, self.written)?;
        self.written += buf.len() as u64;
        Ok(())
    }
    fn zero_fill_to(&mut self, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let from = self.file.metadata()?.len();
        if from >= len {
            return Ok(());
        }
        // Reserve the blocks first: one contiguous allocation, and a full
        // disk fails here rather than halfway through the zeros.
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (Ok(offset), Ok(size)) = (i64::try_from(from), i64::try_from(len - from)) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "length too large",
                ));
            };
            // SAFETY: a plain syscall on a file descriptor this handle
            // owns; no memory is passed.
            let r = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, offset, size) };
            if r != 0 {
                let e = io::Error::last_os_error();
                // A file system without fallocate still gets its zeros.
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
            }
        }
        // fallocate leaves unwritten extents, whose first write converts
        // them (a metadata change that fdatasync must journal): write the
        // zeros for real.
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = from;
        let mut behind_from = from;
        while at < len {
            let n = (len - at).min(ZERO_CHUNK as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
            if at - behind_from >= ZERO_WRITE_BEHIND {
                start_writeback(&self.file, behind_from, at)?;
                behind_from = at;
            }
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.started = self.written;
        self.waited = self.written;
        Ok(())
    }
    fn write_behind(&mut self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = self.file.as_raw_fd();
            let range = |from: u64, to: u64| {
                (
                    i64::try_from(from).unwrap_or(i64::MAX),
                    i64::try_from(to - from).unwrap_or(i64::MAX),
                )
            };
            if self.started > self.waited {
                let (offset, len) = range(self.waited, self.started);
                // SAFETY: a plain syscall on a file descriptor this handle
                // owns; no memory is passed.
                let r = unsafe {
                    libc::sync_file_range(
                        fd,
                        offset,
                        len,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    )
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                self.waited = self.started;
            }
            if self.written > self.started {
                let (offset, len) = range(self.started, self.written);
                // SAFETY: as above.
                let r =
                    unsafe { libc::sync_file_range(fd, offset, len, libc::SYNC_FILE_RANGE_WRITE) };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                self.started = self.written;
            }
        }
        Ok(())
    }
}

/// Starts writeback of `from..to` of `file` and waits for what was already
/// under writeback in that range (a hint; nothing is durable before a sync).
fn start_writeback(file: &File, from: u64, to: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
            return Ok(());
        };
        // SAFETY: a plain syscall on a file descriptor the caller owns; no
        // memory is passed.
        let r = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
    Ok(())
}

struct OsReadable(File);

impl ReadableFile for OsReadable {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.read_exact_at(buf, offset)
    }
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl FileSystem for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(OsWritable::at(f, 0)))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new().write(true).open(path)?;
        let len = f.metadata()?.len();
        Ok(Box::new(OsWritable::at(f, len)))
    }
    fn open_write_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn WritableFile>> {
        let f = OpenOptions::new().write(true).open(path)?;
        Ok(Box::new(OsWritable::at(f, offset)))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        Ok(Box::new(OsReadable(File::open(path)?)))
    }
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// `dir/name`.
pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// `errno` of an error reading or writing the medium (`EIO` on Linux and
/// the BSDs).
pub const EIO: i32 = 5;

/// Whether `e` is a media error (an unreadable sector, `EIO`), as opposed
/// to a missing file, a permission problem or a disk that is down. Recovery
/// treats media errors like corruption: the bytes are damaged, not the
/// request.
pub fn is_media_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(EIO)
}

/// Bytes per read while reading a file whole.
const READ_CHUNK: usize = 1 << 20;
/// Bytes per read while narrowing down an unreadable range.
const FINE_READ: usize = 512;

/// A whole file as [`read_carefully`] could read it.
#[derive(Debug, Default)]
pub struct CarefulRead {
    /// The file from offset 0: all of it, or the part before the first
    /// range that stayed unreadable.
    pub bytes: Vec<u8>,
    /// The file's length.
    pub file_len: u64,
    /// Offset of the first range that failed with a media error twice.
    pub unreadable_at: Option<u64>,
    /// Reads that failed with a media error once and succeeded when retried.
    pub reads_cured: u64,
}

fn read_retrying(
    file: &dyn ReadableFile,
    buf: &mut [u8],
    at: u64,
    cured: &mut u64,
) -> io::Result<()> {
    match file.read_exact_at(buf, at) {
        Err(e) if is_media_error(&e) => {
            // A transient error (a bus or controller fault) may pass on a
            // second try; a latent sector error will not.
            let again = file.read_exact_at(buf, at);
            *cured += u64::from(again.is_ok());
            again
        }
        other => other,
    }
}

/// Reads all of `path`, retrying a read that fails with a media error once
/// and, if it fails again, narrowing the failure down to 512
/// bytes so that everything before it is still returned. Errors other than
/// media errors are returned as they are.
pub fn read_carefully(fs: &SharedFs, path: &Path) -> io::Result<CarefulRead> {
    let file = fs.open_read(path)?;
    let file_len = file.file_len()?;
    let len = usize::try_from(file_len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large to read"))?;
    let mut out = CarefulRead {
        bytes: vec![0u8; len],
        file_len,
        ..CarefulRead::default()
    };
    let mut at = 0usize;
    while at < len {
        let end = (at + READ_CHUNK).min(len);
        match read_retrying(
            &*file,
            &mut out.bytes[at..end],
            at as u64,
            &mut out.reads_cured,
        ) {
            Ok(()) => at = end,
            Err(e) if is_media_error(&e) => {
                let mut fine = at;
                while fine < end {
                    let fine_end = (fine + FINE_READ).min(end);
                    let r = read_retrying(
                        &*file,
                        &mut out.bytes[fine..fine_end],
                        fine as u64,
                        &mut out.reads_cured,
                    );
                    match r {
                        Ok(()) => fine = fine_end,
                        Err(e) if is_media_error(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                if fine < end {
                    out.bytes.truncate(fine);
                    out.unreadable_at = Some(fine as u64);
                    return Ok(out);
                }
                at = end;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
