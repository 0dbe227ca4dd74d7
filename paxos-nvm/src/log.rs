//! The crash-consistent circular log over a [`PmRegion`] (PoWER design).
//!
//! See the crate documentation for the layout, the crash model and why
//! recovery always finds the last commit.

use paxos_contracts::{ensures, invariant, requires, snapshot};

use crate::layout::{
    self, DamageRecord, DecodeError, GlobalMetadata, LogMetadata, CDB_OFFSET, DAMAGE_LEN,
    DAMAGE_OFFSET, GLOBAL_LEN, GLOBAL_OFFSET, LOG_AREA_OFFSET, META_LEN, META_OFFSETS, VERSION,
};
use crate::region::{PmRegion, RegionError};

/// Errors of the log layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The append does not fit between the tail and the committed head.
    #[error("out of space: {needed} bytes needed, {available} free")]
    OutOfSpace {
        /// Bytes the append needs.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// A read or new head before the head.
    #[error("position {pos} is before the head {head}")]
    ReadBeforeHead {
        /// The requested position.
        pos: u64,
        /// The committed head.
        head: u64,
    },
    /// A read or new head past the committed tail.
    #[error("range ending at {end} is past the committed tail {tail}")]
    ReadPastTail {
        /// End of the requested range.
        end: u64,
        /// The committed tail.
        tail: u64,
    },
    /// Metadata failed its CRC check.
    #[error("CRC mismatch in {what}: stored {stored:#018x}, computed {computed:#018x}")]
    CrcMismatch {
        /// Which metadata.
        what: &'static str,
        /// CRC in the region.
        stored: u64,
        /// CRC of what was read.
        computed: u64,
    },
    /// The region is not a paxos-nvm log (bad magic).
    #[error("not a paxos-nvm log: magic {0:#018x}")]
    NotALog(u64),
    /// The region holds another version's layout or another log's id, or
    /// its (intact) global metadata describes a region of another size: a
    /// wrong file or configuration, not damage.
    #[error("id or version mismatch: {0}")]
    IdOrVersionMismatch(String),
    /// The corruption-detecting boolean holds neither valid value.
    #[error("corrupt CDB word {0:#018x}")]
    CorruptCdb(u64),
    /// Metadata passed its CRC but is inconsistent with the region.
    #[error("inconsistent metadata: {0}")]
    InconsistentMetadata(String),
    /// The region is too small to hold a log.
    #[error("region of {0} bytes is too small for a log")]
    RegionTooSmall(u64),
    /// A virtual position would pass 2^64.
    #[error("virtual position overflow")]
    PositionOverflow,
    /// Flushing the region failed; the log's durable state is unknown and
    /// it must be reopened.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// An earlier flush failed; the log refuses further writes.
    #[error("log failed earlier and accepts no writes: {0}")]
    Failed(String),
    /// The region could not return bytes at `offset` (an unreadable word).
    #[error("unreadable at region offset {offset}: {source}")]
    Unreadable {
        /// Region offset of the read.
        offset: u64,
        /// The region's error.
        #[source]
        source: RegionError,
    },
}

impl LogError {
    /// Whether this error means the stored bytes are damaged (a checksum,
    /// an impossible value, an unreadable word), as opposed to a region
    /// that is not this log, a misuse, or a failed flush.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            LogError::CrcMismatch { .. }
                | LogError::NotALog(_)
                | LogError::CorruptCdb(_)
                | LogError::InconsistentMetadata(_)
                | LogError::Unreadable { .. }
        )
    }
}

/// Damaged metadata that [`PmLog::recover`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataDamage {
    /// Region offset of the damaged metadata.
    pub offset: u64,
    /// What was wrong, and what recovery did about it.
    pub reason: String,
    /// Whether committed appends may be lost with it: `false` when the
    /// metadata recovery used is provably the newest.
    pub may_have_lost_acknowledged: bool,
}

/// What [`PmLog::recover`] made of a region.
pub enum Recovery<R: PmRegion> {
    /// A log, started from its metadata or, if that was damaged, from the
    /// intact twin copy.
    Started {
        /// The log.
        log: PmLog<R>,
        /// The metadata damage recovered around, if any.
        damage: Option<MetadataDamage>,
    },
    /// The global metadata, or both metadata copies, are damaged: nothing in
    /// the region can be located. The region is handed back, to be set
    /// aside and formatted anew.
    Unusable {
        /// The region.
        region: R,
        /// What was damaged.
        damage: MetadataDamage,
    },
}

