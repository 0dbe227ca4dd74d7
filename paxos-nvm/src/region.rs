//! Byte-addressable regions the log is written to, and how each one is made
//! durable.
//!
//! A [`PmRegion`] offers four primitives, mirroring persistent-memory
//! programming: `read`, `write` (a store that may sit in a volatile cache),
//! `flush(range)` (start writing that range back) and `fence` (every range
//! flushed before the fence is durable once it returns). The log is written
//! only in terms of these, so the same code runs on
//!
//! - [`RegionKind::PersistentMemory`]: a DAX mapping made with
//!   `MAP_SHARED_VALIDATE | MAP_SYNC`, flushed with `clwb` (or `clflushopt`,
//!   or `clflush`) per cache line and fenced with `sfence`;
//! - [`RegionKind::MsyncFile`]: an ordinary memory-mapped file, flushed with
//!   `msync(MS_SYNC)` of the page range (durable on return, so `fence` has
//!   nothing left to do);
//! - [`RegionKind::EmulatedPersistentMemory`]: an ordinary shared file
//!   mapping (no `MAP_SYNC`: tmpfs and disk file systems refuse it) flushed
//!   exactly like persistent memory, with the cache-line write-back
//!   instruction and `sfence`, and **never msynced**: PMDK's
//!   `PMEM_IS_PMEM_FORCE=1`. Only chosen when the operator asks
//!   ([`FileBackend::EmulatedPm`]). The data is as durable as the memory
//!   behind the mapping: a file on `/dev/shm` survives the process being
//!   killed (`kill -9`: the pages belong to the file, not the process) but
//!   not a power loss or a reboot; on a disk file system the kernel writes
//!   the pages back whenever it likes, with no ordering promise;
//! - [`RegionKind::Volatile`]: anonymous memory. **Not durable**: it exists
//!   for benchmarks and for the crash-state tests (which model durability
//!   themselves, see [`crate::crash_model`]);
//! - [`RegionKind::Simulated`]: [`crate::sim_region::SimRegion`], a
//!   deterministic model of persistent memory with crashes and media faults
//!   for the simulator and the fault tests.
//!
//! [`FileRegion::open`] detects which of the first two a file allows (or
//! maps the third when asked) and logs the choice; [`PmRegion::kind`]
//! exposes it.

use std::fs::File;
use std::path::{Path, PathBuf};

use paxos_contracts::requires;

/// How a region is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Real persistent memory (DAX + `MAP_SYNC`), flushed by cache-line
    /// write-back instructions and an `sfence`.
    PersistentMemory {
        /// The write-back instruction in use.
        flush: CacheFlush,
    },
    /// An ordinary file mapping, made durable by `msync(MS_SYNC)`.
    MsyncFile,
    /// An ordinary shared file mapping flushed like persistent memory
    /// (cache-line write-back + `sfence`) and never msynced: durable only
    /// as far as the memory behind it is (a file on `/dev/shm` survives a
    /// killed process, not a power loss). Chosen only on request.
    EmulatedPersistentMemory {
        /// The write-back instruction in use.
        flush: CacheFlush,
    },
    /// Anonymous memory: NOT durable. For benchmarks and tests only.
    Volatile,
    /// A simulated persistent memory ([`crate::sim_region::SimRegion`]):
    /// durable as its crash model says. For simulation and tests.
    Simulated,
}

impl RegionKind {
    /// Whether data that a `flush` + `fence` covered survives a crash of the
    /// machine. Emulated persistent memory does not promise that: its flush
    /// reaches the page cache (DRAM), and nothing makes it write back.
    pub fn is_durable(self) -> bool {
        !matches!(
            self,
            RegionKind::Volatile | RegionKind::EmulatedPersistentMemory { .. }
        )
    }

    /// Whether data that a `flush` + `fence` covered survives the process
    /// being killed (`kill -9`, a panic, an abort) with the machine up. True
    /// for every file mapping: the pages belong to the file.
    pub fn survives_process_crash(self) -> bool {
        !matches!(self, RegionKind::Volatile)
    }
}

impl std::fmt::Display for RegionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionKind::PersistentMemory { flush } => {
                write!(f, "persistent memory (DAX, MAP_SYNC, {flush:?} + sfence)")
            }
            RegionKind::MsyncFile => write!(f, "memory-mapped file (msync)"),
            RegionKind::EmulatedPersistentMemory { flush } => write!(
                f,
                "EMULATED persistent memory (shared file mapping, {flush:?} + sfence, no msync: durable only as the backing memory)"
            ),
            RegionKind::Volatile => write!(f, "volatile memory (NOT durable)"),
            RegionKind::Simulated => write!(f, "simulated persistent memory"),
        }
    }
}

