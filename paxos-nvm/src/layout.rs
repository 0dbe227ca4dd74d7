//! The on-region layout: pure encoding and decoding, no I/O.
//!
//! ```text
//! offset  size  content
//!      0    64  global metadata: magic, version, region length, log-area
//!               offset, capacity, log id (u128), CRC64 of the first 56 bytes
//!     64     8  CDB: CDB_FALSE selects copy 0, CDB_TRUE copy 1, anything
//!               else is corruption
//!     72    40  damage record: damage a salvaging recovery found and the
//!               replica has not cleared yet (magic, last kept sequence
//!               number, log position, flags, CRC64); all zero: none
//!    128    64  log metadata copy 0: head (u128 virtual position), length
//!               (u64), CRC64 of those 24 bytes, padding
//!    192    64  log metadata copy 1 (same)
//!    256     -  log area: a circular buffer of `capacity` bytes; virtual
//!               position p lives at 256 + p mod capacity
//! ```
//!
//! All integers are little-endian. Every field sits in its own aligned
//! 8-byte words, and the CDB is exactly one aligned word, so the PM crash
//! model (each aligned 8-byte word persists all or nothing) makes the CDB
//! flip atomic.

use crc::{Crc, CRC_64_XZ};

/// "PAXNVMLG" read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PAXNVMLG");
/// Layout version written by this code. Version 2 added the damage record
/// and records whose checksum covers their log position and sequence
/// number.
pub const VERSION: u64 = 2;
/// Offset of the global metadata.
pub const GLOBAL_OFFSET: u64 = 0;
/// Bytes of global metadata.
pub const GLOBAL_LEN: usize = 64;
/// Offset of the corruption-detecting boolean.
pub const CDB_OFFSET: u64 = 64;
/// Offset of the damage record.
pub const DAMAGE_OFFSET: u64 = 72;
/// Bytes of the damage record.
pub const DAMAGE_LEN: usize = 40;
/// "PXNVMDMG" read as a little-endian u64.
pub const DAMAGE_MAGIC: u64 = u64::from_le_bytes(*b"PXNVMDMG");
/// The two offsets of the log metadata copies.
pub const META_OFFSETS: [u64; 2] = [128, 192];
/// Bytes of one log metadata copy that are written (the rest is padding).
pub const META_LEN: usize = 32;
/// Offset of the log area.
pub const LOG_AREA_OFFSET: u64 = 256;
/// The smallest log area accepted (records need a little room).
pub const MIN_CAPACITY: u64 = 64;

/// CDB value selecting copy 0. Far (in Hamming distance) from zero, from
/// all-ones and from [`CDB_TRUE`], so a corrupted word is detected rather
/// than read as a valid choice.
pub const CDB_FALSE: u64 = 0xa328_42d1_9001_605e;
/// CDB value selecting copy 1.
pub const CDB_TRUE: u64 = 0xab21_aa73_0695_31b7;

const CRC64: Crc<u64> = Crc::<u64>::new(&CRC_64_XZ);

/// CRC64 (XZ polynomial) of `bytes`.
pub fn crc64(bytes: &[u8]) -> u64 {
    CRC64.checksum(bytes)
}

/// The global metadata, fixed at setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalMetadata {
    /// Layout version.
    pub version: u64,
    /// Total region length in bytes.
    pub region_len: u64,
    /// Where the log area starts.
    pub log_area_offset: u64,
    /// Log area length in bytes.
    pub capacity: u64,
    /// The identity of this log, checked on start.
    pub log_id: u128,
}

/// Why metadata failed to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The magic number is wrong: this is not a paxos-nvm region.
    BadMagic(u64),
    /// The stored CRC does not match the content.
    Crc {
        /// The CRC stored in the region.
        stored: u64,
        /// The CRC of the content as read.
        computed: u64,
    },
    /// The CDB holds neither valid value.
    BadCdb(u64),
    /// Fields are inconsistent (the reason says how).
    Inconsistent(String),
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn u128_at(b: &[u8], at: usize) -> u128 {
    let mut w = [0u8; 16];
    w.copy_from_slice(&b[at..at + 16]);
    u128::from_le_bytes(w)
}

impl GlobalMetadata {
    /// Metadata for a region of `region_len` bytes, or `None` if the region
    /// is too small for a log area of [`MIN_CAPACITY`].
    pub fn for_region(region_len: u64, log_id: u128) -> Option<GlobalMetadata> {
        let capacity = region_len.checked_sub(LOG_AREA_OFFSET)?;
        (capacity >= MIN_CAPACITY).then_some(GlobalMetadata {
            version: VERSION,
            region_len,
            log_area_offset: LOG_AREA_OFFSET,
            capacity,
            log_id,
        })
    }