/// What a region's damage record says ([`PmLog::damage_mark`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DamageMark {
    /// No damage pending.
    None,
    /// Damage pending, as recorded.
    Recorded(DamageRecord),
    /// The record itself is damaged or unreadable: damage is pending, its
    /// details are lost.
    Unknown(String),
}

/// Reads the damage record of `region` (which need not hold a usable log).
pub fn read_damage_mark<R: PmRegion + ?Sized>(region: &R) -> DamageMark {
    let mut b = [0u8; DAMAGE_LEN];
    let read = |b: &mut [u8; DAMAGE_LEN]| {
        region
            .read(DAMAGE_OFFSET, b)
            .map_err(|e| e.to_string())
            .and_then(|()| DamageRecord::decode(b).map_err(|e| format!("{e:?}")))
    };
    // Once more on failure: a transient fault passes.
    match read(&mut b).or_else(|_| read(&mut b)) {
        Ok(None) => DamageMark::None,
        Ok(Some(r)) => DamageMark::Recorded(r),
        Err(why) => DamageMark::Unknown(why),
    }
}

/// Stores `record` (or zeros, for none) as `region`'s damage record and
/// makes it durable.
pub fn write_damage_mark<R: PmRegion + ?Sized>(
    region: &mut R,
    record: Option<&DamageRecord>,
) -> Result<(), RegionError> {
    let bytes = record.map_or([0u8; DAMAGE_LEN], DamageRecord::encode);
    region.write(DAMAGE_OFFSET, &bytes);
    region.flush(DAMAGE_OFFSET, DAMAGE_LEN as u64)?;
    region.fence()
}

/// Reads `buf.len()` bytes at `offset`, as a log error.
fn read_region<R: PmRegion>(region: &R, offset: u64, buf: &mut [u8]) -> Result<(), LogError> {
    region
        .read(offset, buf)
        .map_err(|source| LogError::Unreadable { offset, source })
}

/// Runs `read`, and once more if it found damage: a bit flipped on the way
/// (not on the medium) passes the second time.
fn read_twice<T>(read: impl Fn() -> Result<T, LogError>) -> Result<T, LogError> {
    match read() {
        Err(e) if e.is_damage() => read(),
        other => other,
    }
}

fn read_global<R: PmRegion>(region: &R) -> Result<GlobalMetadata, LogError> {
    let mut g = [0u8; GLOBAL_LEN];
    read_region(region, GLOBAL_OFFSET, &mut g)?;
    GlobalMetadata::decode(&g).map_err(|e| decode_err("global metadata", e))
}

/// Checks what a valid global metadata says against the region and the
/// expected id. A mismatch is a wrong file or configuration, not damage.
fn check_global(global: &GlobalMetadata, len: u64, expected: Option<u128>) -> Result<(), LogError> {
    if global.version != VERSION {
        return Err(LogError::IdOrVersionMismatch(format!(
            "layout version {} (this code reads {VERSION})",
            global.version
        )));
    }
    if let Some(id) = expected {
        if global.log_id != id {
            return Err(LogError::IdOrVersionMismatch(format!(
                "log id {:#x}, expected {id:#x}",
                global.log_id
            )));
        }
    }
    if global.region_len != len
        || global.log_area_offset != LOG_AREA_OFFSET
        || global.capacity != len - LOG_AREA_OFFSET
    {
        return Err(LogError::IdOrVersionMismatch(format!(
            "global metadata describes region {} / area {} / capacity {}, region is {len} bytes",
            global.region_len, global.log_area_offset, global.capacity
        )));
    }
    Ok(())
}

fn read_cdb<R: PmRegion>(region: &R) -> Result<usize, LogError> {
    let mut cdb = [0u8; 8];
    read_region(region, CDB_OFFSET, &mut cdb)?;
    layout::decode_cdb(u64::from_le_bytes(cdb)).map_err(|e| decode_err("CDB", e))
}

fn read_copy<R: PmRegion>(
    region: &R,
    index: usize,
    capacity: u64,
) -> Result<LogMetadata, LogError> {
    let mut m = [0u8; META_LEN];
    read_region(region, META_OFFSETS[index], &mut m)?;
    let what = if index == 0 {
        "log metadata copy 0"
    } else {
        "log metadata copy 1"
    };
    LogMetadata::decode(&m, capacity).map_err(|e| decode_err(what, e))
}

