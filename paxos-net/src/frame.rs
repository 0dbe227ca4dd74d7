//! Wire framing: a fixed 12-byte header, read in place with zerocopy, then
//! the payload.
//!
//! ```text
//! offset  size  field
//!      0     2  magic    b"PX"
//!      2     1  version  FRAME_VERSION (1)
//!      3     1  flags    bit 0 HELLO, bit 1 CHECKSUM; other bits must be 0
//!      4     4  length   payload length, little endian, <= the receiver's limit
//!      8     4  crc32c   CRC-32C of the payload when CHECKSUM is set, else 0
//!     12     n  payload
//! ```
//!
//! QUIC already authenticates every packet (AEAD), so the checksum is off by
//! default; it is there for transports without integrity of their own.
//!
//! The decoder is incremental: feed it bytes as they arrive and take whole
//! frames out. It never buffers more than one frame plus the bytes of the
//! chunk being fed, because it rejects an oversized length as soon as the
//! header is complete. Every malformed input is a [`FrameError`], never a
//! panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use paxos_contracts::{ensures, requires};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The two bytes every frame starts with.
pub const FRAME_MAGIC: [u8; 2] = *b"PX";
/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = std::mem::size_of::<FrameHeader>();
/// Hard ceiling on any payload, whatever a configuration says (64 MiB).
pub const MAX_PAYLOAD_CEILING: usize = 64 << 20;

/// Flag: the frame is the stream's opening hello, carrying the sender's id.
pub const FLAG_HELLO: u8 = 0b0000_0001;
/// Flag: the `crc32c` field holds the CRC-32C of the payload.
pub const FLAG_CHECKSUM: u8 = 0b0000_0010;
const KNOWN_FLAGS: u8 = FLAG_HELLO | FLAG_CHECKSUM;

/// Length of a hello payload: the sender's replica id, u32 little endian.
pub const HELLO_PAYLOAD_LEN: usize = 4;

/// The fixed frame header, as laid out on the wire.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FrameHeader {
    /// [`FRAME_MAGIC`].
    pub magic: [u8; 2],
    /// [`FRAME_VERSION`].
    pub version: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Payload length in bytes.
    pub length: U32,
    /// CRC-32C of the payload if `FLAG_CHECKSUM`, else 0.
    pub crc32c: U32,
}

const _: () = assert!(HEADER_LEN == 12);

impl FrameHeader {
    /// The header for a payload of `len` bytes.
    fn new(flags: u8, payload: &[u8], checksum: bool) -> Self {
        let (flags, crc) = if checksum {
            (flags | FLAG_CHECKSUM, crc32c::crc32c(payload))
        } else {
            (flags, 0)
        };
        FrameHeader {
            magic: FRAME_MAGIC,
            version: FRAME_VERSION,
            flags,
            // Callers check the length against MAX_PAYLOAD_CEILING first.
            length: U32::new(payload.len() as u32),
            crc32c: U32::new(crc),
        }
    }
}

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bytes are not [`FRAME_MAGIC`]: not our protocol, or the
    /// stream lost sync.
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// A version this build does not speak.
    #[error("unsupported frame version {0} (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion(u8),
    /// Flag bits this version does not define.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// The length field exceeds the receiver's limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Length announced by the header.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The payload does not match its checksum.
    #[error("frame checksum mismatch: header {expected:#010x}, payload {actual:#010x}")]
    ChecksumMismatch {
        /// CRC in the header.
        expected: u32,
        /// CRC of the bytes received.
        actual: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
    /// A hello frame whose payload is not a 4-byte replica id.
    #[error("hello frame payload is {0} bytes, expected {HELLO_PAYLOAD_LEN}")]
    BadHello(usize),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `FLAG_*` bits as received.
    pub flags: u8,
    /// The payload, sharing the decoder's buffer (no copy).
    pub payload: Bytes,
}

impl Frame {
    /// Whether this is a hello frame.
    pub fn is_hello(&self) -> bool {
        self.flags & FLAG_HELLO != 0
    }