    /// The 64 bytes stored at [`GLOBAL_OFFSET`].
    pub fn encode(&self) -> [u8; GLOBAL_LEN] {
        let mut b = [0u8; GLOBAL_LEN];
        b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.region_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.log_area_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.capacity.to_le_bytes());
        b[40..56].copy_from_slice(&self.log_id.to_le_bytes());
        let crc = crc64(&b[0..56]);
        b[56..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks magic and CRC. Version, id and sizes are checked
    /// by the caller, which knows what to expect.
    pub fn decode(b: &[u8; GLOBAL_LEN]) -> Result<GlobalMetadata, DecodeError> {
        let magic = u64_at(b, 0);
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let stored = u64_at(b, 56);
        let computed = crc64(&b[0..56]);
        if stored != computed {
            return Err(DecodeError::Crc { stored, computed });
        }
        Ok(GlobalMetadata {
            version: u64_at(b, 8),
            region_len: u64_at(b, 16),
            log_area_offset: u64_at(b, 24),
            capacity: u64_at(b, 32),
            log_id: u128_at(b, 40),
        })
    }
}

/// One copy of the log metadata: where the committed log lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogMetadata {
    /// Virtual position of the first live byte.
    pub head: u64,
    /// Committed bytes from `head`; the committed tail is `head + length`.
    pub length: u64,
}

impl LogMetadata {
    /// The 32 bytes stored at a metadata copy's offset. The head is stored
    /// as a u128 as in PoWER; this implementation keeps positions below
    /// 2^64 (58 years of appends at 10 GB/s) and rejects larger ones.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0..16].copy_from_slice(&u128::from(self.head).to_le_bytes());
        b[16..24].copy_from_slice(&self.length.to_le_bytes());
        let crc = crc64(&b[0..24]);
        b[24..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks the CRC and that the fields fit `capacity`.
    pub fn decode(b: &[u8; META_LEN], capacity: u64) -> Result<LogMetadata, DecodeError> {
        let stored = u64_at(b, 24);
        let computed = crc64(&b[0..24]);
        if stored != computed {
            return Err(DecodeError::Crc { stored, computed });
        }
        let head = u64::try_from(u128_at(b, 0))
            .map_err(|_| DecodeError::Inconsistent("head position beyond 2^64".into()))?;
        let length = u64_at(b, 16);
        if length > capacity {
            return Err(DecodeError::Inconsistent(format!(
                "log length {length} exceeds capacity {capacity}"
            )));
        }
        if head.checked_add(length).is_none() {
            return Err(DecodeError::Inconsistent("tail position overflows".into()));
        }
        Ok(LogMetadata { head, length })
    }
}

/// Damage a salvaging recovery found, recorded in the region until the
/// replica clears it (so a crash before the replica repaired itself does
/// not make it forget that it may have lost promises and votes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DamageRecord {
    /// Sequence number of the last append recovery kept (merged: the
    /// lowest over every damage not cleared).
    pub last_kept_seq: u64,
    /// Log position (or region offset, for metadata) of the damage.
    pub position: u64,
    /// Whether acknowledged appends may have been lost.
    pub may_have_lost_acknowledged: bool,
}