/// Errors of the region layer: flushing, opening, and reading a word the
/// medium cannot return (simulated regions only: on real persistent memory
/// a poisoned cache line raises a machine check, which Linux delivers as
/// SIGBUS, and the process dies).
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct RegionError {
    /// What was being done, naming the file.
    pub context: String,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

/// A byte-addressable region with persistent-memory flush semantics.
///
/// Offsets are relative to the start of the region. Callers (the log) keep
/// every access inside `0..len()`; an access outside it is a bug in the
/// caller, checked by contract and by slice bounds.
pub trait PmRegion: Send {
    /// The region's size in bytes.
    fn len(&self) -> u64;

    /// Whether the region has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`. Fails only if the
    /// medium cannot return some of them (an unreadable, poisoned word);
    /// `buf` is then unspecified.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RegionError>;

    /// Stores `data` at `offset`. Not durable until a `flush` covering it is
    /// followed by a `fence`.
    fn write(&mut self, offset: u64, data: &[u8]);

    /// Starts writing back `offset..offset + len`.
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), RegionError>;

    /// Returns once every range flushed before it is durable.
    fn fence(&mut self) -> Result<(), RegionError>;

    /// How this region is made durable.
    fn kind(&self) -> RegionKind;
}

impl<R: PmRegion + ?Sized> PmRegion for Box<R> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RegionError> {
        (**self).read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        (**self).write(offset, data)
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), RegionError> {
        (**self).flush(offset, len)
    }
    fn fence(&mut self) -> Result<(), RegionError> {
        (**self).fence()
    }
    fn kind(&self) -> RegionKind {
        (**self).kind()
    }
}

/// Converts a checked region range into slice indices.
pub(crate) fn range(offset: u64, len: usize, region_len: usize) -> std::ops::Range<usize> {
    requires!(
        offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= region_len as u64),
        "access {offset}+{len} outside region of {region_len} bytes"
    );
    let start = offset as usize;
    start..start + len
}

// ---------------------------------------------------------------------------
// Volatile

/// Anonymous (heap) memory. **NOT durable**: flush and fence do nothing.
///
/// Used by benchmarks, by tests, and as the image store of the crash
/// recorder.
#[derive(Clone)]
pub struct VolatileRegion {
    bytes: Box<[u8]>,
    /// When set, `flush` and `fence` run the PM instructions on this DRAM
    /// (still NOT durable): benchmarks use it to measure the instruction
    /// cost of the persistent-memory path on a machine without PM.
    cache_flush: Option<(CacheFlush, usize)>,
}

impl VolatileRegion {
    /// A zeroed region of `len` bytes.
    pub fn new(len: usize) -> Self {
        VolatileRegion {
            bytes: vec![0u8; len].into_boxed_slice(),
            cache_flush: None,
        }
    }

    /// A zeroed region of `len` bytes, or `None` if it cannot be allocated.
    pub fn try_new(len: usize) -> Option<Self> {
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).ok()?;
        bytes.resize(len, 0);
        Some(VolatileRegion {
            bytes: bytes.into_boxed_slice(),
            cache_flush: None,
        })
    }

    /// A region holding exactly `bytes` (a crash image, say).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        VolatileRegion {
            bytes: bytes.into_boxed_slice(),
            cache_flush: None,
        }
    }

    /// A zeroed region whose `flush`/`fence` execute the CPU's cache-line
    /// write-back instruction and `sfence` on ordinary memory. NOT durable;
    /// for measuring the PM code path's CPU cost. `None` if the CPU has no
    /// such instruction.
    pub fn with_cache_flush(len: usize) -> Option<Self> {
        let flush = CacheFlush::detect()?;
        Some(VolatileRegion {
            bytes: vec![0u8; len].into_boxed_slice(),
            cache_flush: Some(flush),
        })
    }

    /// The region's content.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The region's content, for corruption tests.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl PmRegion for VolatileRegion {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RegionError> {
        let r = range(offset, buf.len(), self.bytes.len());
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let r = range(offset, data.len(), self.bytes.len());
        self.bytes[r].copy_from_slice(data);
    }
    fn flush(&mut self, offset: u64, len: u64) -> Result<(), RegionError> {
        #[cfg(target_arch = "x86_64")]
        if let Some((flush, line)) = self.cache_flush {
            let r = range(offset, len as usize, self.bytes.len());
            // SAFETY: `r` lies inside `self.bytes` (checked by `range`), which
            // is live for the call; `flush` came from `CacheFlush::detect`.
            unsafe { flush.write_back(self.bytes[r].as_ptr(), len as usize, line) };
        }
        let _ = (offset, len);
        Ok(())
    }
    fn fence(&mut self) -> Result<(), RegionError> {
        #[cfg(target_arch = "x86_64")]
        if self.cache_flush.is_some() {
            store_fence();
        }
        Ok(())
    }
    fn kind(&self) -> RegionKind {
        RegionKind::Volatile
    }
}