fn decode_err(what: &'static str, e: DecodeError) -> LogError {
    match e {
        DecodeError::BadMagic(m) => LogError::NotALog(m),
        DecodeError::Crc { stored, computed } => LogError::CrcMismatch {
            what,
            stored,
            computed,
        },
        DecodeError::BadCdb(w) => LogError::CorruptCdb(w),
        DecodeError::Inconsistent(r) => LogError::InconsistentMetadata(format!("{what}: {r}")),
    }
}

/// The head, committed tail and capacity of a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadTailCapacity {
    /// Virtual position of the first live byte.
    pub head: u64,
    /// Virtual position one past the last committed byte.
    pub tail: u64,
    /// Bytes the circular log area holds.
    pub capacity: u64,
}

/// A crash-consistent circular log over a persistent-memory region.
///
/// Appends are tentative until [`PmLog::commit`]; a crash before the commit's
/// CDB flip persists loses them, a crash after keeps them all.
pub struct PmLog<R: PmRegion> {
    region: R,
    global: GlobalMetadata,
    /// Index (0 or 1) of the metadata copy the CDB selects.
    active: usize,
    head: u64,
    committed_tail: u64,
    /// Tail including tentative appends; `>= committed_tail`.
    tentative_tail: u64,
    /// Set when a flush failed: the durable state is unknown.
    failed: Option<String>,
}

impl<R: PmRegion> PmLog<R> {
    /// Formats `region` as an empty log with id `log_id` (head = tail = 0)
    /// and returns it started.
    ///
    /// Not crash-atomic on its own: a crash during setup leaves a region
    /// that [`PmLog::start`] rejects. Callers that need atomic creation set
    /// up a temporary file and rename it (as [`crate::NvmStorage`] does).
    pub fn setup(mut region: R, log_id: u128) -> Result<PmLog<R>, LogError> {
        let len = region.len();
        let global =
            GlobalMetadata::for_region(len, log_id).ok_or(LogError::RegionTooSmall(len))?;
        region.write(GLOBAL_OFFSET, &global.encode());
        region.write(
            META_OFFSETS[0],
            &LogMetadata { head: 0, length: 0 }.encode(),
        );
        // Copy 1 gets a valid empty value too, so no stale bytes linger.
        region.write(
            META_OFFSETS[1],
            &LogMetadata { head: 0, length: 0 }.encode(),
        );
        region.write(CDB_OFFSET, &layout::encode_cdb(0).to_le_bytes());
        region.flush(0, LOG_AREA_OFFSET)?;
        region.fence()?;
        let log = PmLog {
            region,
            global,
            active: 0,
            head: 0,
            committed_tail: 0,
            tentative_tail: 0,
            failed: None,
        };
        log.check_invariants();
        ensures!(log.head_tail_capacity().head == log.head_tail_capacity().tail);
        Ok(log)
    }

    /// Recovers the log from `region`: reads the global metadata, checks
    /// magic, CRC, version, sizes and (if given) the id, then the CDB and the
    /// metadata copy it selects. Reads only; writes nothing. Any damage is
    /// an error (a read that finds damage is tried once more first); see
    /// [`PmLog::recover`] for recovering around it.
    pub fn start(region: R, expected_log_id: Option<u128>) -> Result<PmLog<R>, LogError> {
        let len = region.len();
        if len < LOG_AREA_OFFSET + layout::MIN_CAPACITY {
            return Err(LogError::RegionTooSmall(len));
        }
        let global = read_twice(|| read_global(&region))?;
        check_global(&global, len, expected_log_id)?;
        let active = read_twice(|| read_cdb(&region))?;
        let meta = read_twice(|| read_copy(&region, active, global.capacity))?;
        Ok(PmLog::started(region, global, active, meta))
    }

