//! The PROXY protocol parser on headers written by hand from HAProxy's specification (v1 text,
//! v2 binary), on every prefix of them, and on what must be refused.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn complete(received: &[u8]) -> (Header, usize) {
    match parse(received) {
        Ok(Parsed::Complete { header, len }) => (header, len),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(received)),
    }
}

/// A v2 header: signature, version 2 with `command`, `family`, then `body` (addresses and
/// extensions) with its length.
fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn v2_tcp4(source: [u8; 4], destination: [u8; 4], ports: (u16, u16), tlvs: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&source);
    body.extend_from_slice(&destination);
    body.extend_from_slice(&ports.0.to_be_bytes());
    body.extend_from_slice(&ports.1.to_be_bytes());
    body.extend_from_slice(tlvs);
    v2(1, 0x11, &body)
}

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 1883\r\nMQTT";
    let (header, len) = complete(line);
    assert_eq!(len, line.len() - 4, "the header ends after its CRLF");
    assert_eq!(
        header,
        Header::Proxied {
            source: addr("192.0.2.7:56324"),
            destination: addr("198.51.100.1:1883"),
        }
    );

    let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 8883\r\n";
    let (header, len) = complete(line);
    assert_eq!(len, line.len());
    assert_eq!(
        header,
        Header::Proxied {
            source: SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).into(), 65535),
            destination: addr("[2001:db8::1]:8883"),
        }
    );

    // UNKNOWN: whatever follows up to the CRLF is ignored.
    assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (Header::Local, 15));
    let line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
    assert_eq!(complete(line), (Header::Local, line.len()));
}

#[test]
fn the_longest_v1_header_is_accepted_and_one_byte_more_is_not() {
    // The specification's worst case: UNKNOWN followed by what TCP6 with full-length
    // addresses and ports would say, 107 bytes.
    let long = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY UNKNOWN {long} {long} 65535 65535\r\n");
    assert_eq!(line.len(), V1_MAX);
    assert_eq!(complete(line.as_bytes()), (Header::Local, V1_MAX));
    let line = format!("PROXY TCP6 {long} {long} 65535 65535\r\n");
    assert_eq!(complete(line.as_bytes()).1, V1_MAX - 3);

    let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX));
    assert_eq!(
        parse(too_long.as_bytes()),
        Err(ProxyError::V1("no CRLF within 107 bytes"))
    );
    // Without a CRLF, undecided until 107 bytes have come.
    assert_eq!(
        parse(&too_long.as_bytes()[..V1_MAX - 1]),
        Ok(Parsed::Incomplete)
    );
}

#[test]
fn v1_fields_are_checked() {
    for (line, why) in [
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
            "missing field",
        ),
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 56324 1883 9\r\n",
            "more fields than six",
        ),
        (
            "PROXY TCP4 192.0.2.7  198.51.100.1 56324 1883\r\n",
            "bad destination address",
        ),
        (
            "PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            "bad source address",
        ),
        (
            "PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
            "bad source address",
        ),
        ("PROXY TCP4 192.0.2.7 198.51.100.1 +1 1883\r\n", "bad port"),
        (
            "PROXY TCP4 192.0.2.7 198.51.100.1 65536 1883\r\n",
            "bad port",
        ),
        ("PROXY TCP4 192.0.2.7 198.51.100.1 1 \r\n", "bad port"),
        ("PROXY TCP4 192.0.2.7 198.51.100.1 1 000001\r\n", "bad port"),
        ("PROXY TCP4 192.0.2.7 198.51.100.1 01 1883\r\n", "bad port"),
        (
            "PROXY TCP4 192.0.2.07 198.51.100.1 1 1883\r\n",
            "bad source address",
        ),
        (
            "PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n",
            "bad source address",
        ),
        (
            "PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            "protocol is not TCP4, TCP6 or UNKNOWN",
        ),
        ("PROXY \r\n", "protocol is not TCP4, TCP6 or UNKNOWN"),
    ] {
        assert_eq!(parse(line.as_bytes()), Err(ProxyError::V1(why)), "{line:?}");
    }
    assert_eq!(
        parse(b"PROXY TCP4 \xff 198.51.100.1 1 2\r\n"),
        Err(ProxyError::V1("not ASCII"))
    );
    // Port 0 is a number like any other.
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 0 1883\r\n";
    assert!(matches!(complete(line).0, Header::Proxied { source, .. } if source.port() == 0));
    // After UNKNOWN anything goes, up to the CRLF.
    assert_eq!(complete(b"PROXY UNKNOWN \xff\xfe\r\n"), (Header::Local, 18));
}