// ---------------------------------------------------------------------------
// Cache-line flush instructions

/// The cache-line write-back instruction used on persistent memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheFlush {
    /// `clwb`: writes the line back and may keep it cached (best).
    Clwb,
    /// `clflushopt`: writes back and evicts, weakly ordered.
    Clflushopt,
    /// `clflush`: writes back and evicts, strongly ordered (slowest).
    Clflush,
}

impl CacheFlush {
    /// The best write-back instruction this CPU has, with its cache-line
    /// size, or `None` (not x86-64, or no `clflush`).
    pub fn detect() -> Option<(CacheFlush, usize)> {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{__cpuid, __cpuid_count};
            // SAFETY: `cpuid` exists on every x86-64 CPU and only reads
            // identification registers. (The intrinsics are safe functions
            // on newer toolchains; the block keeps the MSRV compiling.)
            #[allow(unused_unsafe)]
            let (max_leaf, leaf1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
            let has_clflush = leaf1.edx & (1 << 19) != 0;
            // CPUID.1:EBX[15:8] is the clflush line size in 8-byte units.
            let line = (((leaf1.ebx >> 8) & 0xff) as usize * 8).max(32);
            let leaf7_ebx = if max_leaf >= 7 {
                // SAFETY: as above; leaf 7 exists because max_leaf >= 7.
                #[allow(unused_unsafe)]
                let l7 = unsafe { __cpuid_count(7, 0) };
                l7.ebx
            } else {
                0
            };
            if leaf7_ebx & (1 << 24) != 0 {
                Some((CacheFlush::Clwb, line))
            } else if leaf7_ebx & (1 << 23) != 0 {
                Some((CacheFlush::Clflushopt, line))
            } else if has_clflush {
                Some((CacheFlush::Clflush, line))
            } else {
                None
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// Writes back every cache line overlapping `addr..addr + len`.
    ///
    /// # Safety
    ///
    /// `addr..addr + len` must lie in memory mapped into this process for
    /// the duration of the call, and the CPU must support `self` (as
    /// returned by [`CacheFlush::detect`]).
    #[cfg(target_arch = "x86_64")]
    unsafe fn write_back(self, addr: *const u8, len: usize, line: usize) {
        if len == 0 {
            return;
        }
        let end = addr as usize + len;
        let mut p = addr as usize & !(line - 1);
        while p < end {
            // SAFETY: `p` points into a cache line overlapping the mapped
            // range (caller's contract); these instructions only write the
            // line back, they change no memory contents, and the CPU
            // supports the chosen one (caller's contract).
            unsafe {
                match self {
                    CacheFlush::Clwb => {
                        core::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags))
                    }
                    CacheFlush::Clflushopt => core::arch::asm!(
                        "clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags)
                    ),
                    CacheFlush::Clflush => core::arch::asm!(
                        "clflush [{0}]", in(reg) p, options(nostack, preserves_flags)
                    ),
                }
            }
            p += line;
        }
    }
}

/// Orders every earlier write-back before anything after it.
#[cfg(target_arch = "x86_64")]
fn store_fence() {
    // SAFETY: `sfence` is part of SSE, which every x86-64 CPU has; it only
    // orders stores.
    unsafe { core::arch::x86_64::_mm_sfence() }
}

// ---------------------------------------------------------------------------
// File mappings

/// Which file backends [`FileRegion::open`] may choose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FileBackend {
    /// Persistent memory when the file system allows a `MAP_SYNC` mapping
    /// and the CPU has a flush instruction; otherwise msync.
    #[default]
    Auto,
    /// Always msync, even on DAX (for comparisons).
    MsyncOnly,
    /// Persistent memory when the file system allows `MAP_SYNC` (as
    /// `Auto`); otherwise *emulated* persistent memory: a plain shared
    /// mapping flushed with the cache-line write-back instruction and
    /// `sfence`, never msynced (see
    /// [`RegionKind::EmulatedPersistentMemory`]). Opening fails if the CPU
    /// has no flush instruction.
    EmulatedPm,
}

