//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends ahead of
//! the client's own bytes to say whose connection it relays.
//!
//! This module only parses, with no I/O: [`parse`] is given what has arrived so far and says
//! whether it holds a whole header (and how many bytes it takes), needs more bytes, or is not a
//! valid header. The listener reads, calls it, and passes what follows the header to the MQTT
//! handshake; the client address in the header is the one the broker reports and limits.
//!
//! Version 1 is one text line of at most 107 bytes (`PROXY TCP4 <src> <dst> <sport> <dport>`).
//! Version 2 is binary: a 12-byte signature, version and command, address family and transport,
//! a length, the addresses, then type-length-value extensions, which are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use thiserror::Error;

/// The start of every version 1 header.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 header the specification allows, CRLF included.
pub const V1_MAX: usize = 107;
/// The start of every version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a version 2 header: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The longest version 2 header accepted. The format allows 64 KiB of addresses and extensions;
/// load balancers send a few hundred bytes at most (addresses, a connection or endpoint id, TLS
/// details), and a connection that has proved nothing yet should not make us hold more.
pub const V2_MAX: usize = V2_FIXED + 2048;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is relayed for a client at `source`, which connected to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy's own connection (version 2 LOCAL, such as a health check), or one whose
    /// addresses it does not relay (version 1 UNKNOWN, version 2 UNSPEC or UNIX): the socket's
    /// own peer address stands.
    Local,
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header may yet be completed by more bytes.
    Incomplete,
    /// A whole header, `len` bytes long; what follows it is the client's.
    Complete { header: Header, len: usize },
}

/// Why the bytes received are not a valid PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY protocol v2 header: {0}")]
    V2(&'static str),
    #[error("PROXY protocol v2 header of {0} bytes, more than the {V2_MAX} accepted")]
    TooLong(usize),
}

/// Parses the header at the start of `received`: a version 2 header if it starts with that
/// version's signature, a version 1 header if it starts with `PROXY `, an error otherwise (as
/// soon as the bytes received rule both out).
pub fn parse(received: &[u8]) -> Result<Parsed, ProxyError> {
    match received.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'\r') => parse_v2(received),
        Some(b'P') => parse_v1(received),
        Some(_) => Err(ProxyError::Missing),
    }
}

/// Whether `received` is the start of `expected` (or the whole of it and more).
fn starts_like(received: &[u8], expected: &[u8]) -> bool {
    let n = received.len().min(expected.len());
    received[..n] == expected[..n]
}

fn parse_v1(received: &[u8]) -> Result<Parsed, ProxyError> {
    if !starts_like(received, V1_PREFIX) {
        return Err(ProxyError::Missing);
    }
    let window = &received[..received.len().min(V1_MAX)];
    // "The receiver must not tolerate a single CR or LF character to end the line": the first
    // of either must begin a CRLF.
    let end = match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(at) if window[at] == b'\r' && at + 1 == window.len() => {
            return if window.len() < V1_MAX {
                Ok(Parsed::Incomplete)
            } else {
                Err(ProxyError::V1("no CRLF within 107 bytes"))
            };
        }
        Some(at) if window[at..].starts_with(b"\r\n") => at,
        Some(_) => return Err(ProxyError::V1("a line not ended by CRLF")),
        None if window.len() < V1_MAX => return Ok(Parsed::Incomplete),
        None => return Err(ProxyError::V1("no CRLF within 107 bytes")),
    };
    let line = &window[V1_PREFIX.len()..end];
    let (protocol, rest) = match line.iter().position(|&b| b == b' ') {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => (line, &[][..]),
    };
    let header = match protocol {
        // "the receiver must ignore anything presented before the CRLF is found"
        b"UNKNOWN" => Header::Local,
        b"TCP4" | b"TCP6" => {
            let rest = std::str::from_utf8(rest)
                .ok()
                .filter(|rest| rest.is_ascii())
                .ok_or(ProxyError::V1("not ASCII"))?;
            let mut fields = rest.split(' ');
            if protocol == b"TCP4" {
                v1_addresses::<Ipv4Addr>(&mut fields)?
            } else {
                v1_addresses::<Ipv6Addr>(&mut fields)?
            }
        }
        _ => return Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Complete {
        header,
        len: end + 2,
    })
}

