//! Pure PROXY protocol header parser (HAProxy's proxy-protocol.txt, versions 1 and 2) over
//! the first bytes a connection sent: no socket, no allocation. `parse` says "need more",
//! "a header of this many bytes", or why the bytes are not one; `exec::proxy` peeks at the
//! socket with it and consumes exactly the header.
//!
//! Strict, and early, because a listener with `proxy_protocol` on must tell a connection
//! that skipped the balancer (a browser's HTTP request, a TLS ClientHello) from a slow
//! balancer at once, not at the header timeout: the first byte must be `P` (version 1) or
//! `\r` (version 2), and every byte after it is checked as it arrives. Parsing is
//! left to right and each decision depends only on the bytes before it, so a prefix of any
//! input gives "need more" or exactly the result of the whole input, and "need more" never
//! lasts past `MAX_LEN` bytes (the fuzz target `fuzz/fuzz_targets/proxy.rs` checks both).
//!
//! Version 1 (text): `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or
//! `PROXY UNKNOWN[ <anything printable>]\r\n`, at most 107 bytes with the CRLF. Exactly one
//! space between fields; IPv4 as four decimal numbers of 0..=255 without leading zeros;
//! IPv6 as the standard text form (groups of 1 to 4 hex digits, one `::`, an IPv4 tail as
//! in `::ffff:10.0.0.1`, which HAProxy sends for an IPv4 client on a TCP6 line); ports
//! 0..=65535 without leading zeros; CRLF only (a bare CR or LF is refused).
//!
//! Version 2 (binary): the 12-byte signature, version 2, command LOCAL or PROXY, and a
//! length of at most `V2_MAX_PAYLOAD`. LOCAL (the balancer's own health checks) discards
//! the block, as the spec says. PROXY accepts TCP over IPv4 (`0x11`) and IPv6 (`0x21`);
//! AF_UNSPEC (`0x00`) and UNIX stream (`0x31`) fall back to the socket's own peer, as the
//! spec asks of a receiver that does not use those addresses (HAProxy sends `UNKNOWN` in
//! version 1 for the same connection). Datagram protocols (`0x12`, `0x22`, `0x32`) are
//! refused, although the spec's fallback covers them too: no datagram flow is what reached
//! a TCP listener, so such a header is broken or forged. Undefined families or protocols
//! are refused, as the spec says.
//! The address block must fit in the length, and the TLVs after it must tile the rest
//! exactly (3-byte type and length, the value inside the header); they are skipped, except
//! a CRC32C TLV, which must be 4 bytes and match (the spec's MUST for a receiver that
//! supports it; HAProxy checks it too).
//!
//! Addresses are returned in canonical form: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
//! becomes the IPv4 address, so a client counts as one address whichever line family the
//! balancer used.
//!
//! Why not the `ppp` crate (2.3.0, evaluated for this): it parses partial input and
//! borrows instead of allocating, but it is not strict enough to put in front of the
//! internet, and the checks it lacks are most of this file: `PROXY UNKNOWN\r` followed by
//! anything but `\n` stays "incomplete" however many bytes follow (a connection held until
//! the timeout); `PROXY TCP4 abc` is "incomplete" rather than wrong; a version 2 length of
//! 65535 is accepted (it waits for 64 KiB); TLVs are not validated when the header is
//! parsed (a TLV claiming 65535 bytes inside a 16-byte block parses); UDP families parse as
//! headers for a TCP connection. It also pulls in `thiserror` 1. Each of these was seen
//! running it on such inputs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest version 1 line, CRLF included (the spec's worst case, `PROXY UNKNOWN` with two
/// full IPv6 addresses and two 5-digit ports).
pub const V1_MAX_LEN: usize = 107;

/// The first 12 bytes of a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Largest version 2 length field (address block plus TLVs) accepted. The spec allows
/// 65535; HAProxy accepts what fits its buffer (tune.bufsize, 16 KiB by default) and
/// refuses any single TLV over 1 KiB. What senders put there is the 12- or 36-byte address
/// block and a few short TLVs (ALPN, authority up to 255 bytes, a unique ID up to 128,
/// HAProxy's SSL block with the client certificate's CN, a CRC32C, AWS's VPC endpoint ID):
/// well under 1 KiB. 2 KiB leaves room for all of them at once while a header that says
/// more is refused at its 16th byte, not after waiting for 64 KiB.
pub const V2_MAX_PAYLOAD: usize = 2048;

/// Longest header `parse` can accept: given this many bytes it never says "need more".
pub const MAX_LEN: usize = 16 + V2_MAX_PAYLOAD;

