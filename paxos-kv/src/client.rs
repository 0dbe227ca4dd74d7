//! A minimal async RESP2 client, for the demo, the fault tests and tools.

use crate::resp::{self, Frame, RespLimits};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request failed at the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// No reply within the timeout.
    #[error("timed out")]
    Timeout,
    /// The server sent bytes that are not RESP.
    #[error("protocol: {0}")]
    Protocol(#[from] resp::RespError),
    /// The server closed the connection.
    #[error("connection closed")]
    Closed,
}

/// One connection to a server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    out: BytesMut,
    timeout: Duration,
}

impl Client {
    /// Connects with a timeout that also applies to every later request.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout)??;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(4096),
            timeout,
        })
    }

    /// Sends one command and waits for its reply.
    pub async fn cmd(&mut self, parts: &[&[u8]]) -> Result<Frame, ClientError> {
        self.out.clear();
        resp::encode_command(parts.iter().copied(), &mut self.out);
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&self.out).await?;
            self.read_frame().await
        })
        .await
        .map_err(|_| ClientError::Timeout)?
    }

    /// Sends every command at once (pipelined) and waits for all the
    /// replies, in order. The timeout applies to the whole exchange.
    pub async fn pipeline<'a>(
        &mut self,
        commands: impl IntoIterator<Item = &'a [&'a [u8]]>,
    ) -> Result<Vec<Frame>, ClientError> {
        self.out.clear();
        let mut sent = 0;
        for parts in commands {
            resp::encode_command(parts.iter().copied(), &mut self.out);
            sent += 1;
        }
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&self.out).await?;
            let mut replies = Vec::with_capacity(sent);
            while replies.len() < sent {
                replies.push(self.read_frame().await?);
            }
            Ok(replies)
        })
        .await
        .map_err(|_| ClientError::Timeout)?
    }

    async fn read_frame(&mut self) -> Result<Frame, ClientError> {
        let limits = RespLimits {
            max_bulk_len: 64 << 20,
            max_array_len: 1 << 20,
            max_depth: 8,
            max_buffered: 128 << 20,
        };
        loop {
            if let Some(frame) = resp::parse(&mut self.buf, &limits)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

/// The address in a `-MOVED <slot> <addr>` error, if `frame` is one.
pub fn moved_to(frame: &Frame) -> Option<SocketAddr> {
    match frame {
        Frame::Error(e) => {
            let text = std::str::from_utf8(e).ok()?;
            let rest = text.strip_prefix("MOVED ")?;
            rest.split_whitespace().nth(1)?.parse().ok()
        }
        _ => None,
    }
}

/// The text of an `INFO` field (`name:value` line).
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The number in an `INFO` field, if the field is there and numeric.
pub fn info_number(info: &str, name: &str) -> Option<u64> {
    info_field(info, name)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn parses_moved_and_info() {
        assert_eq!(
            moved_to(&Frame::Error(Bytes::from_static(b"MOVED 0 127.0.0.1:6002"))),
            Some("127.0.0.1:6002".parse().unwrap())
        );
        assert_eq!(moved_to(&Frame::Error(Bytes::from_static(b"ERR x"))), None);
        assert_eq!(
            info_field("# R\r\nrole:leader\r\nid:1\r\n", "role"),
            Some("leader")
        );
        assert_eq!(
            info_number("# R\r\nrole:leader\r\nid:12\r\n", "id"),
            Some(12)
        );
        assert_eq!(info_number("# R\r\nrole:leader\r\n", "role"), None);
    }
}
