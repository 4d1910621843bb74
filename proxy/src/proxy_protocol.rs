//! PROXY protocol headers (version 1 text, version 2 binary) sent to the upstream.
//!
//! The header gives the upstream the client's address and the address the client
//! connected to, because the upstream otherwise sees only the proxy. It is written once,
//! before any client byte. This module only encodes headers: it never parses them,
//! and it sends only the PROXY command for TCP over IPv4 or IPv6.
//!
//! When the two addresses are of different families, both are written as IPv6, with
//! the IPv4 one in its IPv4-mapped form, so the header always describes one family.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that opens every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Version 2 in the high nibble, command PROXY in the low nibble.
const V2_VERSION_PROXY: u8 = 0x21;
/// Address family INET with transport STREAM.
const V2_TCP_IPV4: u8 = 0x11;
/// Address family INET6 with transport STREAM.
const V2_TCP_IPV6: u8 = 0x21;

/// PROXY protocol version sent to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Human-readable text header, one line ending in CRLF.
    V1,
    /// Binary header with the 12-byte signature.
    V2,
}

impl ProxyProtocol {
    /// Encodes the header for a client at `client` that connected to `local`.
    pub fn encode(self, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        match self {
            ProxyProtocol::V1 => encode_v1(client, local),
            ProxyProtocol::V2 => encode_v2(client, local),
        }
    }
}

/// Returns both addresses in one family: unchanged when they already match, otherwise
/// both as IPv6 (IPv4-mapped where needed).
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (client, local) = (unmap(client), unmap(local));
    if client.is_ipv4() == local.is_ipv4() {
        return (client, local);
    }
    (to_ipv6(client), to_ipv6(local))
}

/// Turns an IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 client)
/// back into IPv4.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn to_ipv6(addr: SocketAddr) -> SocketAddr {
    let ip: Ipv6Addr = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SocketAddr::new(IpAddr::V6(ip), addr.port())
}

fn encode_v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        local.ip(),
        client.port(),
        local.port()
    )
    .into_bytes()
}

fn encode_v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    let mut header = Vec::with_capacity(16 + 36);
    header.extend_from_slice(&V2_SIGNATURE);
    header.push(V2_VERSION_PROXY);

    match (client.ip(), local.ip()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            header.push(V2_TCP_IPV4);
            header.extend_from_slice(&12u16.to_be_bytes());
            header.extend_from_slice(&source.octets());
            header.extend_from_slice(&destination.octets());
        }
        (source, destination) => {
            header.push(V2_TCP_IPV6);
            header.extend_from_slice(&36u16.to_be_bytes());
            header.extend_from_slice(&ipv6_octets(source));
            header.extend_from_slice(&ipv6_octets(destination));
        }
    }

    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&local.port().to_be_bytes());
    header
}

fn ipv6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address is valid")
    }

    #[test]
    fn v1_ipv4_line() {
        let header = ProxyProtocol::V1.encode(addr("192.0.2.7:51000"), addr("127.0.0.1:18080"));
        assert_eq!(header, b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 18080\r\n");
    }

    #[test]
    fn v1_ipv6_line() {
        let header = ProxyProtocol::V1.encode(addr("[2001:db8::1]:443"), addr("[::1]:80"));
        assert_eq!(header, b"PROXY TCP6 2001:db8::1 ::1 443 80\r\n");
    }

    #[test]
    fn v1_unmaps_ipv4_mapped_client() {
        let header = ProxyProtocol::V1.encode(addr("[::ffff:10.1.2.3]:5000"), addr("10.0.0.1:80"));
        assert_eq!(header, b"PROXY TCP4 10.1.2.3 10.0.0.1 5000 80\r\n");
    }

    #[test]
    fn v2_ipv4_bytes() {
        let header = ProxyProtocol::V2.encode(addr("192.0.2.7:51000"), addr("127.0.0.1:18080"));
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        expected.extend_from_slice(&[192, 0, 2, 7, 127, 0, 0, 1]);
        expected.extend_from_slice(&[0xC7, 0x38, 0x46, 0xA0]);
        assert_eq!(header, expected);
    }

    #[test]
    fn v2_ipv6_bytes() {
        let header = ProxyProtocol::V2.encode(addr("[2001:db8::1]:443"), addr("[::1]:80"));
        assert_eq!(header.len(), 16 + 36);
        assert_eq!(header[..12], V2_SIGNATURE);
        assert_eq!(header[12..16], [0x21, 0x21, 0x00, 0x24]);
        assert_eq!(header[16], 0x20);
        assert_eq!(header[17], 0x01);
        assert_eq!(header[47], 0x01);
        assert_eq!(header[48..52], [0x01, 0xBB, 0x00, 0x50]);
    }

    #[test]
    fn v2_mixed_families_use_ipv6() {
        let header = ProxyProtocol::V2.encode(addr("192.0.2.7:1"), addr("[::1]:2"));
        assert_eq!(header[13], 0x21);
        assert_eq!(
            header[16..32],
            "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets()
        );
    }
}