    /// The replica id a hello frame carries.
    pub fn hello_id(&self) -> Result<u32, FrameError> {
        let bytes: [u8; HELLO_PAYLOAD_LEN] = self
            .payload
            .as_ref()
            .try_into()
            .map_err(|_| FrameError::BadHello(self.payload.len()))?;
        Ok(u32::from_le_bytes(bytes))
    }
}

/// Appends one frame (header then payload) to `out`.
///
/// Panics (contract) if the payload exceeds [`MAX_PAYLOAD_CEILING`]: callers
/// check message sizes when they accept a message, long before encoding.
pub fn encode_frame(out: &mut BytesMut, flags: u8, payload: &[u8], checksum: bool) {
    requires!(
        payload.len() <= MAX_PAYLOAD_CEILING,
        "payload of {} bytes",
        payload.len()
    );
    requires!(flags & !KNOWN_FLAGS == 0, "unknown flags {flags:#x}");
    let before = out.len();
    let header = FrameHeader::new(flags, payload, checksum);
    out.reserve(HEADER_LEN + payload.len());
    out.put_slice(header.as_bytes());
    out.put_slice(payload);
    ensures!(out.len() == before + HEADER_LEN + payload.len());
}

/// The header of a frame as its own small buffer, so a large payload can be
/// written after it without being copied.
pub fn encode_header(flags: u8, payload: &[u8], checksum: bool) -> [u8; HEADER_LEN] {
    requires!(
        payload.len() <= MAX_PAYLOAD_CEILING,
        "payload of {} bytes",
        payload.len()
    );
    let mut bytes = [0u8; HEADER_LEN];
    bytes.copy_from_slice(FrameHeader::new(flags, payload, checksum).as_bytes());
    bytes
}

/// A hello frame announcing `replica_id`.
pub fn encode_hello(out: &mut BytesMut, replica_id: u32, checksum: bool) {
    encode_frame(out, FLAG_HELLO, &replica_id.to_le_bytes(), checksum);
}