/// A `MAP_SYNC` mapping made through libc (memmap2 cannot pass `MAP_SYNC`).
struct SyncMapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    flush: CacheFlush,
    line: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access is
// mediated by `&self`/`&mut self` like a `Box<[u8]>`.
unsafe impl Send for SyncMapping {}

impl Drop for SyncMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful `mmap` and are unmapped
        // exactly once, here; no slice into the mapping outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

enum Mapping {
    Sync(SyncMapping),
    Msync(memmap2::MmapMut),
    /// A plain shared mapping flushed like persistent memory.
    Emulated {
        map: memmap2::MmapMut,
        flush: CacheFlush,
        line: usize,
    },
}

/// A file mapped into memory: real persistent memory or msync-backed.
///
/// The file is locked (`flock(LOCK_EX)`) while open so that no other
/// process maps it for writing: a concurrent writer would change memory
/// this process reads through slices.
pub struct FileRegion {
    mapping: Mapping,
    /// Msync backend: the union of ranges flushed since the last fence.
    /// One `msync(MS_SYNC)` at the fence covers them all (on Linux every
    /// msync is an fsync of the file, so one per fence halves the cost of a
    /// commit's data + metadata flushes).
    msync_pending: Option<std::ops::Range<usize>>,
    path: PathBuf,
    // Keeps the descriptor (and its lock) alive as long as the mapping.
    _file: File,
}

impl FileRegion {
    /// Maps the whole of `file` (already sized) read-write, choosing the
    /// backend as `backend` allows, and logs the choice.
    pub fn open(file: File, path: &Path, backend: FileBackend) -> Result<FileRegion, RegionError> {
        let err = |what: &str, source| RegionError {
            context: format!("{what} {}", path.display()),
            source,
        };
        lock_exclusive(&file).map_err(|e| err("locking", e))?;
        let len = file
            .metadata()
            .map_err(|e| err("reading metadata of", e))?
            .len();
        let len_usize = usize::try_from(len).map_err(|_| {
            err(
                "mapping",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "file too large"),
            )
        })?;
        if len_usize == 0 {
            return Err(err(
                "mapping",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty file"),
            ));
        }
        let mapping = match backend {
            FileBackend::Auto => match try_map_sync(&file, len_usize) {
                Some(sync) => Mapping::Sync(sync),
                None => Mapping::Msync(map_shared(&file).map_err(|e| err("mapping", e))?),
            },
            FileBackend::MsyncOnly => {
                Mapping::Msync(map_shared(&file).map_err(|e| err("mapping", e))?)
            }
            FileBackend::EmulatedPm => match try_map_sync(&file, len_usize) {
                Some(sync) => Mapping::Sync(sync),
                None => map_emulated(&file, CacheFlush::detect()).map_err(|e| err("mapping", e))?,
            },
        };
        let region = FileRegion {
            mapping,
            msync_pending: None,
            path: path.to_path_buf(),
            _file: file,
        };
        if let RegionKind::EmulatedPersistentMemory { .. } = region.kind() {
            tracing::warn!(
                path = %path.display(),
                bytes = len,
                backend = %region.kind(),
                "paxos-nvm region is EMULATED persistent memory: flushes reach memory, never a disk. \
                 Durability is only as good as the backing memory: a file on /dev/shm survives \
                 a process crash (kill -9) but NOT a power loss or a reboot; on a disk file \
                 system nothing orders or forces the write-back. Use it knowingly (benchmarks, \
                 or replicas that never all lose power together)"
            );
        } else {
            tracing::info!(path = %path.display(), bytes = len, backend = %region.kind(), "paxos-nvm region mapped");
        }
        Ok(region)
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn bytes(&self) -> &[u8] {
        match &self.mapping {
            // SAFETY: the mapping is live while `self` is, spans `len` bytes,
            // and the file lock keeps other writers away; `&self` excludes
            // writes through this process.
            Mapping::Sync(m) => unsafe { std::slice::from_raw_parts(m.ptr.as_ptr(), m.len) },
            Mapping::Msync(m) | Mapping::Emulated { map: m, .. } => m,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.mapping {
            // SAFETY: as in `bytes`, and `&mut self` makes this the only
            // reference into the mapping.
            Mapping::Sync(m) => unsafe { std::slice::from_raw_parts_mut(m.ptr.as_ptr(), m.len) },
            Mapping::Msync(m) | Mapping::Emulated { map: m, .. } => m,
        }
    }
}

fn lock_exclusive(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(
            e.kind(),
            format!("already in use by another process? {e}"),
        ))
    }
}