impl DamageRecord {
    /// The 40 bytes stored at [`DAMAGE_OFFSET`].
    pub fn encode(&self) -> [u8; DAMAGE_LEN] {
        let mut b = [0u8; DAMAGE_LEN];
        b[0..8].copy_from_slice(&DAMAGE_MAGIC.to_le_bytes());
        b[8..16].copy_from_slice(&self.last_kept_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.position.to_le_bytes());
        b[24..32].copy_from_slice(&u64::from(self.may_have_lost_acknowledged).to_le_bytes());
        let crc = crc64(&b[0..32]);
        b[32..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a damage record: `Ok(None)` if the bytes are all zero (no
    /// damage pending), an error if they are anything but zero or a valid
    /// record (then damage is pending, its details lost).
    pub fn decode(b: &[u8; DAMAGE_LEN]) -> Result<Option<DamageRecord>, DecodeError> {
        if b.iter().all(|x| *x == 0) {
            return Ok(None);
        }
        let magic = u64_at(b, 0);
        if magic != DAMAGE_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let stored = u64_at(b, 32);
        let computed = crc64(&b[0..32]);
        if stored != computed {
            return Err(DecodeError::Crc { stored, computed });
        }
        let flags = u64_at(b, 24);
        if flags > 1 {
            return Err(DecodeError::Inconsistent(format!(
                "damage flags {flags:#x}"
            )));
        }
        Ok(Some(DamageRecord {
            last_kept_seq: u64_at(b, 8),
            position: u64_at(b, 16),
            may_have_lost_acknowledged: flags == 1,
        }))
    }
}

/// Which metadata copy a CDB word selects.
pub fn decode_cdb(word: u64) -> Result<usize, DecodeError> {
    match word {
        CDB_FALSE => Ok(0),
        CDB_TRUE => Ok(1),
        other => Err(DecodeError::BadCdb(other)),
    }
}

/// The CDB word that selects copy `index`.
pub fn encode_cdb(index: usize) -> u64 {
    if index == 0 {
        CDB_FALSE
    } else {
        CDB_TRUE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_are_word_aligned_and_do_not_overlap() {
        assert_eq!(GLOBAL_OFFSET as usize + GLOBAL_LEN, CDB_OFFSET as usize);
        assert_eq!(CDB_OFFSET % 8, 0);
        assert_eq!(CDB_OFFSET + 8, DAMAGE_OFFSET);
        assert!(DAMAGE_OFFSET + DAMAGE_LEN as u64 <= META_OFFSETS[0]);
        assert!(META_OFFSETS[0] + META_LEN as u64 <= META_OFFSETS[1]);
        assert!(META_OFFSETS[1] + META_LEN as u64 <= LOG_AREA_OFFSET);
        assert!(META_OFFSETS.iter().all(|o| o % 8 == 0));
        assert!((CDB_FALSE ^ CDB_TRUE).count_ones() >= 16);
    }

    #[test]
    fn small_regions_are_refused() {
        assert!(GlobalMetadata::for_region(100, 1).is_none());
        assert!(GlobalMetadata::for_region(LOG_AREA_OFFSET + MIN_CAPACITY, 1).is_some());
    }

    proptest! {
        #[test]
        fn global_metadata_round_trips(len in 320u64..u64::MAX / 2, id in any::<u128>()) {
            let g = GlobalMetadata::for_region(len, id).unwrap();
            prop_assert_eq!(GlobalMetadata::decode(&g.encode()), Ok(g));
        }

        #[test]
        fn any_bit_flip_in_global_metadata_is_detected(id in any::<u128>(), bit in 0usize..512) {
            let g = GlobalMetadata::for_region(1 << 20, id).unwrap();
            let mut b = g.encode();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(GlobalMetadata::decode(&b).is_err());
        }

        #[test]
        fn log_metadata_round_trips_and_detects_bit_flips(
            head in 0u64..u64::MAX / 2, length in 0u64..1000, bit in 0usize..256,
        ) {
            let m = LogMetadata { head, length };
            prop_assert_eq!(LogMetadata::decode(&m.encode(), 1000), Ok(m));
            let mut b = m.encode();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(LogMetadata::decode(&b, 1000).is_err());
        }

        #[test]
        fn only_the_two_cdb_values_decode(word in any::<u64>()) {
            let ok = decode_cdb(word).is_ok();
            prop_assert_eq!(ok, word == CDB_FALSE || word == CDB_TRUE);
        }
    }

    proptest! {
        #[test]
        fn damage_records_round_trip_and_detect_bit_flips(
            kept in any::<u64>(), position in any::<u64>(), lost in any::<bool>(), bit in 0usize..320,
        ) {
            let r = DamageRecord { last_kept_seq: kept, position, may_have_lost_acknowledged: lost };
            prop_assert_eq!(DamageRecord::decode(&r.encode()), Ok(Some(r)));
            let mut b = r.encode();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(DamageRecord::decode(&b).is_err());
            let mut zero = [0u8; DAMAGE_LEN];
            prop_assert_eq!(DamageRecord::decode(&zero), Ok(None));
            zero[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(DamageRecord::decode(&zero).is_err(), "a flip in an empty record is not silence");
        }
    }

    #[test]
    fn metadata_with_length_beyond_capacity_is_rejected() {
        let m = LogMetadata {
            head: 5,
            length: 2000,
        };
        assert!(matches!(
            LogMetadata::decode(&m.encode(), 1000),
            Err(DecodeError::Inconsistent(_))
        ));
    }
}