    /// Recovers the log from `region` like [`PmLog::start`], but around
    /// damaged metadata where that is possible:
    ///
    /// - a damaged CDB: the newer of the two copies that check out (the
    ///   active copy is always the newest committed one, and the other is
    ///   the previous commit or a newer one whose data was made durable
    ///   before the CDB flip that did not happen, so the newer one loses
    ///   nothing acknowledged);
    /// - a damaged active copy: the other copy, an older commit (which may
    ///   lose the appends of the last commit);
    /// - damaged global metadata, or both copies damaged:
    ///   [`Recovery::Unusable`].
    ///
    /// Errors are what is not damage: a region too small, another version,
    /// another log's id. Reads only; writes nothing (the caller repairs,
    /// see [`PmLog::mirror_metadata`]).
    pub fn recover(region: R, expected_log_id: Option<u128>) -> Result<Recovery<R>, LogError> {
        let len = region.len();
        if len < LOG_AREA_OFFSET + layout::MIN_CAPACITY {
            return Err(LogError::RegionTooSmall(len));
        }
        let unusable = |region, offset, reason: String| {
            Ok(Recovery::Unusable {
                region,
                damage: MetadataDamage {
                    offset,
                    reason,
                    may_have_lost_acknowledged: true,
                },
            })
        };
        let global = match read_twice(|| read_global(&region)) {
            Ok(g) => g,
            Err(e) if e.is_damage() => return unusable(region, GLOBAL_OFFSET, e.to_string()),
            Err(e) => return Err(e),
        };
        check_global(&global, len, expected_log_id)?;
        let copy = |i: usize| read_twice(|| read_copy(&region, i, global.capacity));
        let one_copy = |cdb: &LogError, other: &LogError, which: usize| {
            Some(MetadataDamage {
                offset: CDB_OFFSET,
                reason: format!("{cdb}; and {other}; recovered from copy {which}"),
                may_have_lost_acknowledged: true,
            })
        };
        let (active, meta, damage) = match read_twice(|| read_cdb(&region)) {
            Ok(c) => match copy(c) {
                Ok(m) => (c, m, None),
                Err(e) if e.is_damage() => match copy(1 - c) {
                    Ok(m) => (
                        1 - c,
                        m,
                        Some(MetadataDamage {
                            offset: META_OFFSETS[c],
                            reason: format!("{e}; recovered from the older copy {}", 1 - c),
                            may_have_lost_acknowledged: true,
                        }),
                    ),
                    Err(e2) if e2.is_damage() => {
                        return unusable(region, META_OFFSETS[c], format!("{e}; and {e2}"))
                    }
                    Err(e2) => return Err(e2),
                },
                Err(e) => return Err(e),
            },
            Err(e) if e.is_damage() => match (copy(0), copy(1)) {
                (Ok(a), Ok(b)) => {
                    // The newer one: positions only grow.
                    let newer =
                        usize::from((b.head + b.length, b.head) > (a.head + a.length, a.head));
                    let m = if newer == 0 { a } else { b };
                    let why = format!(
                        "{e}; both copies check out, recovered from the newer one, {newer}"
                    );
                    (
                        newer,
                        m,
                        Some(MetadataDamage {
                            offset: CDB_OFFSET,
                            reason: why,
                            may_have_lost_acknowledged: false,
                        }),
                    )
                }
                (Ok(m), Err(other)) => (0, m, one_copy(&e, &other, 0)),
                (Err(other), Ok(m)) => (1, m, one_copy(&e, &other, 1)),
                (Err(a), Err(b)) => {
                    return unusable(region, CDB_OFFSET, format!("{e}; and {a}; and {b}"))
                }
            },
            Err(e) => return Err(e),
        };
        Ok(Recovery::Started {
            log: PmLog::started(region, global, active, meta),
            damage,
        })
    }

    fn started(region: R, global: GlobalMetadata, active: usize, meta: LogMetadata) -> PmLog<R> {
        let tail = meta.head + meta.length;
        tracing::debug!(head = meta.head, tail, active, "paxos-nvm log recovered");
        let log = PmLog {
            region,
            global,
            active,
            head: meta.head,
            committed_tail: tail,
            tentative_tail: tail,
            failed: None,
        };
        log.check_invariants();
        log
    }

    /// Writes the active metadata into the inactive copy too and stores
    /// the CDB word again, each made durable. Run after recovery: from then
    /// on a damaged active copy (or CDB) can be recovered from its twin,
    /// and no copy left over from an earlier run (one written by a commit
    /// whose CDB flip a crash prevented, describing bytes this run may
    /// overwrite) can be fallen back on.
    pub fn mirror_metadata(&mut self) -> Result<(), LogError> {
        self.check_usable()?;
        let meta = LogMetadata {
            head: self.head,
            length: self.committed_tail - self.head,
        };
        let (active, inactive) = (self.active, 1 - self.active);
        let result = (|| {
            self.region.write(META_OFFSETS[inactive], &meta.encode());
            self.region.flush(META_OFFSETS[inactive], META_LEN as u64)?;
            self.region.fence()?;
            self.region
                .write(CDB_OFFSET, &layout::encode_cdb(active).to_le_bytes());
            self.region.flush(CDB_OFFSET, 8)?;
            self.region.fence()
        })();
        result.map_err(|e| {
            self.failed = Some(e.to_string());
            e.into()
        })
    }

