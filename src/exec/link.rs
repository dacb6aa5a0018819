//! A connection's byte stream: the socket itself, or TLS over it. `Conn` reads and
//! writes plaintext through `Link` and never sees which.
//!
//! TLS is rustls's buffered `ServerConnection` over the executor's `Sock`: socket reads
//! land in `inbuf` and are fed to rustls one call at a time, only when rustls holds no
//! plaintext the connection has not read yet (rustls refuses more once that buffer is
//! full, and a pipelining client can fill it). Writes encrypt the answers of one
//! `Conn::finish` into TLS records and send them with one syscall, as plain answers are.

use crate::exec::poller::Sock;
use rustls::{ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

pub enum Link {
    Plain(Sock),
    Tls(Box<Tls>),
}

/// Why a TLS connection ended before its handshake completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The client's first bytes are a plain HTTP request, not a TLS record: it gets a
    /// plain HTTP 400 saying so.
    PlainHttp,
    /// The client closed, timed out, or the handshake failed (rustls sent its alert).
    Failed,
}

impl Link {
    pub fn fd(&self) -> RawFd {
        match self {
            Link::Plain(s) => s.fd(),
            Link::Tls(t) => t.sock.fd(),
        }
    }

    /// Reads plaintext; 0 at the end of the stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(buf).await,
            Link::Tls(t) => t.read(buf).await,
        }
    }

    /// Sends all of `buf`; `on_block` runs before the first wait for buffer space.
    pub async fn write_all(&mut self, buf: &[u8], on_block: impl FnMut()) -> io::Result<()> {
        match self {
            Link::Plain(s) => s.write_all(buf, on_block).await,
            Link::Tls(t) => t.write_all(buf, on_block).await,
        }
    }
}

pub struct Tls {
    sock: Sock,
    tls: ServerConnection,
    /// Bytes read from the socket; `pos..len` not yet given to rustls.
    inbuf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// TLS records on their way to the socket.
    out: Vec<u8>,
}

/// One TLS record at most (16 KiB of payload and its overhead): each socket read can
/// then be handed to rustls whole.
const INBUF: usize = 16 * 1024 + 2048;

impl Tls {
    pub fn new(sock: Sock, cfg: Arc<ServerConfig>) -> io::Result<Tls> {
        let tls = ServerConnection::new(cfg).map_err(io::Error::other)?;
        Ok(Tls {
            sock,
            tls,
            inbuf: vec![0; INBUF].into_boxed_slice(),
            pos: 0,
            len: 0,
            out: Vec::new(),
        })
    }

    /// Runs the handshake to its end. The caller bounds it with a deadline (the socket
    /// is shut down when it passes, which ends the read here).
    pub async fn handshake(&mut self) -> Result<(), Refused> {
        let mut first = true;
        while self.tls.is_handshaking() {
            if self.flush(|| {}).await.is_err() {
                return Err(Refused::Failed);
            }
            if !self.tls.is_handshaking() {
                break;
            }
            if self.pos == self.len && !self.fill().await.map_err(|_| Refused::Failed)? {
                return Err(Refused::Failed);
            }
            // Every TLS connection starts with a handshake record (type 22); a request
            // line starts with a method's letters.
            if first && self.inbuf[0].is_ascii_uppercase() {
                return Err(Refused::PlainHttp);
            }
            first = false;
            if self.feed().is_err() {
                let _ = self.flush(|| {}).await;
                return Err(Refused::Failed);
            }
        }
        self.flush(|| {}).await.map_err(|_| Refused::Failed)
    }

    /// The end of a connection ingestd closes: close_notify tells the client, so that it
    /// can tell a complete answer from a truncated one.
    pub async fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush(|| {}).await;
    }

    /// Writes a plain (unencrypted) answer to a client that spoke plain HTTP here.
    pub async fn write_plain(&mut self, bytes: &[u8]) {
        let _ = self.sock.write_all(bytes, || {}).await;
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                // 0: the client sent close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.pos < self.len {
                if let Err(e) = self.feed() {
                    // rustls queued an alert telling the client why.
                    let _ = self.flush(|| {}).await;
                    return Err(e);
                }
                continue;
            }
            // Key updates or alerts rustls wants to send before it reads on.
            self.flush(|| {}).await?;
            if !self.fill().await? {
                return Ok(0);
            }
        }
    }

    /// Reads the socket into `inbuf`; false at its end.
    async fn fill(&mut self) -> io::Result<bool> {
        let n = self.sock.read(&mut self.inbuf).await?;
        self.pos = 0;
        self.len = n;
        Ok(n > 0)
    }

    /// Hands rustls the next unread socket bytes and lets it decrypt them.
    fn feed(&mut self) -> io::Result<()> {
        let mut rest = &self.inbuf[self.pos..self.len];
        let n = self.tls.read_tls(&mut rest)?;
        self.pos += n;
        self.tls
            .process_new_packets()
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    async fn write_all(&mut self, mut buf: &[u8], mut on_block: impl FnMut()) -> io::Result<()> {
        while !buf.is_empty() {
            // rustls takes what fits its send buffer (64 KiB); the rest after a flush.
            let n = self.tls.writer().write(buf)?;
            buf = &buf[n..];
            self.flush(&mut on_block).await?;
        }
        Ok(())
    }

    /// Sends every TLS record rustls has ready.
    async fn flush(&mut self, mut on_block: impl FnMut()) -> io::Result<()> {
        while self.tls.wants_write() {
            self.out.clear();
            self.tls.write_tls(&mut self.out)?;
            self.sock.write_all(&self.out, &mut on_block).await?;
        }
        Ok(())
    }
}