/// What a valid header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// LOCAL (health checks of the balancer), UNKNOWN, or a family whose addresses are not
    /// used (AF_UNSPEC, AF_UNIX): use the socket's own peer.
    Local,
    /// The client's address (`src`) and the address it connected to (`dst`).
    Proxied { src: SocketAddr, dst: SocketAddr },
}

/// Why the first bytes of a connection are not a valid PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither `PROXY ` nor the version 2 signature: a client that skipped the balancer
    /// (an HTTP request, a TLS ClientHello) or a balancer that does not send the header.
    NotProxy,
    /// Version 1: not `TCP4`, `TCP6` or `UNKNOWN`.
    V1Protocol,
    /// Version 1: an address that is not the family's canonical text form.
    V1Address,
    /// Version 1: a port that is not a decimal 0..=65535 without leading zeros.
    V1Port,
    /// Version 1: a separator or line end that is not exactly one space or CRLF, or a
    /// control or non-ASCII byte in an `UNKNOWN` line.
    V1Syntax,
    /// Version 1: no CRLF within 107 bytes.
    V1TooLong,
    /// Version 2: a version other than 2.
    V2Version,
    /// Version 2: a command other than LOCAL or PROXY.
    V2Command,
    /// Version 2, PROXY: an undefined family or protocol, or a datagram one.
    V2Family,
    /// Version 2: a length field over `V2_MAX_PAYLOAD`.
    V2TooLong,
    /// Version 2, PROXY: a length shorter than the family's address block.
    V2Address,
    /// Version 2: TLVs that do not tile the rest of the header, or a CRC32C TLV that is
    /// not 4 bytes.
    V2Tlv,
    /// Version 2: the CRC32C TLV does not match the header.
    V2Checksum,
}

impl ProxyError {
    /// Every error, for metrics that register their label set up front.
    pub const ALL: [ProxyError; 13] = [
        ProxyError::NotProxy,
        ProxyError::V1Protocol,
        ProxyError::V1Address,
        ProxyError::V1Port,
        ProxyError::V1Syntax,
        ProxyError::V1TooLong,
        ProxyError::V2Version,
        ProxyError::V2Command,
        ProxyError::V2Family,
        ProxyError::V2TooLong,
        ProxyError::V2Address,
        ProxyError::V2Tlv,
        ProxyError::V2Checksum,
    ];

    /// Short, stable, for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NotProxy => "not_proxy",
            ProxyError::V1Protocol => "v1_protocol",
            ProxyError::V1Address => "v1_address",
            ProxyError::V1Port => "v1_port",
            ProxyError::V1Syntax => "v1_syntax",
            ProxyError::V1TooLong => "v1_too_long",
            ProxyError::V2Version => "v2_version",
            ProxyError::V2Command => "v2_command",
            ProxyError::V2Family => "v2_family",
            ProxyError::V2TooLong => "v2_too_long",
            ProxyError::V2Address => "v2_address",
            ProxyError::V2Tlv => "v2_tlv",
            ProxyError::V2Checksum => "v2_checksum",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid PROXY protocol header ({})", self.reason())
    }
}

impl std::error::Error for ProxyError {}

/// Parses the PROXY protocol header at the start of `buf`.
/// `Ok(None)`: need more bytes. `Ok(Some((header, len)))`: the header is the first `len`
/// bytes (what follows belongs to the connection's own protocol). `Err`: not a header;
/// more bytes would not change that.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let r = match buf.first() {
        None => return Ok(None),
        Some(b'P') => v1(buf),
        Some(b'\r') => v2(buf),
        Some(_) => return Err(ProxyError::NotProxy),
    };
    match r {
        Ok(h) => Ok(Some(h)),
        Err(Stop::More) => Ok(None),
        Err(Stop::Bad(e)) => Err(e),
    }
}

/// Why a step did not produce its value.
enum Stop {
    /// The buffer ends before the step could decide.
    More,
    Bad(ProxyError),
}

impl From<ProxyError> for Stop {
    fn from(e: ProxyError) -> Stop {
        Stop::Bad(e)
    }
}

type Step<T> = Result<T, Stop>;

