//! Ethernet/IPv4/UDP framing for the DHCP server: parsing what a guest sent
//! (untrusted: every length is checked against the buffer before use) and
//! building the whole frames the server sends back.

use std::net::Ipv4Addr;

use thiserror::Error;

/// Ethernet header length (no 802.1Q tag: bridges hand us untagged frames).
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// UDP port of the DHCP server.
pub const DHCP_SERVER_PORT: u16 = 67;
/// UDP port of the DHCP client.
pub const DHCP_CLIENT_PORT: u16 = 68;
/// The broadcast MAC address.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

const IPV4_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;

/// Why a frame is not a DHCP request we look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PacketError {
    /// Shorter than the headers it claims to have.
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    /// Not IPv4 (EtherType or IP version).
    #[error("not IPv4")]
    NotIpv4,
    /// A header field holds an impossible length.
    #[error("bad length: {0}")]
    BadLength(&'static str),
    /// The IPv4 header checksum does not verify.
    #[error("bad IPv4 header checksum")]
    BadChecksum,
    /// A fragment (DHCP requests are never fragmented).
    #[error("IPv4 fragment")]
    Fragment,
    /// Not UDP.
    #[error("not UDP")]
    NotUdp,
    /// UDP, but not to port 67.
    #[error("not to the DHCP server port")]
    WrongPort,
}

/// A UDP datagram to port 67, as found in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpIn<'a> {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// IPv4 source.
    pub src_ip: Ipv4Addr,
    /// IPv4 destination.
    pub dst_ip: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// The UDP payload (the DHCP message), bounded by the UDP length.
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

fn ip_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// The EtherType of a frame, if it has an Ethernet header.
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    be16(frame, 12)
}

/// Parses an Ethernet frame carrying IPv4/UDP to port 67.
pub fn parse_udp_to_server(frame: &[u8]) -> Result<UdpIn<'_>, PacketError> {
    let ethertype = ethertype(frame).ok_or(PacketError::Truncated("ethernet"))?;
    if ethertype != ETHERTYPE_IPV4 {
        return Err(PacketError::NotIpv4);
    }
    let src_mac = mac_at(frame, 6).ok_or(PacketError::Truncated("ethernet"))?;
    let ip = &frame[ETH_HLEN..];
    if ip.len() < IPV4_MIN_HLEN {
        return Err(PacketError::Truncated("ipv4 header"));
    }
    if ip[0] >> 4 != 4 {
        return Err(PacketError::NotIpv4);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(PacketError::BadLength("ipv4 header length"));
    }
    if ip.len() < ihl {
        return Err(PacketError::Truncated("ipv4 options"));
    }
    let total = usize::from(be16(ip, 2).ok_or(PacketError::Truncated("ipv4 header"))?);
    if total < ihl {
        return Err(PacketError::BadLength("ipv4 total length below header"));
    }
    // Frames may carry Ethernet padding after the datagram, never less.
    if total > ip.len() {
        return Err(PacketError::Truncated("ipv4 payload"));
    }
    if checksum(&ip[..ihl]) != 0 {
        return Err(PacketError::BadChecksum);
    }
    let frag = be16(ip, 6).ok_or(PacketError::Truncated("ipv4 header"))?;
    // MF flag or a non-zero fragment offset.
    if frag & 0x3fff != 0 {
        return Err(PacketError::Fragment);
    }
    if ip[9] != IPPROTO_UDP {
        return Err(PacketError::NotUdp);
    }
    let src_ip = ip_at(ip, 12).ok_or(PacketError::Truncated("ipv4 header"))?;
    let dst_ip = ip_at(ip, 16).ok_or(PacketError::Truncated("ipv4 header"))?;
    let udp = &ip[ihl..total];
    if udp.len() < UDP_HLEN {
        return Err(PacketError::Truncated("udp header"));
    }
    let src_port = be16(udp, 0).ok_or(PacketError::Truncated("udp header"))?;
    let dst_port = be16(udp, 2).ok_or(PacketError::Truncated("udp header"))?;
    if dst_port != DHCP_SERVER_PORT {
        return Err(PacketError::WrongPort);
    }
    let udp_len = usize::from(be16(udp, 4).ok_or(PacketError::Truncated("udp header"))?);
    if udp_len < UDP_HLEN || udp_len > udp.len() {
        return Err(PacketError::BadLength("udp length"));
    }
    Ok(UdpIn {
        src_mac,
        src_ip,
        dst_ip,
        src_port,
        payload: &udp[UDP_HLEN..udp_len],
    })
}

/// The Internet checksum (RFC 1071) of `data`; 0 over a header that
/// includes a correct checksum field.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Where a UDP frame goes and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOut {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src_ip: Ipv4Addr,
    /// IPv4 destination.
    pub dst_ip: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
}

