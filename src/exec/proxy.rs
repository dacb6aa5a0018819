//! Reads the PROXY protocol header (`http::proxy`) at the start of an accepted connection,
//! before anything else reads from it: the header is peeked at until it parses, then
//! exactly its bytes are consumed, so what follows it (an HTTP request, or a TLS
//! ClientHello on the HTTPS listener) stays in the socket for whoever reads next.
//!
//! The wait is bounded by the connection's `Watch`, as `Conn::read_more` bounds a read:
//! the ticker shuts the read side down at the deadline (or at shutdown: the wait counts as
//! idle, like waiting for a first request), which ends the pending peek. No timer per
//! connection. A connection that sends a non-header is refused at its first wrong byte,
//! one that closes halfway at its close, without waiting for the deadline.

use crate::exec::poller::Sock;
use crate::exec::watch::Watch;
use crate::http::proxy::{self, Header, ProxyError};
use std::fmt;
use std::io;
use std::time::Instant;

/// Why a connection has no valid header: it is to be closed without an answer.
#[derive(Debug)]
pub enum HeaderError {
    /// The bytes are not a PROXY protocol header (a client that skipped the balancer).
    Invalid(ProxyError),
    /// No complete header by the deadline.
    TimedOut,
    /// The peer closed (or the read side was shut down at shutdown) before a complete
    /// header; nothing at all is a balancer's TCP check or a port scan.
    Closed,
    /// The socket failed (a reset).
    Io(io::Error),
}

impl HeaderError {
    /// Short, stable, for logs and metrics labels (`ProxyError::reason` for `Invalid`).
    pub fn reason(&self) -> &'static str {
        match self {
            HeaderError::Invalid(e) => e.reason(),
            HeaderError::TimedOut => "timeout",
            HeaderError::Closed => "closed",
            HeaderError::Io(_) => "io",
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Invalid(e) => e.fmt(f),
            HeaderError::TimedOut => f.write_str("no PROXY protocol header before the deadline"),
            HeaderError::Closed => f.write_str("closed before a complete PROXY protocol header"),
            HeaderError::Io(e) => write!(f, "reading the PROXY protocol header: {e}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Disarms the watch however `read_header` ends (returned, or dropped mid-wait).
struct Armed<'a>(&'a Watch);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.disarm();
    }
}