/// A version 1 line being read, one byte at a time.
struct Line<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Line<'_> {
    /// The next byte; `More` at the end of the buffer, `V1TooLong` past the longest line.
    fn next(&mut self) -> Step<u8> {
        if self.pos >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong.into());
        }
        let b = *self.buf.get(self.pos).ok_or(Stop::More)?;
        self.pos += 1;
        Ok(b)
    }

    /// The bytes of `lit`, each checked as it arrives.
    fn expect(&mut self, lit: &[u8], e: ProxyError) -> Step<()> {
        for &c in lit {
            if self.next()? != c {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// A dotted-quad IPv4 address ended by a space, each byte checked as it arrives.
    fn ipv4(&mut self) -> Step<IpAddr> {
        let mut octets = [0u8; 4];
        let (mut part, mut digits, mut value) = (0, 0, 0u32);
        loop {
            match self.next()? {
                d @ b'0'..=b'9' => {
                    // "0" is a number; "01" is octal to some parsers: refused.
                    if digits == 1 && value == 0 {
                        return Err(ProxyError::V1Address.into());
                    }
                    value = value * 10 + u32::from(d - b'0');
                    digits += 1;
                    if value > 255 {
                        return Err(ProxyError::V1Address.into());
                    }
                }
                b'.' if digits > 0 && part < 3 => {
                    octets[part] = value as u8;
                    (part, digits, value) = (part + 1, 0, 0);
                }
                b' ' if digits > 0 && part == 3 => {
                    octets[3] = value as u8;
                    return Ok(IpAddr::V4(Ipv4Addr::from(octets)));
                }
                _ => return Err(ProxyError::V1Address.into()),
            }
        }
    }

    /// An IPv6 address ended by a space: its characters checked as they arrive (hex
    /// digits, `:`, and `.` for an IPv4 tail; at most 45 of them), its form by the
    /// standard parser once the space arrives.
    fn ipv6(&mut self) -> Step<IpAddr> {
        // "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
        const MAX: usize = 45;
        let start = self.pos;
        loop {
            match self.next()? {
                b' ' => break,
                b if (b.is_ascii_hexdigit() || b == b':' || b == b'.')
                    && self.pos - start <= MAX => {}
                _ => return Err(ProxyError::V1Address.into()),
            }
        }
        // Only ASCII bytes got here.
        let text = std::str::from_utf8(&self.buf[start..self.pos - 1]).unwrap_or("");
        text.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::V1Address.into())
    }

    /// A port ended by `end`.
    fn port(&mut self, end: u8) -> Step<u16> {
        let (mut digits, mut value) = (0, 0u32);
        loop {
            match self.next()? {
                b if b == end && digits > 0 => return Ok(value as u16),
                d @ b'0'..=b'9' => {
                    if digits == 1 && value == 0 {
                        return Err(ProxyError::V1Port.into());
                    }
                    value = value * 10 + u32::from(d - b'0');
                    digits += 1;
                    if value > u32::from(u16::MAX) {
                        return Err(ProxyError::V1Port.into());
                    }
                }
                b' ' | b'\r' | b'\n' => return Err(ProxyError::V1Syntax.into()),
                _ => return Err(ProxyError::V1Port.into()),
            }
        }
    }
}

fn v1(buf: &[u8]) -> Step<(Header, usize)> {
    let mut l = Line { buf, pos: 0 };
    l.expect(b"PROXY ", ProxyError::NotProxy)?;
    match l.next()? {
        b'T' => {
            l.expect(b"CP", ProxyError::V1Protocol)?;
            let v6 = match l.next()? {
                b'4' => false,
                b'6' => true,
                _ => return Err(ProxyError::V1Protocol.into()),
            };
            l.expect(b" ", ProxyError::V1Protocol)?;
            let addr = |l: &mut Line| if v6 { l.ipv6() } else { l.ipv4() };
            let src = addr(&mut l)?;
            let dst = addr(&mut l)?;
            let sport = l.port(b' ')?;
            let dport = l.port(b'\r')?;
            l.expect(b"\n", ProxyError::V1Syntax)?;
            Ok((proxied(src, sport, dst, dport), l.pos))
        }
        b'U' => {
            l.expect(b"NKNOWN", ProxyError::V1Protocol)?;
            match l.next()? {
                b'\r' => {}
                // The rest of the line is to be ignored; it must still be a line of text.
                b' ' => loop {
                    match l.next()? {
                        b'\r' => break,
                        0x20..=0x7e => {}
                        _ => return Err(ProxyError::V1Syntax.into()),
                    }
                },
                _ => return Err(ProxyError::V1Protocol.into()),
            }
            l.expect(b"\n", ProxyError::V1Syntax)?;
            Ok((Header::Local, l.pos))
        }
        _ => Err(ProxyError::V1Protocol.into()),
    }
}

/// PP2_TYPE_CRC32C.
const TLV_CRC32C: u8 = 0x03;

fn v2(buf: &[u8]) -> Step<(Header, usize)> {
    for (i, &s) in V2_SIGNATURE.iter().enumerate() {
        if *buf.get(i).ok_or(Stop::More)? != s {
            return Err(ProxyError::NotProxy.into());
        }
    }
    let ver_cmd = *buf.get(12).ok_or(Stop::More)?;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version.into());
    }
    let proxy = match ver_cmd & 0x0f {
        0 => false,
        1 => true,
        _ => return Err(ProxyError::V2Command.into()),
    };
    let fam = *buf.get(13).ok_or(Stop::More)?;
    // The address block a PROXY header of this family starts with. LOCAL ignores the
    // family, as the spec says.
    let addr_len = match (proxy, fam) {
        (false, _) | (true, 0x00) => 0,
        (true, 0x11) => 12,
        (true, 0x21) => 36,
        (true, 0x31) => 216,
        _ => return Err(ProxyError::V2Family.into()),
    };
    let len = match buf.get(14..16) {
        Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
        None => return Err(Stop::More),
    };
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong.into());
    }
    if len < addr_len {
        return Err(ProxyError::V2Address.into());
    }
    let total = 16 + len;
    let h = buf.get(..total).ok_or(Stop::More)?;
    // LOCAL and AF_UNSPEC: the block is discarded unread.
    if !proxy || fam == 0x00 {
        return Ok((Header::Local, total));
    }
    tlvs(h, 16 + addr_len)?;
    let a = &h[16..16 + addr_len];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let header = match fam {
        0x11 => {
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            proxied(ip(0), port(8), ip(4), port(10))
        }
        0x21 => {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            proxied(ip(0), port(32), ip(16), port(34))
        }
        // AF_UNIX: no address of ours to report.
        _ => Header::Local,
    };
    Ok((header, total))
}