    /// Durably cuts the committed log back to end at `pos`, dropping the
    /// bytes after it (salvage: they are damaged). The only operation that
    /// moves the tail backward; the appends after it reuse those positions.
    /// Drops tentative appends.
    pub fn discard_after(&mut self, pos: u64) -> Result<(), LogError> {
        self.check_usable()?;
        if pos < self.head {
            return Err(LogError::ReadBeforeHead {
                pos,
                head: self.head,
            });
        }
        if pos > self.committed_tail {
            return Err(LogError::ReadPastTail {
                end: pos,
                tail: self.committed_tail,
            });
        }
        self.tentative_tail = self.committed_tail;
        if pos < self.committed_tail {
            let new = LogMetadata {
                head: self.head,
                length: pos - self.head,
            };
            self.swap_metadata(new, 0, 0)?;
            self.tentative_tail = pos;
        }
        ensures!(self.committed_tail == pos && self.tentative_tail == pos);
        self.check_invariants();
        Ok(())
    }

    /// The region's damage record.
    pub fn damage_mark(&self) -> DamageMark {
        read_damage_mark(&self.region)
    }

    /// Stores (or, with `None`, clears) the region's damage record durably.
    pub fn set_damage_mark(&mut self, record: Option<&DamageRecord>) -> Result<(), LogError> {
        self.check_usable()?;
        write_damage_mark(&mut self.region, record).map_err(|e| {
            self.failed = Some(e.to_string());
            e.into()
        })
    }

    /// The log's id, as stored in the global metadata.
    pub fn log_id(&self) -> u128 {
        self.global.log_id
    }

    /// The region underneath.
    pub fn region(&self) -> &R {
        &self.region
    }

    /// Gives the region back (for reopening in tests).
    pub fn into_region(self) -> R {
        self.region
    }

    /// Head, committed tail and capacity.
    pub fn head_tail_capacity(&self) -> HeadTailCapacity {
        HeadTailCapacity {
            head: self.head,
            tail: self.committed_tail,
            capacity: self.global.capacity,
        }
    }

    /// Tail including tentative (uncommitted) appends.
    pub fn tentative_tail(&self) -> u64 {
        self.tentative_tail
    }

    /// Bytes a tentative append may still take.
    pub fn free_space(&self) -> u64 {
        self.global.capacity - (self.tentative_tail - self.head)
    }

    fn check_invariants(&self) {
        invariant!(self.head <= self.committed_tail);
        invariant!(self.committed_tail <= self.tentative_tail);
        invariant!(self.tentative_tail - self.head <= self.global.capacity);
        invariant!(self.active < 2);
    }