/// Reads the connection's PROXY protocol header, failing at `deadline`. On success exactly
/// the header's bytes have been consumed from `sock`.
pub async fn read_header(
    sock: &Sock,
    watch: &Watch,
    deadline: Instant,
) -> Result<Header, HeaderError> {
    if deadline <= Instant::now() {
        return Err(HeaderError::TimedOut);
    }
    // Once per proxied connection: room for the longest header, so a peek never leaves
    // `parse` undecided for lack of space (2 KiB; on the heap, not in the task).
    let mut buf = vec![0u8; proxy::MAX_LEN];
    watch.arm(deadline, true);
    let _armed = Armed(watch);
    // Bytes seen by the last peek: the next one waits for more.
    let mut seen = 0;
    let (header, len) = loop {
        let n = sock
            .peek(&mut buf, seen + 1)
            .await
            .map_err(HeaderError::Io)?;
        if watch.take_expired() {
            return Err(HeaderError::TimedOut);
        }
        match proxy::parse(&buf[..n]) {
            Ok(Some(done)) => break done,
            Err(e) => return Err(HeaderError::Invalid(e)),
            // No more bytes will come (the peer closed mid-header, or never sent one).
            Ok(None) if n <= seen => return Err(HeaderError::Closed),
            Ok(None) => seen = n,
        }
    };
    // The header's bytes are queued (just peeked), so this read returns at once; it
    // takes them only, and the socket stays readable for what follows.
    let mut done = 0;
    while done < len {
        match sock
            .read(&mut buf[done..len])
            .await
            .map_err(HeaderError::Io)?
        {
            0 => return Err(HeaderError::Closed),
            k => done += k,
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::poller::Poller;
    use crate::exec::timer;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::rc::Rc;
    use std::time::Duration;

    /// What the client side does, in order, from its own thread.
    enum Step {
        Send(Vec<u8>),
        /// One byte at a time, a pause after each.
        Drip(Vec<u8>, Duration),
        /// TCP urgent data (MSG_OOB).
        Urgent(u8),
        Pause(Duration),
        /// Shut its sending side down (FIN), keep reading.
        Fin,
    }

    /// Plays `steps` on a client connected to a new socket; the client stays open until
    /// the returned sender is dropped (or sends).
    fn client(
        listener: &TcpListener,
        steps: Vec<Step>,
    ) -> (
        TcpStream,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let mut c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            for s in steps {
                match s {
                    Step::Send(b) => c.write_all(&b).unwrap(),
                    Step::Drip(b, pause) => {
                        for x in b {
                            c.write_all(&[x]).unwrap();
                            std::thread::sleep(pause);
                        }
                    }
                    Step::Urgent(b) => {
                        // SAFETY: sends one byte from a live buffer on a live socket.
                        let n = unsafe {
                            libc::send(c.as_raw_fd(), [b].as_ptr().cast(), 1, libc::MSG_OOB)
                        };
                        assert_eq!(n, 1);
                    }
                    Step::Pause(d) => std::thread::sleep(d),
                    Step::Fin => c.shutdown(Shutdown::Write).unwrap(),
                }
            }
            let _ = wait.recv();
        });
        (server, done, t)
    }

    /// Runs `f` while a ticker enforces the watch's deadline every 5 ms (as the
    /// executor's does every 100 ms).
    async fn ticking<T>(watch: &Watch, f: impl std::future::Future<Output = T>) -> T {
        async fn tick<T>(watch: &Watch) -> T {
            loop {
                timer::sleep(Duration::from_millis(5)).await;
                watch.check(Instant::now(), false);
            }
        }
        futures_lite::future::or(f, tick(watch)).await
    }

    /// Reads exactly `n` bytes after the header (what the connection's reader gets).
    async fn read_rest(sock: &Sock, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let mut got = 0;
        let read = async {
            while got < n {
                let k = sock.read(&mut out[got..]).await.unwrap();
                assert!(k > 0, "EOF after {got} of {n} bytes");
                got += k;
            }
        };
        let limit = async {
            timer::sleep(Duration::from_secs(5)).await;
            panic!("the bytes after the header did not arrive");
        };
        futures_lite::future::or(read, limit).await;
        out
    }

    fn v2_tcp6_with_tlvs() -> Vec<u8> {
        let mut h = proxy::V2_SIGNATURE.to_vec();
        let mut body = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        body.extend(std::net::Ipv6Addr::LOCALHOST.octets());
        body.extend([0xc3, 0x50, 0x01, 0xbb]); // 50000 -> 443
        body.extend([0x01, 0x00, 0x02, b'h', b'2']); // ALPN
        body.extend([0x04, 0x00, 0x03, 0, 0, 0]); // NOOP
        h.extend([0x21, 0x21]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    #[test]
    fn proxy_read_header_over_real_sockets() {
        let v1 = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 80\r\n".to_vec();
        let v1_header = Header::Proxied {
            src: "203.0.113.9:51234".parse().unwrap(),
            dst: "192.0.2.1:80".parse().unwrap(),
        };
        let request = b"POST /topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".to_vec();
        let check = b"OPTIONS / HTTP/1.0\r\n\r\n".to_vec();
        let hello = {
            let mut h = vec![0x16, 0x03, 0x01, 0x00, 0xc0, 0x01];
            h.extend([0x42; 190]);
            h
        };
        let local = {
            let mut h = proxy::V2_SIGNATURE.to_vec();
            h.extend([0x20, 0x00, 0x00, 0x00]);
            h
        };
        let cat = |a: &[u8], b: &[u8]| [a, b].concat();
        let ms = Duration::from_millis;
        // (name, client steps, expected header or error reason, bytes left for the next
        //  reader, within how long the result must come: None, at the deadline)
        type Case = (
            &'static str,
            Vec<Step>,
            Result<Header, &'static str>,
            Vec<u8>,
            Option<Duration>,
        );
        let soon = Some(ms(100));
        let cases: Vec<Case> = vec![
            (
                "v1 and a request in one segment",
                vec![Step::Send(cat(&v1, &request))],
                Ok(v1_header),
                request.clone(),
                soon,
            ),
            (
                // A balancer's HTTP check through send-proxy: the whole exchange is
                // shorter than the peek buffer, and nothing more comes.
                "v1 and a short complete request",
                vec![Step::Send(cat(&v1, &check))],
                Ok(v1_header),
                check.clone(),
                soon,
            ),
            (
                "v1 alone, the request later",
                vec![
                    Step::Send(v1.clone()),
                    Step::Pause(ms(150)),
                    Step::Send(request.clone()),
                ],
                Ok(v1_header),
                request.clone(),
                soon,
            ),
            (
                "v1 dripped byte by byte",
                vec![Step::Drip(v1.clone(), ms(1)), Step::Send(request.clone())],
                Ok(v1_header),
                request.clone(),
                Some(ms(250)),
            ),
            (
                "v2 with TLVs before a ClientHello",
                vec![Step::Send(cat(&v2_tcp6_with_tlvs(), &hello))],
                Ok(Header::Proxied {
                    src: "[2001:db8::7]:50000".parse().unwrap(),
                    dst: "[::1]:443".parse().unwrap(),
                }),
                hello.clone(),
                soon,
            ),
            (
                "v2 split inside the signature and inside the TLVs",
                {
                    let h = cat(&v2_tcp6_with_tlvs(), &hello);
                    vec![
                        Step::Send(h[..5].to_vec()),
                        Step::Pause(ms(20)),
                        Step::Send(h[5..60].to_vec()),
                        Step::Pause(ms(20)),
                        Step::Send(h[60..].to_vec()),
                    ]
                },
                Ok(Header::Proxied {
                    src: "[2001:db8::7]:50000".parse().unwrap(),
                    dst: "[::1]:443".parse().unwrap(),
                }),
                hello.clone(),
                Some(ms(150)),
            ),
            (
                "v2 LOCAL, then the balancer closes",
                vec![Step::Send(local.clone()), Step::Fin],
                Ok(Header::Local),
                vec![],
                soon,
            ),
            (
                "a plain HTTP request",
                vec![Step::Send(request.clone())],
                Err("not_proxy"),
                vec![],
                soon,
            ),
            (
                "a TLS ClientHello",
                vec![Step::Send(hello.clone())],
                Err("not_proxy"),
                vec![],
                soon,
            ),
            (
                "a bad port, found before the line ends",
                vec![Step::Send(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999".to_vec())],
                Err("v1_port"),
                vec![],
                soon,
            ),
            (
                "connect and close",
                vec![Step::Fin],
                Err("closed"),
                vec![],
                soon,
            ),
            (
                "half a header, then close",
                vec![Step::Send(v1[..20].to_vec()), Step::Fin],
                Err("closed"),
                vec![],
                soon,
            ),
            ("silence", vec![], Err("timeout"), vec![], None),
            (
                "half a header, then silence",
                vec![Step::Send(v1[..20].to_vec())],
                Err("timeout"),
                vec![],
                None,
            ),
            (
                "urgent data inside the header",
                vec![
                    Step::Send(v1[..20].to_vec()),
                    Step::Urgent(b'!'),
                    Step::Send(v1[20..].to_vec()),
                ],
                Err("timeout"),
                vec![],
                None,
            ),
        ];
        let deadline_after = ms(300);
        glommio::LocalExecutor::default().run(async move {
            let poller = Poller::new().unwrap();
            glommio::spawn_local(poller.clone().run()).detach();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            for (name, steps, want, rest, within) in cases {
                let (stream, done, t) = client(&listener, steps);
                let sock = Sock::new(stream, poller.clone()).unwrap();
                let watch = Rc::new(Watch::new(sock.fd()));
                let t0 = Instant::now();
                let deadline = t0 + deadline_after;
                let got = ticking(&watch, read_header(&sock, &watch, deadline)).await;
                let took = t0.elapsed();
                match (&got, &want) {
                    (Ok(h), Ok(w)) => assert_eq!(h, w, "{name}"),
                    (Err(e), Err(w)) => assert_eq!(e.reason(), *w, "{name}: {e}"),
                    _ => panic!("{name}: got {got:?}, want {want:?}"),
                }
                if let Some(max) = within {
                    assert!(took < max, "{name}: took {took:?}");
                } else {
                    assert!(took >= deadline_after, "{name}: ended early, {took:?}");
                    assert!(took < deadline_after * 3, "{name}: took {took:?}");
                }
                if got.is_ok() {
                    assert_eq!(read_rest(&sock, rest.len()).await, rest, "{name}");
                    if name.contains("closes") {
                        let mut b = [0u8; 8];
                        assert_eq!(sock.read(&mut b).await.unwrap(), 0, "{name}: EOF");
                    }
                }
                drop(done);
                t.join().unwrap();
            }
        });
    }
}