/// Checks that the TLVs from `at` tile the rest of the header `h` and that a CRC32C TLV
/// matches.
fn tlvs(h: &[u8], mut at: usize) -> Step<()> {
    while at < h.len() {
        if h.len() - at < 3 {
            return Err(ProxyError::V2Tlv.into());
        }
        let kind = h[at];
        let n = usize::from(u16::from_be_bytes([h[at + 1], h[at + 2]]));
        let value = at + 3;
        if h.len() - value < n {
            return Err(ProxyError::V2Tlv.into());
        }
        if kind == TLV_CRC32C {
            if n != 4 {
                return Err(ProxyError::V2Tlv.into());
            }
            let sent = u32::from_be_bytes([h[value], h[value + 1], h[value + 2], h[value + 3]]);
            // The checksum of the whole header with its own field zeroed.
            let crc = crc32c::crc32c(&h[..value]);
            let crc = crc32c::crc32c_append(crc, &[0; 4]);
            let crc = crc32c::crc32c_append(crc, &h[value + 4..]);
            if crc != sent {
                return Err(ProxyError::V2Checksum.into());
            }
        }
        at = value + n;
    }
    Ok(())
}

fn proxied(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Header {
    Header::Proxied {
        src: SocketAddr::new(src.to_canonical(), sport),
        dst: SocketAddr::new(dst.to_canonical(), dport),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxied_to(src: &str, dst: &str) -> Header {
        Header::Proxied {
            src: v4(src),
            dst: v4(dst),
        }
    }

    /// A version 2 header: signature, version/command byte, family byte, the length of
    /// `body`, then `body`.
    fn v2h(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([ver_cmd, fam]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend((value.len() as u16).to_be_bytes());
        t.extend(value);
        t
    }

    /// The body of a TCP over IPv4 header: 10.1.2.3:40000 -> 192.0.2.7:443, then `rest`.
    fn tcp4_body(rest: &[u8]) -> Vec<u8> {
        let mut b = vec![10, 1, 2, 3, 192, 0, 2, 7];
        b.extend(40000u16.to_be_bytes());
        b.extend(443u16.to_be_bytes());
        b.extend(rest);
        b
    }

    fn tcp6_body(rest: &[u8]) -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8:ffff::2".parse().unwrap();
        let mut b = src.octets().to_vec();
        b.extend(dst.octets());
        b.extend(65535u16.to_be_bytes());
        b.extend(8080u16.to_be_bytes());
        b.extend(rest);
        b
    }

    /// Fills the value of the header's CRC32C TLV (at `at`, the TLV's first byte).
    fn seal(mut h: Vec<u8>, at: usize) -> Vec<u8> {
        h[at + 3..at + 7].fill(0);
        let crc = crc32c::crc32c(&h);
        h[at + 3..at + 7].copy_from_slice(&crc.to_be_bytes());
        h
    }

    fn with_crc() -> Vec<u8> {
        let mut rest = tlv(0x01, b"http/1.1");
        let at = 16 + 12 + rest.len();
        rest.extend(tlv(TLV_CRC32C, &[0; 4]));
        rest.extend(tlv(0x05, &[7; 128]));
        seal(v2h(0x21, 0x11, &tcp4_body(&rest)), at)
    }

    /// Every valid header of the tests, with what it says.
    fn valid() -> Vec<(&'static str, Vec<u8>, Header)> {
        let ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let v6 = |s: &str, d: &str| Header::Proxied {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
        };
        let mut all_tlvs = tlv(0x01, b"h2");
        all_tlvs.extend(tlv(0x02, b"ingest.example.com"));
        all_tlvs.extend(tlv(0x04, b""));
        all_tlvs.extend(tlv(0x05, &[0xab; 128]));
        all_tlvs.extend(tlv(
            0x20,
            &[
                1, 0, 0, 0, 0, 0x21, 0, 7, b'T', b'L', b'S', b'v', b'1', b'.', b'3',
            ],
        ));
        all_tlvs.extend(tlv(0xea, b"\x01vpce-0123456789abcdef0"));
        let mut huge = tcp4_body(&[]);
        let pad = V2_MAX_PAYLOAD - huge.len() - 3;
        huge.extend(tlv(0x04, &vec![0; pad]));
        vec![
            (
                "v1 tcp4",
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
                proxied_to("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            (
                "v1 tcp4 largest",
                b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_vec(),
                proxied_to("255.255.255.255:65535", "255.255.255.255:65535"),
            ),
            (
                "v1 tcp4 zeros",
                b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n".to_vec(),
                proxied_to("0.0.0.0:0", "10.0.0.1:0"),
            ),
            (
                "v1 tcp6 longest",
                format!("PROXY TCP6 {ffff} {ffff} 65535 65535\r\n").into_bytes(),
                v6(
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                ),
            ),
            (
                "v1 tcp6 compressed",
                b"PROXY TCP6 2001:db8::1 ::1 51000 443\r\n".to_vec(),
                v6("[2001:db8::1]:51000", "[::1]:443"),
            ),
            (
                "v1 tcp6 with leading zeros in groups",
                b"PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0001 ::1 1 2\r\n".to_vec(),
                v6("[2001:db8::1]:1", "[::1]:2"),
            ),
            (
                "v1 tcp6 ipv4-mapped (HAProxy for an IPv4 client)",
                b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 1000 443\r\n".to_vec(),
                Header::Proxied {
                    src: "10.0.0.1:1000".parse().unwrap(),
                    dst: "[2001:db8::2]:443".parse().unwrap(),
                },
            ),
            ("v1 unknown", b"PROXY UNKNOWN\r\n".to_vec(), Header::Local),
            (
                "v1 unknown, longest line",
                format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n").into_bytes(),
                Header::Local,
            ),
            (
                "v2 proxy tcp4",
                v2h(0x21, 0x11, &tcp4_body(&[])),
                proxied_to("10.1.2.3:40000", "192.0.2.7:443"),
            ),
            (
                "v2 proxy tcp6",
                v2h(0x21, 0x21, &tcp6_body(&[])),
                v6("[2001:db8::1]:65535", "[2001:db8:ffff::2]:8080"),
            ),
            (
                "v2 proxy tcp6 ipv4-mapped",
                {
                    let mut b = Ipv4Addr::new(198, 51, 100, 9)
                        .to_ipv6_mapped()
                        .octets()
                        .to_vec();
                    b.extend(Ipv6Addr::LOCALHOST.octets());
                    b.extend([0, 80, 1, 187]);
                    v2h(0x21, 0x21, &b)
                },
                Header::Proxied {
                    src: "198.51.100.9:80".parse().unwrap(),
                    dst: "[::1]:443".parse().unwrap(),
                },
            ),
            (
                "v2 proxy tcp4 with TLVs",
                v2h(0x21, 0x11, &tcp4_body(&all_tlvs)),
                proxied_to("10.1.2.3:40000", "192.0.2.7:443"),
            ),
            (
                "v2 proxy tcp6 with TLVs",
                v2h(0x21, 0x21, &tcp6_body(&all_tlvs)),
                v6("[2001:db8::1]:65535", "[2001:db8:ffff::2]:8080"),
            ),
            (
                "v2 proxy tcp4 with a CRC32C",
                with_crc(),
                proxied_to("10.1.2.3:40000", "192.0.2.7:443"),
            ),
            (
                "v2 proxy tcp4, longest accepted",
                v2h(0x21, 0x11, &huge),
                proxied_to("10.1.2.3:40000", "192.0.2.7:443"),
            ),
            ("v2 local", v2h(0x20, 0x00, &[]), Header::Local),
            (
                "v2 local with an address block (ignored)",
                v2h(0x20, 0x11, &tcp4_body(&[])),
                Header::Local,
            ),
            (
                "v2 local, family ignored",
                v2h(0x20, 0xff, b"anything"),
                Header::Local,
            ),
            (
                "v2 local with TLVs",
                v2h(0x20, 0x00, &tlv(0x05, b"id")),
                Header::Local,
            ),
            ("v2 proxy unspec", v2h(0x21, 0x00, &[]), Header::Local),
            (
                "v2 proxy unspec with bytes (ignored)",
                v2h(0x21, 0x00, b"\x01"),
                Header::Local,
            ),
            (
                "v2 proxy unix stream",
                {
                    let mut b = vec![0u8; 216];
                    b[..9].copy_from_slice(b"/run/a.sk");
                    b.extend(tlv(0x04, b"x"));
                    v2h(0x21, 0x31, &b)
                },
                Header::Local,
            ),
        ]
    }

    /// What follows a header on a real connection.
    fn followers() -> Vec<Vec<u8>> {
        vec![
            vec![],
            b"POST /topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            client_hello(),
            b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n".to_vec(),
            V2_SIGNATURE.to_vec(),
            vec![0xff; 3000],
        ]
    }

    /// The start of a TLS 1.3 ClientHello record.
    fn client_hello() -> Vec<u8> {
        let mut h = vec![
            0x16, 0x03, 0x01, 0x00, 0xf8, 0x01, 0x00, 0x00, 0xf4, 0x03, 0x03,
        ];
        h.extend([0x5a; 32]);
        h.extend([0x20; 33]);
        h.extend([0x00, 0x08, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0x00, 0xff]);
        h
    }

    #[test]
    fn proxy_valid_headers_parse_whatever_follows() {
        for (name, h, want) in valid() {
            for f in followers() {
                let mut buf = h.clone();
                buf.extend(&f);
                assert_eq!(parse(&buf), Ok(Some((want, h.len()))), "{name}");
            }
        }
    }

    #[test]
    fn proxy_every_truncation_of_a_valid_header_needs_more() {
        for (name, h, _) in valid() {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Ok(None), "{name}: first {cut} bytes");
            }
        }
    }

    #[test]
    fn proxy_version_1_limits() {
        // The longest valid line is exactly the limit.
        let (_, longest, _) = valid()
            .into_iter()
            .find(|v| v.0 == "v1 unknown, longest line")
            .unwrap();
        assert_eq!(longest.len(), V1_MAX_LEN);
        // One byte more is too long, decided as soon as the 107th byte is not the LF.
        let mut over = longest[..V1_MAX_LEN - 2].to_vec();
        over.extend(b"f\r\n");
        assert_eq!(parse(&over[..V1_MAX_LEN - 1]), Ok(None));
        assert_eq!(parse(&over[..V1_MAX_LEN]), Err(ProxyError::V1TooLong));
        assert_eq!(parse(&over), Err(ProxyError::V1TooLong));
        // Never "need more" at the limit, whatever the line holds.
        let mut filler = b"PROXY UNKNOWN ".to_vec();
        filler.resize(V1_MAX_LEN + 1, b'a');
        assert_eq!(parse(&filler), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn proxy_never_needs_more_than_max_len() {
        let mut open = v2h(0x21, 0x11, &[]);
        open[14..16].copy_from_slice(&(V2_MAX_PAYLOAD as u16).to_be_bytes());
        open.extend(tcp4_body(&[]));
        open.resize(MAX_LEN - 1, 0x04);
        assert_eq!(parse(&open), Ok(None));
        // A NOOP TLV spanning the rest makes it complete at exactly MAX_LEN bytes.
        let mut full = v2h(
            0x21,
            0x11,
            &tcp4_body(&tlv(0x04, &vec![0; V2_MAX_PAYLOAD - 15])),
        );
        assert_eq!(full.len(), MAX_LEN);
        assert!(matches!(parse(&full), Ok(Some((_, MAX_LEN)))));
        // The same bytes one short of a TLV's end: the TLV overruns.
        full[16 + 12 + 2] += 1;
        assert_eq!(parse(&full), Err(ProxyError::V2Tlv));
    }

    /// A random byte string (xorshift), never starting with a header's first byte.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed;
        let mut v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        if v[0] == b'P' || v[0] == b'\r' {
            v[0] = 0;
        }
        v
    }

    /// Malformed inputs, each with its error and the byte count at which it is decided
    /// (no prefix shorter than that may be an error, every longer one must be).
    fn malformed() -> Vec<(&'static str, Vec<u8>, ProxyError, usize)> {
        use ProxyError::*;
        let l = |s: &str| s.as_bytes().to_vec();
        let mut v = vec![
            (
                "http get",
                l("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                NotProxy,
                1,
            ),
            (
                "http post",
                l("POST /topics/t HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
                NotProxy,
                2,
            ),
            ("http put", l("PUT /topics/t HTTP/1.1\r\n\r\n"), NotProxy, 2),
            (
                "http/2 preface",
                l("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
                NotProxy,
                3,
            ),
            (
                "http after empty lines",
                l("\r\nGET / HTTP/1.1\r\n\r\n"),
                NotProxy,
                3,
            ),
            ("tls client hello", client_hello(), NotProxy, 1),
            ("ssh banner", l("SSH-2.0-OpenSSH_9.2\r\n"), NotProxy, 1),
            ("nul", vec![0], NotProxy, 1),
            (
                "space before",
                l(" PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
                NotProxy,
                1,
            ),
            (
                "lower case",
                l("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
                NotProxy,
                1,
            ),
            ("no space after PROXY", l("PROXY\r\n"), NotProxy, 6),
            (
                "v1 lower-case protocol",
                l("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"),
                V1Protocol,
                7,
            ),
            (
                "v1 two spaces",
                l("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
                V1Protocol,
                7,
            ),
            (
                "v1 tcp5",
                l("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
                V1Protocol,
                10,
            ),
            (
                "v1 udp4",
                l("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
                V1Protocol,
                8,
            ),
            (
                "v1 tcp4 without fields",
                l("PROXY TCP4\r\n"),
                V1Protocol,
                11,
            ),
            ("v1 unknownx", l("PROXY UNKNOWNX\r\n"), V1Protocol, 14),
            (
                "v1 octet over 255",
                l("PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n"),
                V1Address,
                14,
            ),
            (
                "v1 octet leading zero",
                l("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"),
                V1Address,
                13,
            ),
            (
                "v1 three octets",
                l("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"),
                V1Address,
                17,
            ),
            (
                "v1 five octets",
                l("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"),
                V1Address,
                19,
            ),
            (
                "v1 empty octet",
                l("PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n"),
                V1Address,
                14,
            ),
            (
                "v1 ipv6 on tcp4",
                l("PROXY TCP4 ::1 ::1 1 2\r\n"),
                V1Address,
                12,
            ),
            (
                "v1 hex on tcp4",
                l("PROXY TCP4 1.2.3.a 5.6.7.8 1 2\r\n"),
                V1Address,
                18,
            ),
            (
                "v1 empty address",
                l("PROXY TCP4  5.6.7.8 1 2\r\n"),
                V1Address,
                12,
            ),
            (
                "v1 ipv4 on tcp6",
                l("PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
                V1Address,
                19,
            ),
            (
                "v1 nine groups",
                l("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"),
                V1Address,
                29,
            ),
            (
                "v1 two double colons",
                l("PROXY TCP6 1::2::3 ::1 1 2\r\n"),
                V1Address,
                19,
            ),
            (
                "v1 zone id",
                l("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
                V1Address,
                19,
            ),
            (
                "v1 bracketed",
                l("PROXY TCP6 [::1] ::1 1 2\r\n"),
                V1Address,
                12,
            ),
            (
                "v1 port over 65535",
                l("PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n"),
                V1Port,
                32,
            ),
            (
                "v1 port leading zero",
                l("PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n"),
                V1Port,
                29,
            ),
            (
                "v1 port sign",
                l("PROXY TCP4 1.2.3.4 5.6.7.8 +80 80\r\n"),
                V1Port,
                28,
            ),
            (
                "v1 six-digit port",
                l("PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n"),
                V1Port,
                35,
            ),
            (
                "v1 missing port",
                l("PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n"),
                V1Syntax,
                30,
            ),
            (
                "v1 bare LF",
                l("PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n"),
                V1Syntax,
                34,
            ),
            (
                "v1 CR without LF",
                l("PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rGET"),
                V1Syntax,
                35,
            ),
            (
                "v1 trailing space",
                l("PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n"),
                V1Syntax,
                34,
            ),
            ("v1 unknown bare LF", l("PROXY UNKNOWN\n"), V1Protocol, 14),
            (
                "v1 unknown CR then junk",
                l("PROXY UNKNOWN\rXXXX"),
                V1Syntax,
                15,
            ),
            (
                "v1 unknown control byte",
                l("PROXY UNKNOWN a\tb\r\n"),
                V1Syntax,
                16,
            ),
            (
                "v1 unknown non-ascii",
                "PROXY UNKNOWN é\r\n".as_bytes().to_vec(),
                V1Syntax,
                15,
            ),
            (
                "v2 version 1",
                v2h(0x11, 0x11, &tcp4_body(&[])),
                V2Version,
                13,
            ),
            (
                "v2 version 3",
                v2h(0x31, 0x11, &tcp4_body(&[])),
                V2Version,
                13,
            ),
            (
                "v2 command 2",
                v2h(0x22, 0x11, &tcp4_body(&[])),
                V2Command,
                13,
            ),
            (
                "v2 command 15",
                v2h(0x2f, 0x11, &tcp4_body(&[])),
                V2Command,
                13,
            ),
            ("v2 udp4", v2h(0x21, 0x12, &tcp4_body(&[])), V2Family, 14),
            ("v2 udp6", v2h(0x21, 0x22, &tcp6_body(&[])), V2Family, 14),
            ("v2 unix datagram", v2h(0x21, 0x32, &[0; 216]), V2Family, 14),
            (
                "v2 inet, no protocol",
                v2h(0x21, 0x10, &tcp4_body(&[])),
                V2Family,
                14,
            ),
            ("v2 no family, stream", v2h(0x21, 0x01, &[]), V2Family, 14),
            (
                "v2 family 4",
                v2h(0x21, 0x41, &tcp4_body(&[])),
                V2Family,
                14,
            ),
            (
                "v2 protocol 3",
                v2h(0x21, 0x13, &tcp4_body(&[])),
                V2Family,
                14,
            ),
            (
                "v2 tcp4 address cut",
                v2h(0x21, 0x11, &tcp4_body(&[])[..11]),
                V2Address,
                16,
            ),
            (
                "v2 tcp6 with a tcp4 block",
                v2h(0x21, 0x21, &tcp4_body(&[])),
                V2Address,
                16,
            ),
            (
                "v2 unix address cut",
                v2h(0x21, 0x31, &[0; 215]),
                V2Address,
                16,
            ),
            (
                "v2 tlv header cut",
                v2h(0x21, 0x11, &tcp4_body(&[0x04, 0x00])),
                V2Tlv,
                30,
            ),
            (
                "v2 tlv overruns",
                v2h(0x21, 0x11, &tcp4_body(&[0x04, 0x00, 0x05, 1, 2])),
                V2Tlv,
                33,
            ),
            (
                "v2 tlv claims 64 KiB",
                v2h(0x21, 0x11, &tcp4_body(&[0x20, 0xff, 0xff, 1])),
                V2Tlv,
                32,
            ),
            (
                "v2 short crc32c",
                v2h(0x21, 0x11, &tcp4_body(&tlv(TLV_CRC32C, &[1, 2, 3]))),
                V2Tlv,
                34,
            ),
            (
                "v2 wrong crc32c",
                {
                    let mut h = with_crc();
                    let last = h.len() - 1;
                    h[last] ^= 1;
                    h
                },
                V2Checksum,
                with_crc().len(),
            ),
        ];
        let mut too_long = v2h(0x21, 0x11, &tcp4_body(&[]));
        too_long[14..16].copy_from_slice(&(V2_MAX_PAYLOAD as u16 + 1).to_be_bytes());
        v.push(("v2 length over the cap", too_long, V2TooLong, 16));
        let mut local_long = v2h(0x20, 0x00, &[]);
        local_long[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
        v.push(("v2 local length over the cap", local_long, V2TooLong, 16));
        let mut sig = v2h(0x21, 0x11, &tcp4_body(&[]));
        sig[7] = b'q';
        v.push(("v2 signature typo", sig, NotProxy, 8));
        for seed in 1..=20 {
            v.push(("random bytes", noise(seed * 7919, 64), NotProxy, 1));
        }
        v
    }

    #[test]
    fn proxy_malformed_headers_are_refused_early() {
        let cases = malformed();
        assert!(cases.len() >= 20);
        for (name, m, want, at) in cases {
            assert_eq!(parse(&m), Err(want), "{name}");
            for cut in 0..=m.len() {
                let r = parse(&m[..cut]);
                if cut < at {
                    assert_eq!(r, Ok(None), "{name}: first {cut} bytes");
                } else {
                    assert_eq!(r, Err(want), "{name}: first {cut} bytes");
                }
            }
        }
    }

    #[test]
    fn proxy_random_bytes_after_a_header_start_never_hang() {
        // Whatever follows a valid beginning, a decision comes by MAX_LEN bytes.
        let starts: [&[u8]; 5] = [
            b"P",
            b"PROXY ",
            b"PROXY TCP6 ",
            b"PROXY UNKNOWN ",
            &V2_SIGNATURE,
        ];
        for (i, s) in starts.iter().enumerate() {
            for seed in 1..50u64 {
                let mut buf = s.to_vec();
                buf.extend(noise(seed + 1000 * i as u64, MAX_LEN));
                buf.truncate(MAX_LEN);
                assert_ne!(parse(&buf), Ok(None), "{s:?} + noise {seed}");
            }
        }
    }

    #[test]
    fn proxy_reasons_are_distinct_labels() {
        let mut seen = std::collections::HashSet::new();
        for e in ProxyError::ALL {
            let r = e.reason();
            assert!(r
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            assert!(seen.insert(r), "{r} twice");
        }
    }
}
