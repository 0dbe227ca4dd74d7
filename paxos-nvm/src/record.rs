//! Record framing above the raw log: `len: u32 | crc32c: u32 | payload`.
//!
//! The log checks only its own metadata (as in PoWER); the CRC here guards
//! the data. The CRC covers the length field and the payload, so a corrupted
//! length is caught as well as corrupted payload bytes.

use paxos_contracts::{ensures, requires};

use crate::log::{LogError, PmLog};
use crate::region::PmRegion;

/// Bytes of a record header.
pub const RECORD_HEADER_LEN: u64 = 8;

/// Errors reading records back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The log layer failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A committed record failed validation.
    #[error("corrupt record at log position {pos}: {reason}")]
    Corrupt {
        /// Virtual position of the record header.
        pos: u64,
        /// What was wrong.
        reason: String,
    },
}

fn record_crc(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload)
}

/// Bytes a record of `payload_len` takes in the log.
pub fn framed_len(payload_len: usize) -> u64 {
    RECORD_HEADER_LEN + payload_len as u64
}

/// The header of a record holding `payload`.
pub fn header(payload: &[u8]) -> [u8; RECORD_HEADER_LEN as usize] {
    requires!(
        payload.len() <= u32::MAX as usize,
        "record payload exceeds u32"
    );
    let len = payload.len() as u32;
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&record_crc(len, payload).to_le_bytes());
    h
}

/// Tentatively appends one framed record; returns the header's position.
/// All or nothing: if the record does not fit, nothing is appended.
pub fn append_record<R: PmRegion>(log: &mut PmLog<R>, payload: &[u8]) -> Result<u64, LogError> {
    let before = log.tentative_tail();
    let needed = framed_len(payload.len());
    if payload.len() > u32::MAX as usize || needed > log.free_space() {
        return Err(LogError::OutOfSpace {
            needed,
            available: log.free_space(),
        });
    }
    let pos = log.tentative_append(&header(payload))?;
    log.tentative_append(payload)?;
    ensures!(pos == before && log.tentative_tail() == before + needed);
    Ok(pos)
}

/// Reads the committed records from the head to the tail, in order.
///
/// Stops at the first invalid record with an error: every committed byte
/// was flushed before its commit, so an invalid record is corruption, never
/// a torn write.
pub fn read_records<R: PmRegion>(
    log: &PmLog<R>,
) -> impl Iterator<Item = Result<(u64, Vec<u8>), RecordError>> + '_ {
    let htc = log.head_tail_capacity();
    let mut pos = htc.head;
    let tail = htc.tail;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= tail {
            return None;
        }
        let result = read_one(log, pos, tail);
        match &result {
            Ok((_, payload)) => pos += framed_len(payload.len()),
            Err(_) => failed = true,
        }
        Some(result)
    })
}

fn read_one<R: PmRegion>(
    log: &PmLog<R>,
    pos: u64,
    tail: u64,
) -> Result<(u64, Vec<u8>), RecordError> {
    let corrupt = |reason: String| RecordError::Corrupt { pos, reason };
    if tail - pos < RECORD_HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes left, too few for a header",
            tail - pos
        )));
    }
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    log.read_into(pos, &mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let stored = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let available = tail - pos - RECORD_HEADER_LEN;
    if u64::from(len) > available {
        return Err(corrupt(format!(
            "length {len} runs past the tail ({available} bytes left)"
        )));
    }
    let payload = log.read(pos + RECORD_HEADER_LEN, u64::from(len))?;
    let computed = record_crc(len, &payload);
    if computed != stored {
        return Err(corrupt(format!(
            "crc32c stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    Ok((pos, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LOG_AREA_OFFSET;
    use crate::region::VolatileRegion;
    use proptest::prelude::*;

    fn fresh(cap: u64) -> PmLog<VolatileRegion> {
        PmLog::setup(VolatileRegion::new((LOG_AREA_OFFSET + cap) as usize), 1).unwrap()
    }

    #[test]
    fn records_round_trip_across_the_wrap() {
        let mut log = fresh(100);
        append_record(&mut log, &[1u8; 40]).unwrap();
        log.commit().unwrap();
        log.advance_head(48).unwrap();
        append_record(&mut log, b"wrapping record payload").unwrap();
        append_record(&mut log, b"").unwrap();
        log.commit().unwrap();
        let got: Vec<_> = read_records(&log).map(|r| r.unwrap().1).collect();
        assert_eq!(got, vec![b"wrapping record payload".to_vec(), Vec::new()]);
    }

    #[test]
    fn a_record_that_does_not_fit_appends_nothing() {
        let mut log = fresh(64);
        assert!(matches!(
            append_record(&mut log, &[0u8; 57]),
            Err(LogError::OutOfSpace { .. })
        ));
        assert_eq!(log.tentative_tail(), 0);
        append_record(&mut log, &[0u8; 56]).unwrap();
    }

    proptest! {
        #[test]
        fn any_flipped_bit_in_a_committed_record_is_detected(
            payload in proptest::collection::vec(any::<u8>(), 0..60), bit in 0usize..(68 * 8),
        ) {
            let mut log = fresh(128);
            append_record(&mut log, &payload).unwrap();
            log.commit().unwrap();
            let bit = bit % ((payload.len() + 8) * 8);
            let mut region = log.into_region();
            region.as_bytes_mut()[LOG_AREA_OFFSET as usize + bit / 8] ^= 1 << (bit % 8);
            let log = PmLog::start(region, None).unwrap();
            let results: Vec<_> = read_records(&log).collect();
            prop_assert!(results.iter().any(|r| r.is_err()), "flip of bit {} went unnoticed", bit);
        }
    }
}
