//! A connection's replies waiting for its socket, written with vectored
//! writes.
//!
//! A reply is one `Bytes` (a GET's reply is the buffer the state machine
//! built), so a large reply is queued as it is and handed to `writev`
//! without another copy: each pending reply costs its own bytes once.
//! Small replies (`+OK`, integers, errors) are copied into one tail buffer
//! instead, so a pipeline of them leaves in few iovecs.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Replies at most this long are copied into the tail buffer.
const COALESCE_MAX: usize = 1024;
/// Most iovecs handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// A tail buffer that grew past this is not kept once the chain is empty.
const KEEP_TAIL_CAPACITY: usize = 64 * 1024;

/// Unwritten replies, in order.
#[derive(Debug, Default)]
pub struct ReplyChain {
    /// Whole replies (and sealed runs of small ones), ahead of `tail`.
    segments: VecDeque<Bytes>,
    /// Small replies after the last segment.
    tail: BytesMut,
    /// Unwritten bytes in `segments` and `tail`.
    len: usize,
}

impl ReplyChain {
    /// An empty chain.
    pub fn new() -> ReplyChain {
        ReplyChain::default()
    }

    /// Unwritten bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a reply after the others.
    pub fn push(&mut self, reply: Bytes) {
        self.len += reply.len();
        if reply.len() <= COALESCE_MAX {
            self.tail.extend_from_slice(&reply);
        } else {
            if !self.tail.is_empty() {
                self.segments.push_back(self.tail.split().freeze());
            }
            self.segments.push_back(reply);
        }
    }

    /// Writes as much as one vectored write takes; returns the bytes
    /// written (0 only if the chain is empty or the socket took nothing).
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<usize> {
        let n = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut used = 0;
            for seg in self.segments.iter().take(MAX_IOVECS) {
                slices[used] = IoSlice::new(seg);
                used += 1;
            }
            if used < MAX_IOVECS && !self.tail.is_empty() {
                slices[used] = IoSlice::new(&self.tail);
                used += 1;
            }
            if used == 0 {
                return Ok(0);
            }
            w.write_vectored(&slices[..used]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.consume(n);
        Ok(n)
    }

    /// Drops the first `n` unwritten bytes.
    fn consume(&mut self, mut n: usize) {
        assert!(n <= self.len, "consumed more than the chain holds");
        self.len -= n;
        while n > 0 {
            match self.segments.front_mut() {
                Some(seg) if seg.len() <= n => {
                    n -= seg.len();
                    self.segments.pop_front();
                }
                Some(seg) => {
                    seg.advance(n);
                    n = 0;
                }
                None => {
                    self.tail.advance(n);
                    n = 0;
                }
            }
        }
        if self.len == 0 {
            // Reuse the tail's buffer, unless a burst grew it: then give it back.
            if self.tail.capacity() > KEEP_TAIL_CAPACITY {
                self.tail = BytesMut::new();
            } else {
                self.tail.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A socket that takes at most `per_write` bytes per call and records
    /// the address of every iovec it was given.
    struct Trickle {
        out: Vec<u8>,
        per_write: usize,
        iovec_ptrs: Vec<*const u8>,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            for b in bufs {
                self.iovec_ptrs.push(b.as_ptr());
            }
            let mut room = self.per_write;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.out.extend_from_slice(&b[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_every_reply_in_order_across_partial_writes() {
        let big = Bytes::from(vec![7u8; 5000]);
        let mut chain = ReplyChain::new();
        let mut expect = Vec::new();
        for (i, reply) in [
            Bytes::from_static(b"+OK\r\n"),
            big.clone(),
            Bytes::from_static(b":1\r\n"),
            Bytes::from_static(b":2\r\n"),
            big.clone(),
        ]
        .into_iter()
        .enumerate()
        {
            expect.extend_from_slice(&reply);
            chain.push(reply);
            assert_eq!(chain.len(), expect.len(), "after push {i}");
        }
        let mut sock = Trickle {
            out: Vec::new(),
            per_write: 777,
            iovec_ptrs: Vec::new(),
        };
        while !chain.is_empty() {
            let before = chain.len();
            let n = chain.write_to(&mut sock).await.unwrap();
            assert_eq!(chain.len(), before - n);
        }
        assert_eq!(sock.out, expect);
        // The large reply went out of its own buffer: no copy was made.
        assert!(sock.iovec_ptrs.contains(&big.as_ptr()));
        assert_eq!(chain.write_to(&mut sock).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_burst_of_small_replies_leaves_in_one_write_and_gives_back_its_buffer() {
        let mut chain = ReplyChain::new();
        for _ in 0..100_000 {
            chain.push(Bytes::from_static(b"+OK\r\n"));
        }
        let mut sock = Trickle {
            out: Vec::new(),
            per_write: usize::MAX,
            iovec_ptrs: Vec::new(),
        };
        assert_eq!(chain.write_to(&mut sock).await.unwrap(), 500_000);
        assert!(chain.is_empty());
        assert!(chain.tail.capacity() <= KEEP_TAIL_CAPACITY);
    }
}