#[test]
fn v1_lines_end_with_crlf_and_nothing_else() {
    // A lone LF must not let the first CRLF of the client's own bytes end the header.
    let mut wire = b"PROXY UNKNOWN\n".to_vec();
    wire.extend_from_slice(b"\x10\x0d\x0a\x00\x04MQTT");
    assert_eq!(
        parse(&wire),
        Err(ProxyError::V1("a line not ended by CRLF"))
    );
    assert_eq!(
        parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\rX"),
        Err(ProxyError::V1("a line not ended by CRLF"))
    );
    // Decided as soon as the lone character is seen, not after 107 bytes.
    assert_eq!(
        parse(b"PROXY TCP4 192.0.2.7\n"),
        Err(ProxyError::V1("a line not ended by CRLF"))
    );
    assert_eq!(parse(b"PROXY UNKNOWN\r"), Ok(Parsed::Incomplete));
}

#[test]
fn ipv4_mapped_into_ipv6_counts_as_ipv4() {
    let line = b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 56324 1883\r\n";
    assert_eq!(
        complete(line).0,
        Header::Proxied {
            source: addr("192.0.2.7:56324"),
            destination: addr("[2001:db8::1]:1883"),
        }
    );
    let mut body = Vec::new();
    body.extend_from_slice(&Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().octets());
    body.extend_from_slice(&Ipv4Addr::new(198, 51, 100, 1).to_ipv6_mapped().octets());
    body.extend_from_slice(&56324u16.to_be_bytes());
    body.extend_from_slice(&1883u16.to_be_bytes());
    assert_eq!(
        complete(&v2(1, 0x21, &body)).0,
        Header::Proxied {
            source: addr("192.0.2.7:56324"),
            destination: addr("198.51.100.1:1883"),
        }
    );
}

#[test]
fn v2_tcp4_tcp6_with_extensions_and_local() {
    // An extension as AWS's load balancer sends it (type 0xEA, a VPC endpoint id).
    let tlv = [0xEA, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e'];
    let mut wire = v2_tcp4([192, 0, 2, 7], [198, 51, 100, 1], (56324, 1883), &tlv);
    let header_len = wire.len();
    wire.extend_from_slice(b"\x10\x0c");
    assert_eq!(
        complete(&wire),
        (
            Header::Proxied {
                source: addr("192.0.2.7:56324"),
                destination: addr("198.51.100.1:1883"),
            },
            header_len
        )
    );

    let mut body = Vec::new();
    body.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).octets());
    body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(&8883u16.to_be_bytes());
    let wire = v2(1, 0x21, &body);
    assert_eq!(
        complete(&wire),
        (
            Header::Proxied {
                source: addr("[2001:db8::7]:443"),
                destination: addr("[::1]:8883"),
            },
            wire.len()
        )
    );

    // LOCAL (a health check of the balancer's own): addresses, if any, are ignored.
    let wire = v2(0, 0x11, &[9; 12]);
    assert_eq!(complete(&wire), (Header::Local, wire.len()));
    let wire = v2(0, 0x00, &[]);
    assert_eq!(complete(&wire), (Header::Local, 16));
    // PROXY of an unspecified family or a UNIX socket: the socket's peer stands.
    assert_eq!(complete(&v2(1, 0x00, &[])), (Header::Local, 16));
    let wire = v2(1, 0x31, &[0; 216]);
    assert_eq!(complete(&wire), (Header::Local, wire.len()));
}