/// Incremental frame decoder with a payload size limit.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    max_payload: usize,
    /// Set after the first error: a stream that lost sync stays broken.
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder accepting payloads up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        requires!(
            max_payload <= MAX_PAYLOAD_CEILING,
            "limit {max_payload} above ceiling"
        );
        FrameDecoder {
            buffer: BytesMut::new(),
            max_payload,
            failed: None,
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the
    /// error that breaks the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.decode();
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        ensures!(match &result {
            Ok(Some(frame)) => frame.payload.len() <= self.max_payload,
            _ => true,
        });
        result
    }

    /// Call when the stream has ended: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buffer.len(),
            })
        }
    }

    fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        // Validate what we have of the header as early as possible, so a
        // garbage stream is rejected after its first bytes.
        if self.buffer.len() >= 2 && self.buffer[..2] != FRAME_MAGIC {
            return Err(FrameError::BadMagic([self.buffer[0], self.buffer[1]]));
        }
        let Ok((header, _)) = FrameHeader::ref_from_prefix(&self.buffer[..]) else {
            return Ok(None);
        };
        if header.version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(header.version));
        }
        if header.flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::UnknownFlags(header.flags));
        }
        let len = header.length.get() as usize;
        if len > self.max_payload {
            return Err(FrameError::Oversized {
                len,
                max: self.max_payload,
            });
        }
        if header.flags & FLAG_HELLO != 0 && len != HELLO_PAYLOAD_LEN {
            return Err(FrameError::BadHello(len));
        }
        if self.buffer.len() < HEADER_LEN + len {
            // Reserve once for the whole frame so a large payload arriving in
            // many chunks is not reallocated repeatedly. Bounded by the limit.
            self.buffer.reserve(HEADER_LEN + len - self.buffer.len());
            return Ok(None);
        }
        let flags = header.flags;
        let expected_crc = header.crc32c.get();
        // The payload is copied out rather than split off the receive
        // buffer. Decoded messages are slices of it all the way to the
        // state machine, and the core keeps decrees in memory for catch-up:
        // a split-off payload pinned the whole receive allocation it
        // arrived in (with its neighbours and spare capacity), and a
        // follower's retained log pinned 2.8 times its own bytes that way
        // (heaptrack, docs/BENCHMARKS.md "Memory: bytes per key"). One copy per
        // frame, not per request, and the receive buffer stays unshared, so
        // it is reused in place instead of reallocated.
        let payload = Bytes::copy_from_slice(&self.buffer[HEADER_LEN..HEADER_LEN + len]);
        self.buffer.advance(HEADER_LEN + len);
        if flags & FLAG_CHECKSUM != 0 {
            let actual = crc32c::crc32c(&payload);
            if actual != expected_crc {
                return Err(FrameError::ChecksumMismatch {
                    expected: expected_crc,
                    actual,
                });
            }
        }
        Ok(Some(Frame { flags, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = FrameDecoder::new(max);
        decoder.extend(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
        decoder.finish()?;
        Ok(frames)
    }

    fn header_bytes(magic: [u8; 2], version: u8, flags: u8, len: u32, crc: u32) -> Vec<u8> {
        let header = FrameHeader {
            magic,
            version,
            flags,
            length: U32::new(len),
            crc32c: U32::new(crc),
        };
        header.as_bytes().to_vec()
    }

    #[test]
    fn roundtrip_with_and_without_checksum() {
        let mut out = BytesMut::new();
        encode_hello(&mut out, 7, false);
        encode_frame(&mut out, 0, b"hello", true);
        encode_frame(&mut out, 0, b"", false);
        let frames = decode_all(&out, 1024).unwrap();
        assert_eq!(frames.len(), 3);
        assert!(frames[0].is_hello());
        assert_eq!(frames[0].hello_id().unwrap(), 7);
        assert_eq!(frames[1].payload.as_ref(), b"hello");
        assert_eq!(frames[1].flags, FLAG_CHECKSUM);
        assert!(frames[2].payload.is_empty());
    }

    #[test]
    fn header_then_payload_equals_whole_frame() {
        let mut whole = BytesMut::new();
        encode_frame(&mut whole, 0, b"payload", true);
        let mut split = encode_header(0, b"payload", true).to_vec();
        split.extend_from_slice(b"payload");
        assert_eq!(whole.as_ref(), split.as_slice());
    }

    #[test]
    fn bad_magic_is_rejected_after_two_bytes() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(b"GE");
        assert_eq!(decoder.next_frame(), Err(FrameError::BadMagic(*b"GE")));
        // The stream stays broken.
        decoder.extend(&header_bytes(FRAME_MAGIC, 1, 0, 0, 0));
        assert!(decoder.next_frame().is_err());
        assert!(decoder.finish().is_err());
    }

    #[test]
    fn unsupported_version_is_rejected() {
        let bytes = header_bytes(FRAME_MAGIC, 2, 0, 0, 0);
        assert_eq!(
            decode_all(&bytes, 1024),
            Err(FrameError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn unknown_flags_are_rejected() {
        let bytes = header_bytes(FRAME_MAGIC, FRAME_VERSION, 0x80, 0, 0);
        assert_eq!(
            decode_all(&bytes, 1024),
            Err(FrameError::UnknownFlags(0x80))
        );
    }

    #[test]
    fn oversized_frame_is_rejected_from_its_header_alone() {
        let bytes = header_bytes(FRAME_MAGIC, FRAME_VERSION, 0, 1025, 0);
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(&bytes);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::Oversized {
                len: 1025,
                max: 1024
            })
        );
        // Even the largest length field is an error, not an allocation.
        let bytes = header_bytes(FRAME_MAGIC, FRAME_VERSION, 0, u32::MAX, 0);
        assert!(matches!(
            decode_all(&bytes, 1024),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn checksum_mismatch_is_rejected() {
        let mut out = BytesMut::new();
        encode_frame(&mut out, 0, b"abcdef", true);
        let last = out.len() - 1;
        out[last] ^= 1;
        assert!(matches!(
            decode_all(&out, 1024),
            Err(FrameError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn truncated_frame_is_an_error_at_end_of_stream() {
        let mut out = BytesMut::new();
        encode_frame(&mut out, 0, b"abcdef", false);
        for cut in 1..out.len() {
            let result = decode_all(&out[..cut], 1024);
            assert_eq!(
                result,
                Err(FrameError::Truncated { buffered: cut }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn hello_with_wrong_payload_length_is_rejected() {
        let mut out = BytesMut::new();
        out.put_slice(&header_bytes(FRAME_MAGIC, FRAME_VERSION, FLAG_HELLO, 3, 0));
        out.put_slice(&[1, 2, 3]);
        assert_eq!(decode_all(&out, 1024), Err(FrameError::BadHello(3)));
        let frame = Frame {
            flags: 0,
            payload: Bytes::from_static(b"xy"),
        };
        assert_eq!(frame.hello_id(), Err(FrameError::BadHello(2)));
    }

    #[test]
    fn a_payload_owns_its_bytes_and_does_not_pin_the_receive_buffer() {
        let mut out = BytesMut::new();
        encode_frame(&mut out, 0, &[9u8; 300], false);
        encode_frame(&mut out, 0, &[7u8; 300], false);
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(&out);
        let received = decoder.buffer.as_ptr_range();
        let first = decoder.next_frame().unwrap().unwrap();
        // A copy, not a slice of the buffer both frames arrived in: holding
        // it (as the core holds a retained decree) keeps 300 bytes alive,
        // not the receive allocation.
        assert!(!received.contains(&first.payload.as_ptr()));
        assert_eq!(first.payload, Bytes::from(vec![9u8; 300]));
        // The buffer was not split, so it is still unshared and refills in
        // place once drained.
        let second = decoder.next_frame().unwrap().unwrap();
        assert_eq!(second.payload, Bytes::from(vec![7u8; 300]));
        assert_eq!(decoder.buffered(), 0);
        decoder.extend(&out);
        assert_eq!(decoder.buffer.as_ptr_range().start, received.start);
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder, whatever the chunking, and
        /// any frame it returns respects the limit.
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            chunk in 1usize..64,
            max in 0usize..256,
        ) {
            let mut decoder = FrameDecoder::new(max);
            for piece in bytes.chunks(chunk) {
                decoder.extend(piece);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    prop_assert!(frame.payload.len() <= max);
                }
            }
            let _ = decoder.finish();
        }

        /// Arbitrary bytes after a valid magic and version reach the deeper checks.
        #[test]
        fn decoder_never_panics_on_plausible_headers(
            flags in any::<u8>(),
            len in any::<u32>(),
            crc in any::<u32>(),
            tail in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut bytes = header_bytes(FRAME_MAGIC, FRAME_VERSION, flags, len, crc);
            bytes.extend_from_slice(&tail);
            let mut decoder = FrameDecoder::new(64);
            decoder.extend(&bytes);
            while let Ok(Some(frame)) = decoder.next_frame() {
                prop_assert!(frame.payload.len() <= 64);
            }
        }

        /// Encoding then decoding gives back the same payloads in order,
        /// however the bytes are split into chunks.
        #[test]
        fn roundtrip_any_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..16),
            checksum in any::<bool>(),
            chunk in 1usize..100,
        ) {
            let mut out = BytesMut::new();
            for p in &payloads {
                encode_frame(&mut out, 0, p, checksum);
            }
            let mut decoder = FrameDecoder::new(200);
            let mut got = Vec::new();
            for piece in out.chunks(chunk) {
                decoder.extend(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame.payload.to_vec());
                }
            }
            decoder.finish().unwrap();
            prop_assert_eq!(got, payloads);
        }
    }
}
