//! RESP2, the Redis serialization protocol: an incremental, bounded,
//! zero-copy parser and an allocation-free encoder.
//!
//! The parser works on a connection's receive buffer (`BytesMut`). It first
//! scans for one complete frame without allocating or consuming anything;
//! only when the whole frame is present does it split those bytes off the
//! buffer, freeze them, and hand out bulk strings as `Bytes` slices of that
//! one buffer, so request payloads are never copied.
//!
//! Limits (per connection): the longest bulk string, the longest array, the
//! nesting depth, and how many bytes may sit buffered without forming a
//! frame. Every violation is an error, never a panic or an unbounded
//! allocation. Errors come in two kinds: [`RespError::is_fatal`] ones lose
//! the framing (the caller replies with the error and closes only that
//! connection).

use bytes::{BufMut, Bytes, BytesMut};

/// Bounds on what one connection may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespLimits {
    /// Longest bulk string, in bytes.
    pub max_bulk_len: usize,
    /// Most elements in one array.
    pub max_array_len: usize,
    /// Deepest nesting of arrays.
    pub max_depth: usize,
    /// Most bytes buffered while a frame is incomplete.
    pub max_buffered: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_bulk_len: 512 * 1024,
            max_array_len: 1024,
            max_depth: 4,
            max_buffered: 4 * 1024 * 1024,
        }
    }
}

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `+text\r\n`
    Simple(Bytes),
    /// `-text\r\n`
    Error(Bytes),
    /// `:n\r\n`
    Integer(i64),
    /// `$len\r\n...\r\n`; `None` is the null bulk string `$-1`.
    Bulk(Option<Bytes>),
    /// `*n\r\n...`; `None` is the null array `*-1`.
    Array(Option<Vec<Frame>>),
}

/// Why input could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// A byte that no RESP2 frame starts with.
    #[error("Protocol error: unexpected type byte 0x{0:02x}")]
    BadTypeByte(u8),
    /// A length or integer line that is not a number.
    #[error("Protocol error: invalid {what} line")]
    BadNumber {
        /// Which line (bulk length, array length, integer).
        what: &'static str,
    },
    /// A bulk string not followed by CRLF.
    #[error("Protocol error: bulk string not terminated by CRLF")]
    MissingCrlf,
    /// A bulk string longer than allowed.
    #[error("Protocol error: bulk length {len} exceeds limit {limit}")]
    BulkTooLong {
        /// Declared length.
        len: i64,
        /// The limit.
        limit: usize,
    },
    /// An array longer than allowed.
    #[error("Protocol error: array length {len} exceeds limit {limit}")]
    ArrayTooLong {
        /// Declared length.
        len: i64,
        /// The limit.
        limit: usize,
    },
    /// Arrays nested deeper than allowed.
    #[error("Protocol error: nesting deeper than {0}")]
    TooDeep(usize),
    /// Too many bytes buffered without a complete frame.
    #[error("Protocol error: more than {0} bytes buffered without a complete request")]
    BufferOverflow(usize),
    /// A simple-string, error or number line longer than allowed.
    #[error("Protocol error: line too long")]
    LineTooLong,
}

impl RespError {
    /// Whether the framing is lost. All parse errors are: after a bad byte
    /// there is no reliable way to find the next frame, so the connection
    /// must be closed after the error reply.
    pub fn is_fatal(&self) -> bool {
        true
    }
}

/// Longest `+`, `-` or `:` line accepted (a length line is far shorter).
const MAX_LINE: usize = 64 * 1024;

/// Parses one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and
/// call again), `Ok(Some(frame))` after removing that frame's bytes from
/// `buf`, or an error when the input is malformed or breaks a limit.
pub fn parse(buf: &mut BytesMut, limits: &RespLimits) -> Result<Option<Frame>, RespError> {
    let old_len = paxos_contracts::snapshot!(buf.len());
    let result = parse_inner(buf, limits);
    paxos_contracts::ensures!(
        match &result {
            Ok(None) | Err(_) => buf.len() == old_len.unwrap_or(0),
            Ok(Some(_)) => buf.len() < old_len.unwrap_or(0),
        },
        "a frame is consumed whole or not at all"
    );
    result
}