#[test]
fn v2_errors() {
    let mut wrong_version = v2_tcp4([1, 2, 3, 4], [5, 6, 7, 8], (1, 2), &[]);
    wrong_version[12] = 0x11;
    assert_eq!(
        parse(&wrong_version),
        Err(ProxyError::V2("version is not 2"))
    );
    assert_eq!(
        parse(&v2(2, 0x11, &[0; 12])),
        Err(ProxyError::V2("command is neither LOCAL nor PROXY"))
    );
    for family in [0x12, 0x22, 0x32] {
        assert_eq!(
            parse(&v2(1, family, &[0; 36])),
            Err(ProxyError::V2("a datagram transport on a stream listener")),
            "{family:#x}"
        );
    }
    // LOCAL ignores the family, whatever it says.
    let wire = v2(0, 0xFF, &[0; 3]);
    assert_eq!(complete(&wire), (Header::Local, wire.len()));
    // Refused from the fixed part alone, without waiting for the declared length.
    assert_eq!(
        parse(&v2(1, 0xFF, &[0; 2000])[..16]),
        Err(ProxyError::V2("unknown address family or transport"))
    );
    assert_eq!(
        parse(&v2(1, 0x11, &[0; 11])[..16]),
        Err(ProxyError::V2("IPv4 addresses cut short"))
    );
    for family in [0x10, 0x13, 0x41, 0xFF] {
        assert_eq!(
            parse(&v2(1, family, &[0; 36])),
            Err(ProxyError::V2("unknown address family or transport")),
            "{family:#x}"
        );
    }
    assert_eq!(
        parse(&v2(1, 0x11, &[0; 11])),
        Err(ProxyError::V2("IPv4 addresses cut short"))
    );
    assert_eq!(
        parse(&v2(1, 0x21, &[0; 35])),
        Err(ProxyError::V2("IPv6 addresses cut short"))
    );
    // Judged from the fixed part alone, before the rest has come.
    let huge = v2(1, 0x11, &[0; V2_MAX - 16 + 1]);
    assert_eq!(parse(&huge[..16]), Err(ProxyError::TooLong(V2_MAX + 1)));
    let largest = v2(1, 0x11, &[0; V2_MAX - 16]);
    assert_eq!(complete(&largest).1, V2_MAX);
}

#[test]
fn every_prefix_of_a_header_is_incomplete() {
    let headers = [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 1883\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2_tcp4(
            [192, 0, 2, 7],
            [198, 51, 100, 1],
            (56324, 1883),
            &[0xEA, 0, 1, 7],
        ),
        v2(0, 0x00, &[]),
    ];
    for header in headers {
        for cut in 0..header.len() {
            assert_eq!(
                parse(&header[..cut]),
                Ok(Parsed::Incomplete),
                "{:?} cut at {cut}",
                String::from_utf8_lossy(&header)
            );
        }
        assert_eq!(complete(&header).1, header.len());
    }
}

#[test]
fn a_connection_without_a_header_is_refused_from_its_first_bytes() {
    // An MQTT CONNECT, TLS ClientHello, an HTTP request: refused as soon as they differ.
    for start in [
        &b"\x10\x0c\x00\x04MQTT"[..],
        b"\x16\x03\x01",
        b"GET /mqtt HTTP/1.1\r\n",
    ] {
        assert_eq!(parse(start), Err(ProxyError::Missing), "{start:?}");
        assert_eq!(parse(&start[..1]), Err(ProxyError::Missing), "{start:?}");
    }
    assert_eq!(parse(b"PROXX"), Err(ProxyError::Missing));
    assert_eq!(parse(b"proxy TCP4"), Err(ProxyError::Missing));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyError::Missing));
    assert_eq!(parse(b"\r\n\r\n"), Ok(Parsed::Incomplete));
    assert_eq!(parse(b""), Ok(Parsed::Incomplete));
}

proptest! {
    /// Anything may arrive: no panic, and a complete header never claims more than arrived,
    /// nor more than a header may be long.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256),
                                    v2_start in any::<bool>(), v1_start in any::<bool>()) {
        let mut received = Vec::new();
        if v2_start {
            // Version 2, PROXY: so that the family, length and addresses get explored.
            received.extend_from_slice(&V2_SIGNATURE);
            received.push(0x21);
        } else if v1_start {
            received.extend_from_slice(b"PROXY ");
        }
        received.extend_from_slice(&bytes);
        if let Ok(Parsed::Complete { len, .. }) = parse(&received) {
            prop_assert!(len <= received.len());
            prop_assert!(len <= V2_MAX.max(V1_MAX));
        }
    }

    /// Any IPv4 client address and port round-trips through both versions.
    #[test]
    fn ipv4_addresses_round_trip(source in any::<[u8; 4]>(), sport in any::<u16>(),
                                 destination in any::<[u8; 4]>(), dport in any::<u16>()) {
        let expected = Header::Proxied {
            source: SocketAddr::new(Ipv4Addr::from(source).into(), sport),
            destination: SocketAddr::new(Ipv4Addr::from(destination).into(), dport),
        };
        let wire = v2_tcp4(source, destination, (sport, dport), &[]);
        prop_assert_eq!(parse(&wire), Ok(Parsed::Complete { header: expected, len: 28 }));
        let line = format!(
            "PROXY TCP4 {} {} {sport} {dport}\r\n",
            Ipv4Addr::from(source),
            Ipv4Addr::from(destination)
        );
        prop_assert_eq!(parse(line.as_bytes()), Ok(Parsed::Complete { header: expected, len: line.len() }));
    }
}