fn map_shared(file: &File) -> std::io::Result<memmap2::MmapMut> {
    // SAFETY: the file is locked exclusively (flock) for the life of the
    // mapping, so no cooperating process changes it underneath us; the
    // mapping is dropped before the file.
    unsafe { memmap2::MmapMut::map_mut(file) }
}

/// A plain shared mapping to be flushed with `detected` (the CPU's flush
/// instruction, [`CacheFlush::detect`]); refused when there is none, since
/// then nothing could write a line back and the "flush" would be a lie.
fn map_emulated(file: &File, detected: Option<(CacheFlush, usize)>) -> std::io::Result<Mapping> {
    let Some((flush, line)) = detected else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "emulated persistent memory needs a cache-line flush instruction \
             (clwb, clflushopt or clflush) and this CPU has none; use the msync backend",
        ));
    };
    Ok(Mapping::Emulated {
        map: map_shared(file)?,
        flush,
        line,
    })
}

/// Tries a `MAP_SHARED_VALIDATE | MAP_SYNC` mapping, which the kernel grants
/// only on a DAX file system: then stores reach persistent memory once the
/// cache lines are written back, with no page-cache or msync involved.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn try_map_sync(file: &File, len: usize) -> Option<SyncMapping> {
    use std::os::fd::AsRawFd;
    let (flush, line) = CacheFlush::detect()?;
    // SAFETY: a fresh mapping at a kernel-chosen address; it aliases no Rust
    // object. The result is checked before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "MAP_SYNC mapping refused (not DAX); using msync");
        return None;
    }
    let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())?;
    Some(SyncMapping {
        ptr,
        len,
        flush,
        line,
    })
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn try_map_sync(_file: &File, _len: usize) -> Option<SyncMapping> {
    None
}