fn parse_inner(buf: &mut BytesMut, limits: &RespLimits) -> Result<Option<Frame>, RespError> {
    match scan(buf, 0, 0, limits)? {
        None => {
            if buf.len() > limits.max_buffered {
                Err(RespError::BufferOverflow(limits.max_buffered))
            } else {
                Ok(None)
            }
        }
        Some(end) => {
            let bytes = buf.split_to(end).freeze();
            let (frame, used) = build(&bytes, 0)?;
            debug_assert_eq!(used, end);
            Ok(Some(frame))
        }
    }
}

/// Where one parsed client command lies in the read buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// A complete frame of `len` bytes that is an array of bulk strings;
    /// the argument ranges were written to the caller's vector.
    Args {
        /// Bytes of the frame, to be consumed once the command is handled.
        len: usize,
    },
    /// A complete, valid frame of `len` bytes that is not a command (not a
    /// non-empty array of bulk strings).
    NotCommand {
        /// Bytes of the frame.
        len: usize,
    },
}

/// Parses one client command at the front of `buf` without copying or
/// allocating: on success `args` holds the byte ranges of its arguments
/// within `buf`, and the caller consumes the frame's `len` bytes when done
/// with them. `Ok(None)` means more bytes are needed; nothing is consumed in
/// any case. Accepts and rejects exactly what [`parse`] does.
pub fn parse_command(
    buf: &[u8],
    limits: &RespLimits,
    args: &mut Vec<std::ops::Range<usize>>,
) -> Result<Option<Command>, RespError> {
    args.clear();
    let Some(end) = scan(buf, 0, 0, limits)? else {
        if buf.len() > limits.max_buffered {
            return Err(RespError::BufferOverflow(limits.max_buffered));
        }
        return Ok(None);
    };
    let not_command = Ok(Some(Command::NotCommand { len: end }));
    if buf[0] != b'*' {
        return not_command;
    }
    // `scan` validated the whole frame, so these reads cannot fail; a
    // failure maps to "not a command" rather than a panic all the same.
    let Some((count, mut next)) = int_line(buf, 1, "array length")? else {
        return not_command;
    };
    if count <= 0 {
        return not_command;
    }
    for _ in 0..count {
        if buf.get(next) != Some(&b'$') {
            args.clear();
            return not_command;
        }
        let Some((len, body)) = int_line(buf, next + 1, "bulk length")? else {
            args.clear();
            return not_command;
        };
        if len < 0 {
            args.clear();
            return not_command;
        }
        let arg_end = body + len as usize;
        args.push(body..arg_end);
        next = arg_end + 2;
    }
    Ok(Some(Command::Args { len: end }))
}