/// The header of a version 1 TCP4 or TCP6 line from its source and destination address and
/// port, which must end the line.
fn v1_addresses<'a, A: std::str::FromStr + Into<IpAddr>>(
    fields: &mut impl Iterator<Item = &'a str>,
) -> Result<Header, ProxyError> {
    let mut next = || fields.next().ok_or(ProxyError::V1("missing field"));
    let source: A = next()?
        .parse()
        .map_err(|_| ProxyError::V1("bad source address"))?;
    let destination: A = next()?
        .parse()
        .map_err(|_| ProxyError::V1("bad destination address"))?;
    let source_port = v1_port(next()?)?;
    let destination_port = v1_port(next()?)?;
    if fields.next().is_some() {
        return Err(ProxyError::V1("more fields than six"));
    }
    Ok(proxied(
        SocketAddr::new(source.into(), source_port),
        SocketAddr::new(destination.into(), destination_port),
    ))
}

/// A port in version 1: decimal digits only (`u16::from_str` would also take a `+`), and
/// "heading zeroes are not permitted in front of numbers".
fn v1_port(field: &str) -> Result<u16, ProxyError> {
    let digits = !field.is_empty() && field.len() <= 5 && field.bytes().all(|b| b.is_ascii_digit());
    if !digits || (field.len() > 1 && field.starts_with('0')) {
        return Err(ProxyError::V1("bad port"));
    }
    field.parse().map_err(|_| ProxyError::V1("bad port"))
}

/// A relayed connection's header, with IPv4 addresses that arrive mapped into IPv6
/// (`::ffff:192.0.2.7`, which proxies send when the two sides differ in family) as plain IPv4,
/// so that a client counts as one address whichever way its proxy wrote it.
fn proxied(source: SocketAddr, destination: SocketAddr) -> Header {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    Header::Proxied {
        source: canonical(source),
        destination: canonical(destination),
    }
}

fn parse_v2(received: &[u8]) -> Result<Parsed, ProxyError> {
    if !starts_like(received, &V2_SIGNATURE) {
        return Err(ProxyError::Missing);
    }
    if received.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let version_command = received[12];
    let family = received[13];
    let len = V2_FIXED + usize::from(u16::from_be_bytes([received[14], received[15]]));
    if version_command >> 4 != 2 {
        return Err(ProxyError::V2("version is not 2"));
    }
    let local = match version_command & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2("command is neither LOCAL nor PROXY")),
    };
    if len > V2_MAX {
        return Err(ProxyError::TooLong(len));
    }
    // Judged from the fixed part, before waiting for the rest. LOCAL: "the receiver must
    // ignore the protocol block including the family".
    let addresses_len = match family {
        _ if local => 0,
        // AF_UNSPEC, or a UNIX stream socket: no address of use to us.
        0x00 | 0x31 => 0,
        0x11 => 12,
        0x21 => 36,
        0x12 | 0x22 | 0x32 => {
            return Err(ProxyError::V2("a datagram transport on a stream listener"))
        }
        _ => return Err(ProxyError::V2("unknown address family or transport")),
    };
    if len - V2_FIXED < addresses_len {
        return Err(ProxyError::V2(if family == 0x11 {
            "IPv4 addresses cut short"
        } else {
            "IPv6 addresses cut short"
        }));
    }
    if received.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let a = &received[V2_FIXED..V2_FIXED + addresses_len];
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    let header = match addresses_len {
        12 => {
            let ip = |at: usize| Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]);
            proxied(
                SocketAddr::V4(SocketAddrV4::new(ip(0), port(8))),
                SocketAddr::V4(SocketAddrV4::new(ip(4), port(10))),
            )
        }
        36 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            proxied(
                SocketAddr::V6(SocketAddrV6::new(ip(0), port(32), 0, 0)),
                SocketAddr::V6(SocketAddrV6::new(ip(16), port(34), 0, 0)),
            )
        }
        _ => Header::Local,
    };
    Ok(Parsed::Complete { header, len })
}

#[cfg(test)]
mod tests;
