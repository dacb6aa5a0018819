//! A minimal blocking HTTP/1.1 client over std TcpStream, so tests control exactly which
//! bytes go on the wire (pipelining, chunking, malformed input).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A numeric field of the JSON answer, e.g. "offset".
    pub fn json_i64(&self, field: &str) -> i64 {
        let t = self.text();
        let pat = format!("\"{field}\":");
        let at = t.find(&pat).unwrap_or_else(|| panic!("{field} in {t}")) + pat.len();
        t[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect::<String>()
            .parse()
            .unwrap()
    }
}

/// A client's byte stream: TCP, or TLS over TCP (`common::tls`).
pub trait Wire: Read + Write {
    /// The TCP connection underneath, for timeouts.
    fn tcp(&self) -> &TcpStream;
}

impl Wire for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

pub struct Client<S = TcpStream> {
    pub s: S,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(Client::over(s))
    }
}

impl<S: Wire> Client<S> {
    pub fn over(s: S) -> Client<S> {
        Client { s, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Reads one response: Content-Length framed, or chunked (a REST v3 stream's).
    pub fn read(&mut self) -> io::Result<Response> {
        loop {
            if let Some((n, status, headers)) = parse_response_head(&self.buf)? {
                if status == 100 {
                    self.buf.drain(..n);
                    return Ok(Response {
                        status,
                        headers,
                        body: vec![],
                    });
                }
                if headers
                    .iter()
                    .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
                {
                    self.buf.drain(..n);
                    let body = self.read_chunks()?;
                    return Ok(Response {
                        status,
                        headers,
                        body,
                    });
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                while self.buf.len() < n + len {
                    self.fill()?;
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Ok(Response {
                    status,
                    headers,
                    body,
                });
            }
            self.fill()?;
        }
    }

    /// A chunked body, whole (no trailers are expected).
    fn read_chunks(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let eol = loop {
                match self.buf.windows(2).position(|w| w == b"\r\n") {
                    Some(i) => break i,
                    None => self.fill()?,
                }
            };
            let line = std::str::from_utf8(&self.buf[..eol]).unwrap().to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            while self.buf.len() < eol + 2 + size + 2 {
                self.fill()?;
            }
            body.extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
            self.buf.drain(..eol + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut tmp = [0u8; 65536];
        let n = self.s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// True when the server closes the connection (EOF or reset) within `wait`.
    /// Bytes arriving first are kept for `read`.
    pub fn closed(&mut self, wait: Duration) -> bool {
        self.s.tcp().set_read_timeout(Some(wait)).unwrap();
        let mut tmp = [0u8; 4096];
        loop {
            match self.s.read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) => return e.kind() == io::ErrorKind::ConnectionReset,
            }
        }
    }

    pub fn request(&mut self, bytes: &[u8]) -> io::Result<Response> {
        self.send(bytes)?;
        self.read()
    }
}

/// Builds a POST with a Content-Length body and extra headers.
pub fn post(path: &str, body: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(body);
    b
}

pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut c = Client::connect(addr)?;
    c.request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
}

/// A parsed response head: its length, the status, and headers with lowercase names.
pub type RespHead = (usize, u16, Vec<(String, String)>);

/// Parses a response head, or None if it is still partial.
pub fn parse_response_head(buf: &[u8]) -> io::Result<Option<RespHead>> {
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut hs);
    let httparse::Status::Complete(n) = r.parse(buf).map_err(io::Error::other)? else {
        return Ok(None);
    };
    let headers = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(Some((n, r.code.unwrap_or(0), headers)))
}

/// Posts `n` records `{prefix}{i}` one after another on one connection with `Kafka-Ack:
/// {ack}`, with `pause` after each answer (every one must be `status`); the median answer
/// time.
pub fn ack_p50(
    addr: SocketAddr,
    prefix: &str,
    n: usize,
    pause: Duration,
    ack: &str,
    status: u16,
) -> Duration {
    let mut c = Client::connect(addr).unwrap();
    let mut lat = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        let body = format!("{prefix}{i}");
        let r = c
            .request(&post("/", body.as_bytes(), &[("Kafka-Ack", ack)]))
            .unwrap();
        assert_eq!(r.status, status, "{}", r.text());
        lat.push(t0.elapsed());
        std::thread::sleep(pause);
    }
    lat.sort();
    eprintln!("ack={ack} answer times: {lat:?}");
    lat[lat.len() / 2]
}