/// Builds a whole Ethernet/IPv4/UDP frame around `payload`, with a valid
/// IPv4 header checksum and UDP checksum 0 ("none", legal for IPv4).
/// `None` if the payload does not fit in one IPv4 datagram.
pub fn build_udp_frame(to: &UdpOut, payload: &[u8]) -> Option<Vec<u8>> {
    let udp_len = u16::try_from(UDP_HLEN + payload.len()).ok()?;
    let ip_len = u16::try_from(IPV4_MIN_HLEN + usize::from(udp_len)).ok()?;
    let mut f = Vec::with_capacity(ETH_HLEN + usize::from(ip_len));
    f.extend_from_slice(&to.dst_mac);
    f.extend_from_slice(&to.src_mac);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]); // version 4, IHL 5; DSCP 0
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, DF, offset 0
    f.extend_from_slice(&[TTL, IPPROTO_UDP, 0, 0]); // checksum filled below
    f.extend_from_slice(&to.src_ip.octets());
    f.extend_from_slice(&to.dst_ip.octets());
    let sum = checksum(&f[ip_start..ip_start + IPV4_MIN_HLEN]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&to.src_port.to_be_bytes());
    f.extend_from_slice(&to.dst_port.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    Some(f)
}

/// An ARP request (Ethernet/IPv4) as found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// The address asked for.
    pub target_ip: Ipv4Addr,
}

/// Parses an ARP request for an IPv4 address; `None` for anything else.
pub fn parse_arp_request(frame: &[u8]) -> Option<ArpRequest> {
    if ethertype(frame)? != ETHERTYPE_ARP {
        return None;
    }
    let a = frame.get(ETH_HLEN..ETH_HLEN + 28)?;
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request).
    if a[..8] != [0, 1, 0x08, 0, 6, 4, 0, 1] {
        return None;
    }
    Some(ArpRequest {
        sender_mac: mac_at(a, 8)?,
        sender_ip: ip_at(a, 14)?,
        target_ip: ip_at(a, 24)?,
    })
}

/// Builds the ARP reply "`ip` is at `mac`" to `req`.
pub fn build_arp_reply(req: &ArpRequest, mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + 28);
    f.extend_from_slice(&req.sender_mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&req.sender_mac);
    f.extend_from_slice(&req.sender_ip.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        build_udp_frame(
            &UdpOut {
                src_mac: [2, 0, 0, 0, 0, 1],
                dst_mac: BROADCAST_MAC,
                src_ip: Ipv4Addr::UNSPECIFIED,
                dst_ip: Ipv4Addr::BROADCAST,
                src_port: 68,
                dst_port: 67,
            },
            b"hello",
        )
        .unwrap()
    }

    #[test]
    fn build_then_parse() {
        let f = sample();
        assert_eq!(checksum(&f[14..34]), 0);
        let p = parse_udp_to_server(&f).unwrap();
        assert_eq!(p.payload, b"hello");
        assert_eq!(p.src_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(p.src_port, 68);
        assert_eq!(p.dst_ip, Ipv4Addr::BROADCAST);
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let mut f = sample();
        f.extend_from_slice(&[0; 20]);
        assert_eq!(parse_udp_to_server(&f).unwrap().payload, b"hello");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let f = sample();
        for n in 0..f.len() {
            assert!(parse_udp_to_server(&f[..n]).is_err(), "len {n}");
        }
    }

    #[test]
    fn rejects_wrong_fields() {
        let fix = |f: &mut Vec<u8>| {
            f[24] = 0;
            f[25] = 0;
            let s = checksum(&f[14..34]);
            f[24..26].copy_from_slice(&s.to_be_bytes());
        };
        let mut f = sample();
        f[12] = 0x86;
        assert_eq!(parse_udp_to_server(&f), Err(PacketError::NotIpv4));
        let mut f = sample();
        f[23] = 6;
        fix(&mut f);
        assert_eq!(parse_udp_to_server(&f), Err(PacketError::NotUdp));
        let mut f = sample();
        f[37] = 68;
        assert_eq!(parse_udp_to_server(&f), Err(PacketError::WrongPort));
        let mut f = sample();
        f[20] = 0x20; // MF
        fix(&mut f);
        assert_eq!(parse_udp_to_server(&f), Err(PacketError::Fragment));
        let mut f = sample();
        f[16] = 0xff; // total length too big
        fix(&mut f);
        assert!(parse_udp_to_server(&f).is_err());
        let mut f = sample();
        f[14] = 0x44; // IHL 4
        assert!(parse_udp_to_server(&f).is_err());
        let mut f = sample();
        f[38] = 0xff; // UDP length too big
        assert_eq!(
            parse_udp_to_server(&f),
            Err(PacketError::BadLength("udp length"))
        );
        let mut f = sample();
        f[30] ^= 1; // checksum no longer verifies
        assert_eq!(parse_udp_to_server(&f), Err(PacketError::BadChecksum));
    }

    #[test]
    fn arp_round_trip() {
        let req = ArpRequest {
            sender_mac: [2, 0, 0, 0, 0, 9],
            sender_ip: Ipv4Addr::new(10, 0, 0, 5),
            target_ip: Ipv4Addr::new(10, 0, 0, 2),
        };
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&req.sender_mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&req.sender_mac);
        f.extend_from_slice(&req.sender_ip.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&req.target_ip.octets());
        assert_eq!(parse_arp_request(&f), Some(req));
        let r = build_arp_reply(&req, [2, 0, 0, 0, 0, 2], req.target_ip);
        assert_eq!(&r[..6], &req.sender_mac);
        assert_eq!(&r[20..22], &[0, 2]);
        assert!(parse_arp_request(&r).is_none());
        for n in 0..f.len() {
            assert!(parse_arp_request(&f[..n]).is_none());
        }
    }
}