impl PmRegion for FileRegion {
    fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RegionError> {
        let bytes = self.bytes();
        let r = range(offset, buf.len(), bytes.len());
        buf.copy_from_slice(&bytes[r]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let bytes = self.bytes_mut();
        let r = range(offset, data.len(), bytes.len());
        bytes[r].copy_from_slice(data);
    }

    fn flush(&mut self, offset: u64, len: u64) -> Result<(), RegionError> {
        let total = self.bytes().len();
        let r = range(offset, len as usize, total);
        match &mut self.mapping {
            Mapping::Sync(m) => {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `r` lies inside the live mapping (checked by
                // `range`), and `m.flush` came from `CacheFlush::detect`.
                unsafe {
                    m.flush
                        .write_back(m.ptr.as_ptr().add(r.start), r.len(), m.line)
                };
                let _ = (m, r);
                Ok(())
            }
            Mapping::Emulated { map, flush, line } => {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `r` lies inside the live mapping (checked by
                // `range`), and `flush` came from `CacheFlush::detect`
                // (`map_emulated` refuses to map without one).
                unsafe {
                    flush.write_back(map.as_ptr().add(r.start), r.len(), *line)
                };
                let _ = (map, flush, line, r);
                Ok(())
            }
            Mapping::Msync(_) => {
                if !r.is_empty() {
                    self.msync_pending = Some(match self.msync_pending.take() {
                        Some(p) => p.start.min(r.start)..p.end.max(r.end),
                        None => r,
                    });
                }
                Ok(())
            }
        }
    }

    fn fence(&mut self) -> Result<(), RegionError> {
        match &self.mapping {
            Mapping::Sync(_) | Mapping::Emulated { .. } => {
                #[cfg(target_arch = "x86_64")]
                store_fence();
                Ok(())
            }
            // msync(MS_SYNC) returns only once the range is on disk.
            Mapping::Msync(m) => match self.msync_pending.take() {
                Some(r) => m
                    .flush_range(r.start, r.len())
                    .map_err(|source| RegionError {
                        context: format!("msync of {}", self.path.display()),
                        source,
                    }),
                None => Ok(()),
            },
        }
    }

    fn kind(&self) -> RegionKind {
        match &self.mapping {
            Mapping::Sync(m) => RegionKind::PersistentMemory { flush: m.flush },
            Mapping::Msync(_) => RegionKind::MsyncFile,
            Mapping::Emulated { flush, .. } => {
                RegionKind::EmulatedPersistentMemory { flush: *flush }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_region_reads_back_writes_and_says_not_durable() {
        let mut r = VolatileRegion::new(64);
        r.write(3, b"hello");
        let mut buf = [0u8; 5];
        r.read(3, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(!r.kind().is_durable());
        assert!(r.flush(0, 64).is_ok() && r.fence().is_ok());
    }

    #[test]
    fn file_region_on_ordinary_fs_falls_back_to_msync_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("region");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(8192).unwrap();
        let mut r = FileRegion::open(file, &path, FileBackend::Auto).unwrap();
        // This machine has no DAX file system, so MAP_SYNC is refused.
        assert_eq!(r.kind(), RegionKind::MsyncFile);
        assert!(r.kind().is_durable());
        r.write(4090, b"across-page");
        r.flush(4090, 11).unwrap();
        r.fence().unwrap();
        drop(r);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[4090..4101], b"across-page");
    }

    fn sized_file(path: &Path, len: u64) -> File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.set_len(len).unwrap();
        file
    }

    #[test]
    fn emulated_pm_flushes_a_plain_shared_mapping_with_cache_line_instructions() {
        let Some((flush, _)) = CacheFlush::detect() else {
            return; // Refusal is checked below.
        };
        let dir = crate::storage::tests::shm_tempdir();
        let path = dir.path().join("region");
        let mut r =
            FileRegion::open(sized_file(&path, 8192), &path, FileBackend::EmulatedPm).unwrap();
        // Not DAX here (tmpfs or a disk file system refuse MAP_SYNC): the
        // emulated backend, which says it is not machine-crash durable.
        assert_eq!(r.kind(), RegionKind::EmulatedPersistentMemory { flush });
        assert!(!r.kind().is_durable());
        assert!(r.kind().survives_process_crash());
        assert!(r.kind().to_string().contains("EMULATED"));
        r.write(4090, b"across-page");
        r.flush(4090, 11).unwrap();
        r.fence().unwrap();
        // The stores are in the file's pages: another reader sees them
        // while the mapping is still live, with no msync.
        let seen = std::fs::read(&path).unwrap();
        assert_eq!(&seen[4090..4101], b"across-page");
        drop(r);
        let on_file = std::fs::read(&path).unwrap();
        assert_eq!(&on_file[4090..4101], b"across-page");
    }

    #[test]
    fn emulated_pm_is_refused_without_a_flush_instruction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("region");
        let file = sized_file(&path, 4096);
        let e = map_emulated(&file, None).err().expect("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("flush instruction"), "{e}");
    }

    #[test]
    fn auto_and_msync_never_pick_emulated_pm() {
        let dir = crate::storage::tests::shm_tempdir();
        let path = dir.path().join("region");
        for backend in [FileBackend::Auto, FileBackend::MsyncOnly] {
            let r = FileRegion::open(sized_file(&path, 4096), &path, backend).unwrap();
            assert_eq!(r.kind(), RegionKind::MsyncFile, "{backend:?}");
        }
    }

    #[test]
    fn a_file_cannot_be_mapped_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("region");
        let open = || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            f.set_len(4096).unwrap();
            f
        };
        let _first = FileRegion::open(open(), &path, FileBackend::Auto).unwrap();
        let second = FileRegion::open(open(), &path, FileBackend::Auto);
        assert!(second.is_err(), "second mapping of a locked file must fail");
    }

    #[test]
    fn cache_flush_instructions_run_on_ordinary_memory() {
        // On DRAM this proves nothing about durability, only that the
        // detected instruction executes without faulting.
        #[cfg(target_arch = "x86_64")]
        if let Some((flush, line)) = CacheFlush::detect() {
            assert!(line.is_power_of_two());
            let buf = vec![7u8; 1000];
            // SAFETY: `buf` is live, mapped memory of 1000 bytes.
            unsafe { flush.write_back(buf.as_ptr(), buf.len(), line) };
            store_fence();
            assert!(buf.iter().all(|b| *b == 7));
        }
    }
}