/// Finds the end of the line starting at `pos` (the index of its `\r`).
fn find_crlf(buf: &[u8], pos: usize) -> Result<Option<usize>, RespError> {
    let window = &buf[pos.min(buf.len())..];
    match window.iter().position(|&b| b == b'\r') {
        Some(i) => {
            if i > MAX_LINE {
                return Err(RespError::LineTooLong);
            }
            match window.get(i + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(Some(pos + i)),
                Some(_) => Err(RespError::MissingCrlf),
            }
        }
        None if window.len() > MAX_LINE => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

fn parse_int(line: &[u8], what: &'static str) -> Result<i64, RespError> {
    let bad = || RespError::BadNumber { what };
    let (neg, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(bad());
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(if neg { -value } else { value })
}

/// Reads the line at `pos` (after its type byte) as an integer; returns the
/// integer and the position after the line's CRLF.
fn int_line(buf: &[u8], pos: usize, what: &'static str) -> Result<Option<(i64, usize)>, RespError> {
    match find_crlf(buf, pos)? {
        None => Ok(None),
        Some(cr) => Ok(Some((parse_int(&buf[pos..cr], what)?, cr + 2))),
    }
}

/// Checks that a complete, valid frame starts at `pos`; returns its end.
/// Allocates nothing and consumes nothing.
fn scan(
    buf: &[u8],
    pos: usize,
    depth: usize,
    limits: &RespLimits,
) -> Result<Option<usize>, RespError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => Ok(find_crlf(buf, pos + 1)?.map(|cr| cr + 2)),
        b':' => Ok(int_line(buf, pos + 1, "integer")?.map(|(_, next)| next)),
        b'$' => {
            let Some((len, body)) = int_line(buf, pos + 1, "bulk length")? else {
                return Ok(None);
            };
            if len == -1 {
                return Ok(Some(body));
            }
            if len < 0 || len as u64 > limits.max_bulk_len as u64 {
                return Err(RespError::BulkTooLong {
                    len,
                    limit: limits.max_bulk_len,
                });
            }
            let end = body + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            Ok(Some(end + 2))
        }
        b'*' => {
            let Some((len, mut next)) = int_line(buf, pos + 1, "array length")? else {
                return Ok(None);
            };
            if len == -1 {
                return Ok(Some(next));
            }
            if len < 0 || len as u64 > limits.max_array_len as u64 {
                return Err(RespError::ArrayTooLong {
                    len,
                    limit: limits.max_array_len,
                });
            }
            if len > 0 && depth + 1 > limits.max_depth {
                return Err(RespError::TooDeep(limits.max_depth));
            }
            for _ in 0..len {
                match scan(buf, next, depth + 1, limits)? {
                    None => return Ok(None),
                    Some(end) => next = end,
                }
            }
            Ok(Some(next))
        }
        other => Err(RespError::BadTypeByte(other)),
    }
}

/// Builds the frame at `pos` of a buffer that [`scan`] accepted, slicing
/// bulk strings out of `bytes` without copying.
fn build(bytes: &Bytes, pos: usize) -> Result<(Frame, usize), RespError> {
    // `scan` validated this frame, so the `None` arms are unreachable; they
    // map to an error rather than a panic all the same.
    const TRUNCATED: RespError = RespError::MissingCrlf;
    let kind = *bytes.get(pos).ok_or(TRUNCATED)?;
    match kind {
        b'+' | b'-' => {
            let cr = find_crlf(bytes, pos + 1)?.ok_or(TRUNCATED)?;
            let text = bytes.slice(pos + 1..cr);
            Ok((
                if kind == b'+' {
                    Frame::Simple(text)
                } else {
                    Frame::Error(text)
                },
                cr + 2,
            ))
        }
        b':' => {
            let (n, next) = int_line(bytes, pos + 1, "integer")?.ok_or(TRUNCATED)?;
            Ok((Frame::Integer(n), next))
        }
        b'$' => {
            let (len, body) = int_line(bytes, pos + 1, "bulk length")?.ok_or(TRUNCATED)?;
            if len < 0 {
                return Ok((Frame::Bulk(None), body));
            }
            let end = body + len as usize;
            if bytes.len() < end + 2 {
                return Err(TRUNCATED);
            }
            Ok((Frame::Bulk(Some(bytes.slice(body..end))), end + 2))
        }
        b'*' => {
            let (len, mut next) = int_line(bytes, pos + 1, "array length")?.ok_or(TRUNCATED)?;
            if len < 0 {
                return Ok((Frame::Array(None), next));
            }
            let mut items = Vec::with_capacity(len as usize);
            for _ in 0..len {
                let (item, end) = build(bytes, next)?;
                items.push(item);
                next = end;
            }
            Ok((Frame::Array(Some(items)), next))
        }
        other => Err(RespError::BadTypeByte(other)),
    }
}

/// The decimal digits of `n`, formatted into `buf` without `fmt` or
/// allocation (this is on every reply's and every command's path).
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The decimal form of `n`, signed, formatted into `buf` without
/// allocation.
pub fn decimal_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let digits = decimal(n.unsigned_abs(), buf).len();
    if n < 0 {
        // 19 digits at most, so there is room for the sign.
        let at = buf.len() - digits - 1;
        buf[at] = b'-';
        &buf[at..]
    } else {
        &buf[buf.len() - digits..]
    }
}

/// Writes the decimal form of `n` without allocating.
fn put_decimal(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(decimal(n.unsigned_abs(), &mut [0; 20]));
}

/// `+text\r\n`. `text` must not contain CR or LF.
pub fn write_simple(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'+');
    put_line_text(out, text);
}

/// `-text\r\n`. CR and LF in `text` are replaced by spaces so that an error
/// message can never break the framing.
pub fn write_error(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'-');
    put_line_text(out, text);
}