    fn check_usable(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(reason) => Err(LogError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Region offset of virtual position `pos`, and bytes until the wrap.
    fn physical(&self, pos: u64) -> (u64, u64) {
        let cap = self.global.capacity;
        requires!(
            pos >= self.head && pos - self.head <= cap,
            "position {pos} outside the live window from head {}",
            self.head
        );
        let off = pos % cap;
        (LOG_AREA_OFFSET + off, cap - off)
    }

    /// Writes `bytes` after the tentative tail (in two writes if they wrap)
    /// and returns the virtual position of the first byte. Does not move the
    /// committed tail: the bytes are lost in a crash until [`PmLog::commit`].
    pub fn tentative_append(&mut self, bytes: &[u8]) -> Result<u64, LogError> {
        self.check_usable()?;
        let old_tail = snapshot!(self.tentative_tail);
        let needed = bytes.len() as u64;
        let available = self.free_space();
        if needed > available {
            return Err(LogError::OutOfSpace { needed, available });
        }
        let pos = self.tentative_tail;
        self.tentative_tail
            .checked_add(needed)
            .ok_or(LogError::PositionOverflow)?;
        self.write_at(pos, bytes);
        self.tentative_tail = pos + needed;
        ensures!(self.tentative_tail == old_tail.unwrap() + needed);
        ensures!(
            pos >= self.committed_tail,
            "tentative bytes never overwrite committed ones"
        );
        self.check_invariants();
        Ok(pos)
    }

    fn write_at(&mut self, pos: u64, bytes: &[u8]) {
        let (off, until_wrap) = self.physical(pos);
        let first = (bytes.len() as u64).min(until_wrap) as usize;
        self.region.write(off, &bytes[..first]);
        if first < bytes.len() {
            self.region.write(LOG_AREA_OFFSET, &bytes[first..]);
        }
    }

    /// Flushes the (possibly wrapped) virtual range `from..to` of the log
    /// area, without fencing.
    fn flush_log_range(&mut self, from: u64, to: u64) -> Result<(), RegionError> {
        if from == to {
            return Ok(());
        }
        let (off, until_wrap) = self.physical(from);
        let len = to - from;
        let first = len.min(until_wrap);
        self.region.flush(off, first)?;
        if first < len {
            self.region.flush(LOG_AREA_OFFSET, len - first)?;
        }
        Ok(())
    }

    /// Atomically replaces the committed metadata with `new` (PoWER's
    /// metadata swap), after flushing the data range `flush_from..flush_to`.
    ///
    /// 1. write `new` into the inactive copy; flush it and the data; fence;
    /// 2. write the CDB word selecting that copy (one aligned 8-byte store);
    ///    flush; fence.
    ///
    /// A crash before step 2's store persists leaves the old CDB, which
    /// selects the untouched old copy; after it, the new copy is complete
    /// and durable because step 1 fenced it.
    fn swap_metadata(
        &mut self,
        new: LogMetadata,
        flush_from: u64,
        flush_to: u64,
    ) -> Result<(), LogError> {
        let inactive = 1 - self.active;
        let result = (|| {
            self.flush_log_range(flush_from, flush_to)?;
            self.region.write(META_OFFSETS[inactive], &new.encode());
            self.region.flush(META_OFFSETS[inactive], META_LEN as u64)?;
            self.region.fence()?;
            self.region
                .write(CDB_OFFSET, &layout::encode_cdb(inactive).to_le_bytes());
            self.region.flush(CDB_OFFSET, 8)?;
            self.region.fence()
        })();
        if let Err(e) = result {
            // Whether the CDB flip persisted is unknown: refuse further
            // writes rather than guess. Reopening recovers whichever state
            // is durable.
            self.failed = Some(e.to_string());
            return Err(e.into());
        }
        self.active = inactive;
        self.head = new.head;
        self.committed_tail = new.head + new.length;
        Ok(())
    }

    /// Makes every tentative append durable: flushes the appended bytes,
    /// then swaps in metadata with the new tail. On `Ok` the appends survive
    /// any crash. A commit with nothing tentative does nothing.
    pub fn commit(&mut self) -> Result<(), LogError> {
        self.check_usable()?;
        let old_head = snapshot!(self.head);
        if self.tentative_tail == self.committed_tail {
            return Ok(());
        }
        let new = LogMetadata {
            head: self.head,
            length: self.tentative_tail - self.head,
        };
        self.swap_metadata(new, self.committed_tail, self.tentative_tail)?;
        ensures!(self.committed_tail == self.tentative_tail);
        ensures!(self.head == old_head.unwrap());
        self.check_invariants();
        Ok(())
    }

    /// Drops tentative appends that were not committed.
    pub fn abort_tentative(&mut self) {
        self.tentative_tail = self.committed_tail;
        self.check_invariants();
    }

    /// Durably moves the head to `new_head`, freeing the bytes before it.
    /// Tentative appends stay tentative.
    pub fn advance_head(&mut self, new_head: u64) -> Result<(), LogError> {
        self.check_usable()?;
        let old_tail = snapshot!(self.committed_tail);
        if new_head < self.head {
            return Err(LogError::ReadBeforeHead {
                pos: new_head,
                head: self.head,
            });
        }
        if new_head > self.committed_tail {
            return Err(LogError::ReadPastTail {
                end: new_head,
                tail: self.committed_tail,
            });
        }
        if new_head == self.head {
            return Ok(());
        }
        let new = LogMetadata {
            head: new_head,
            length: self.committed_tail - new_head,
        };
        self.swap_metadata(new, 0, 0)?;
        ensures!(self.head == new_head);
        ensures!(self.committed_tail == old_tail.unwrap());
        self.check_invariants();
        Ok(())
    }

    /// Copies the committed bytes `pos..pos + buf.len()` into `buf`.
    pub fn read_into(&self, pos: u64, buf: &mut [u8]) -> Result<(), LogError> {
        if pos < self.head {
            return Err(LogError::ReadBeforeHead {
                pos,
                head: self.head,
            });
        }
        let end = pos
            .checked_add(buf.len() as u64)
            .ok_or(LogError::PositionOverflow)?;
        if end > self.committed_tail {
            return Err(LogError::ReadPastTail {
                end,
                tail: self.committed_tail,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let (off, until_wrap) = self.physical(pos);
        let first = (buf.len() as u64).min(until_wrap) as usize;
        let (a, b) = buf.split_at_mut(first);
        read_region(&self.region, off, a)?;
        if !b.is_empty() {
            read_region(&self.region, LOG_AREA_OFFSET, b)?;
        }
        Ok(())
    }

    /// The committed bytes `pos..pos + len`.
    pub fn read(&self, pos: u64, len: u64) -> Result<Vec<u8>, LogError> {
        // Bounds first, so a bad `len` from a record header never allocates.
        let end = pos.checked_add(len).ok_or(LogError::PositionOverflow)?;
        if end > self.committed_tail {
            return Err(LogError::ReadPastTail {
                end,
                tail: self.committed_tail,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.read_into(pos, &mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::VolatileRegion;

    fn fresh(cap: u64) -> PmLog<VolatileRegion> {
        PmLog::setup(VolatileRegion::new((LOG_AREA_OFFSET + cap) as usize), 42).unwrap()
    }

    #[test]
    fn tentative_appends_are_invisible_until_commit_and_lost_on_restart() {
        let mut log = fresh(128);
        let pos = log.tentative_append(b"abc").unwrap();
        assert_eq!(pos, 0);
        assert!(matches!(log.read(0, 3), Err(LogError::ReadPastTail { .. })));
        let log = PmLog::start(log.into_region(), Some(42)).unwrap();
        assert_eq!(log.head_tail_capacity().tail, 0);
    }

    #[test]
    fn commit_then_restart_keeps_bytes() {
        let mut log = fresh(128);
        log.tentative_append(b"hello ").unwrap();
        log.tentative_append(b"world").unwrap();
        log.commit().unwrap();
        let log = PmLog::start(log.into_region(), Some(42)).unwrap();
        assert_eq!(log.read(0, 11).unwrap(), b"hello world");
        assert_eq!(
            log.head_tail_capacity(),
            HeadTailCapacity {
                head: 0,
                tail: 11,
                capacity: 128
            }
        );
    }

    #[test]
    fn appends_wrap_around_the_circular_area() {
        let mut log = fresh(64);
        log.tentative_append(&[1u8; 50]).unwrap();
        log.commit().unwrap();
        log.advance_head(40).unwrap();
        let data: Vec<u8> = (0..40).collect();
        let pos = log.tentative_append(&data).unwrap();
        assert_eq!(pos, 50);
        log.commit().unwrap();
        let log = PmLog::start(log.into_region(), None).unwrap();
        assert_eq!(log.read(50, 40).unwrap(), data);
        assert_eq!(log.read(40, 10).unwrap(), vec![1u8; 10]);
    }

    #[test]
    fn space_is_bounded_by_the_committed_head() {
        let mut log = fresh(64);
        log.tentative_append(&[0u8; 60]).unwrap();
        assert!(matches!(
            log.tentative_append(&[0u8; 5]),
            Err(LogError::OutOfSpace {
                needed: 5,
                available: 4
            })
        ));
        log.commit().unwrap();
        log.advance_head(10).unwrap();
        assert_eq!(log.free_space(), 14);
        log.tentative_append(&[0u8; 14]).unwrap();
    }

    #[test]
    fn reads_outside_head_and_tail_fail() {
        let mut log = fresh(64);
        log.tentative_append(&[9u8; 20]).unwrap();
        log.commit().unwrap();
        log.advance_head(5).unwrap();
        assert!(matches!(
            log.read(4, 1),
            Err(LogError::ReadBeforeHead { pos: 4, head: 5 })
        ));
        assert!(matches!(
            log.read(15, 6),
            Err(LogError::ReadPastTail { end: 21, tail: 20 })
        ));
        assert!(matches!(
            log.read(u64::MAX, 2),
            Err(LogError::PositionOverflow)
        ));
        assert!(matches!(
            log.advance_head(3),
            Err(LogError::ReadBeforeHead { .. })
        ));
        assert!(matches!(
            log.advance_head(21),
            Err(LogError::ReadPastTail { .. })
        ));
    }

    #[test]
    fn advance_head_keeps_tentative_appends_tentative() {
        let mut log = fresh(64);
        log.tentative_append(&[1u8; 10]).unwrap();
        log.commit().unwrap();
        log.tentative_append(&[2u8; 10]).unwrap();
        log.advance_head(10).unwrap();
        assert_eq!(log.head_tail_capacity().tail, 10);
        assert_eq!(log.tentative_tail(), 20);
        log.commit().unwrap();
        assert_eq!(log.read(10, 10).unwrap(), vec![2u8; 10]);
    }

    #[test]
    fn start_rejects_wrong_id_version_magic_and_size() {
        let log = fresh(64);
        let region = log.into_region();
        assert!(matches!(
            PmLog::start(region.clone(), Some(7)),
            Err(LogError::IdOrVersionMismatch(_))
        ));
        let mut zeroed = VolatileRegion::new(region.as_bytes().len());
        zeroed.write(0, &[0u8; 8]);
        assert!(matches!(
            PmLog::start(zeroed, None),
            Err(LogError::NotALog(0))
        ));
        let mut v2 = region.clone();
        let mut g = GlobalMetadata::decode(v2.as_bytes()[..64].try_into().unwrap()).unwrap();
        g.version = VERSION + 1;
        v2.write(0, &g.encode());
        assert!(matches!(
            PmLog::start(v2, None),
            Err(LogError::IdOrVersionMismatch(_))
        ));
        let mut longer = region.as_bytes().to_vec();
        longer.extend_from_slice(&[0u8; 64]);
        assert!(matches!(
            PmLog::start(VolatileRegion::from_bytes(longer), None),
            Err(LogError::IdOrVersionMismatch(_))
        ));
        assert!(matches!(
            PmLog::start(VolatileRegion::new(100), None),
            Err(LogError::RegionTooSmall(100))
        ));
    }

    #[test]
    fn corrupt_metadata_is_detected_not_served() {
        let mut log = fresh(64);
        log.tentative_append(b"x").unwrap();
        log.commit().unwrap(); // now copy 1 is active
        let region = log.into_region();

        let mut bad_cdb = region.clone();
        bad_cdb.as_bytes_mut()[CDB_OFFSET as usize] ^= 0x10;
        assert!(matches!(
            PmLog::start(bad_cdb, None),
            Err(LogError::CorruptCdb(_))
        ));

        let mut bad_active = region.clone();
        bad_active.as_bytes_mut()[META_OFFSETS[1] as usize + 16] ^= 1;
        assert!(matches!(
            PmLog::start(bad_active, None),
            Err(LogError::CrcMismatch { .. })
        ));

        let mut bad_inactive = region.clone();
        bad_inactive.as_bytes_mut()[META_OFFSETS[0] as usize + 3] ^= 1;
        let ok = PmLog::start(bad_inactive, None).unwrap();
        assert_eq!(
            ok.read(0, 1).unwrap(),
            b"x",
            "the inactive copy is never read"
        );

        let mut bad_global = region;
        bad_global.as_bytes_mut()[20] ^= 4;
        assert!(matches!(
            PmLog::start(bad_global, None),
            Err(LogError::CrcMismatch { .. })
        ));
    }

    struct FailingFlush(VolatileRegion, bool);
    impl PmRegion for FailingFlush {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read(&self, o: u64, b: &mut [u8]) -> Result<(), RegionError> {
            self.0.read(o, b)
        }
        fn write(&mut self, o: u64, d: &[u8]) {
            self.0.write(o, d)
        }
        fn flush(&mut self, _o: u64, _l: u64) -> Result<(), RegionError> {
            if self.1 {
                Err(RegionError {
                    context: "test flush".into(),
                    source: std::io::Error::other("injected EIO"),
                })
            } else {
                Ok(())
            }
        }
        fn fence(&mut self) -> Result<(), RegionError> {
            Ok(())
        }
        fn kind(&self) -> crate::region::RegionKind {
            crate::region::RegionKind::Volatile
        }
    }

    #[test]
    fn a_failed_flush_poisons_the_log() {
        let region = FailingFlush(VolatileRegion::new(512), false);
        let mut log = PmLog::setup(region, 1).unwrap();
        log.region.1 = true;
        log.tentative_append(b"abc").unwrap();
        assert!(matches!(log.commit(), Err(LogError::Region(_))));
        assert!(matches!(
            log.tentative_append(b"d"),
            Err(LogError::Failed(_))
        ));
        assert!(matches!(log.commit(), Err(LogError::Failed(_))));
    }
}