fn put_line_text(out: &mut BytesMut, text: &[u8]) {
    out.reserve(text.len() + 2);
    for &b in text {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

/// `:n\r\n`
pub fn write_integer(out: &mut BytesMut, n: i64) {
    out.put_u8(b':');
    put_decimal(out, n);
    out.put_slice(b"\r\n");
}

/// `$len\r\ndata\r\n`, or `$-1\r\n` for `None`.
pub fn write_bulk(out: &mut BytesMut, data: Option<&[u8]>) {
    match data {
        None => out.put_slice(b"$-1\r\n"),
        Some(d) => {
            out.reserve(d.len() + 16);
            out.put_u8(b'$');
            put_decimal(out, d.len() as i64);
            out.put_slice(b"\r\n");
            out.put_slice(d);
            out.put_slice(b"\r\n");
        }
    }
}

/// `*n\r\n` (the elements follow), or `*-1\r\n` for `None`.
pub fn write_array_header(out: &mut BytesMut, len: Option<usize>) {
    match len {
        None => out.put_slice(b"*-1\r\n"),
        Some(n) => {
            out.put_u8(b'*');
            put_decimal(out, n as i64);
            out.put_slice(b"\r\n");
        }
    }
}

/// Encodes a whole frame.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Simple(s) => write_simple(out, s),
        Frame::Error(s) => write_error(out, s),
        Frame::Integer(n) => write_integer(out, *n),
        Frame::Bulk(b) => write_bulk(out, b.as_deref()),
        Frame::Array(None) => write_array_header(out, None),
        Frame::Array(Some(items)) => {
            write_array_header(out, Some(items.len()));
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// Encodes a command (an array of bulk strings), as a client sends it.
pub fn encode_command<'a>(parts: impl ExactSizeIterator<Item = &'a [u8]>, out: &mut BytesMut) {
    write_array_header(out, Some(parts.len()));
    for p in parts {
        write_bulk(out, Some(p));
    }
}

/// A command as the server receives it: an array of bulk strings.
/// Returns `None` when the frame is not such an array (a non-fatal error:
/// framing is intact, the caller replies with an error and carries on).
pub fn command_args(frame: Frame) -> Option<Vec<Bytes>> {
    match frame {
        Frame::Array(Some(items)) if !items.is_empty() => items
            .into_iter()
            .map(|f| match f {
                Frame::Bulk(Some(b)) => Some(b),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Frame>, RespError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = parse(&mut buf, &RespLimits::default())? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn parses_a_command_zero_copy() {
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"[..]);
        let base = buf.as_ptr() as usize;
        let frame = parse(&mut buf, &RespLimits::default()).unwrap().unwrap();
        assert!(buf.is_empty());
        let args = command_args(frame).unwrap();
        assert_eq!(
            args,
            vec![
                Bytes::from_static(b"SET"),
                Bytes::from_static(b"k"),
                Bytes::from_static(b"hello")
            ]
        );
        // The value is a slice of the receive buffer, not a copy.
        assert_eq!(args[2].as_ptr() as usize, base + 24);
    }

    #[test]
    fn incomplete_input_waits_for_more() {
        let full = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(
                parse(&mut buf, &RespLimits::default()),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn pipelined_frames_parse_one_by_one() {
        let frames = parse_all(b"+OK\r\n:-42\r\n$-1\r\n*-1\r\n-ERR bad\r\n$0\r\n\r\n").unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Simple(Bytes::from_static(b"OK")),
                Frame::Integer(-42),
                Frame::Bulk(None),
                Frame::Array(None),
                Frame::Error(Bytes::from_static(b"ERR bad")),
                Frame::Bulk(Some(Bytes::new())),
            ]
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(parse_all(b"?x\r\n"), Err(RespError::BadTypeByte(b'?')));
        assert!(matches!(
            parse_all(b"$abc\r\n"),
            Err(RespError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_all(b"$-2\r\n"),
            Err(RespError::BulkTooLong { .. })
        ));
        assert_eq!(parse_all(b"$3\r\nabcXY"), Err(RespError::MissingCrlf));
        assert!(matches!(
            parse_all(b":99999999999999999999\r\n"),
            Err(RespError::BadNumber { .. })
        ));
        assert!(matches!(
            parse_all(b"+a\rb\r\n"),
            Err(RespError::MissingCrlf)
        ));
    }

    #[test]
    fn limits_are_enforced_before_buffering() {
        let limits = RespLimits {
            max_bulk_len: 10,
            max_array_len: 3,
            max_depth: 2,
            max_buffered: 40,
        };
        let mut buf = BytesMut::from(&b"$11\r\n"[..]);
        assert!(matches!(
            parse(&mut buf, &limits),
            Err(RespError::BulkTooLong { len: 11, .. })
        ));
        let mut buf = BytesMut::from(&b"*4\r\n"[..]);
        assert!(matches!(
            parse(&mut buf, &limits),
            Err(RespError::ArrayTooLong { len: 4, .. })
        ));
        let mut buf = BytesMut::from(&b"*1\r\n*1\r\n*1\r\n:1\r\n"[..]);
        assert_eq!(parse(&mut buf, &limits), Err(RespError::TooDeep(2)));
        let mut buf = BytesMut::from(
            &b"*3\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$10\r\n012345678"[..],
        );
        assert_eq!(parse(&mut buf, &limits), Err(RespError::BufferOverflow(40)));
        // A huge declared array allocates nothing up front.
        let mut buf = BytesMut::from(&b"*1000000000\r\n"[..]);
        assert!(parse(&mut buf, &RespLimits::default()).is_err());
        // An endless line without CRLF is cut off.
        let mut buf = BytesMut::from(&vec![b'+'; MAX_LINE + 10][..]);
        assert_eq!(
            parse(&mut buf, &RespLimits::default()),
            Err(RespError::LineTooLong)
        );
    }

    #[test]
    fn non_array_commands_are_rejected_without_losing_framing() {
        assert_eq!(command_args(Frame::Integer(3)), None);
        assert_eq!(command_args(Frame::Array(Some(vec![]))), None);
        assert_eq!(
            command_args(Frame::Array(Some(vec![Frame::Integer(1)]))),
            None
        );
    }

    #[test]
    fn error_text_cannot_break_framing() {
        let mut out = BytesMut::new();
        write_error(&mut out, b"ERR a\r\nb");
        assert_eq!(&out[..], b"-ERR a  b\r\n");
        let mut out = BytesMut::new();
        write_integer(&mut out, i64::MIN);
        assert_eq!(&out[..], b":-9223372036854775808\r\n");
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,20}".prop_map(|s| Frame::Simple(Bytes::from(s))),
            "[a-zA-Z0-9 ]{0,20}".prop_map(|s| Frame::Error(Bytes::from(s))),
            any::<i64>().prop_map(Frame::Integer),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|b| Frame::Bulk(b.map(Bytes::from))),
            Just(Frame::Array(None)),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(|v| Frame::Array(Some(v)))
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&raw[..]);
            while let Ok(Some(_)) = parse(&mut buf, &RespLimits::default()) {}
        }

        #[test]
        fn arbitrary_resp_like_bytes_never_panic(parts in proptest::collection::vec(
            prop_oneof![Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"\r\n"[..]), Just(&b"-1"[..]), Just(&b"3"[..]), Just(&b"abc"[..]), Just(&b":"[..])], 0..40)) {
            let raw: Vec<u8> = parts.concat();
            let mut buf = BytesMut::from(&raw[..]);
            while let Ok(Some(_)) = parse(&mut buf, &RespLimits::default()) {}
        }

        #[test]
        fn parse_command_agrees_with_parse_and_command_args(
            frames in proptest::collection::vec(arb_frame(), 1..5),
            garbage in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                encode(f, &mut wire);
            }
            wire.extend_from_slice(&garbage);
            let limits = RespLimits::default();
            let mut slow = wire.clone();
            let mut fast = wire.clone();
            let mut ranges = Vec::new();
            loop {
                let expected = parse(&mut slow, &limits);
                let got = parse_command(&fast, &limits, &mut ranges);
                match (expected, got) {
                    (Ok(None), Ok(None)) | (Err(_), Err(_)) => break,
                    (Ok(Some(frame)), Ok(Some(cmd))) => {
                        let len = match cmd {
                            Command::Args { len } => {
                                let args: Vec<Bytes> = ranges
                                    .iter()
                                    .map(|r| Bytes::copy_from_slice(&fast[r.clone()]))
                                    .collect();
                                prop_assert_eq!(command_args(frame), Some(args));
                                len
                            }
                            Command::NotCommand { len } => {
                                prop_assert_eq!(command_args(frame), None);
                                len
                            }
                        };
                        fast.advance(len);
                        prop_assert_eq!(&fast[..], &slow[..]);
                    }
                    (e, g) => prop_assert!(false, "parse gave {:?}, parse_command {:?}", e, g),
                }
            }
        }

        #[test]
        fn roundtrip(frames in proptest::collection::vec(arb_frame(), 1..5), split in any::<prop::sample::Index>()) {
            let mut wire = BytesMut::new();
            for f in &frames {
                encode(f, &mut wire);
            }
            // Feed the bytes in two pieces, as a socket might.
            let cut = split.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = parse(&mut buf, &RespLimits::default()).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = parse(&mut buf, &RespLimits::default()).unwrap() {
                got.push(f);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, frames);
        }
    }
}
