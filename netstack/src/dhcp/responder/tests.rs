use super::*;
use crate::dhcp::DEFAULT_LEASE_SECS;
use crate::Ipv4Net;
use dhcproto::v4::Flags;

const CLIENT: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const SERVER_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn scope() -> Scope {
    Scope {
        cidr: (Ipv4Addr::new(10, 0, 0, 0), 24).into(),
        server_ip: SERVER,
        server_mac: SERVER_MAC,
        gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
        domain: Some("nubo.internal".into()),
        host_routes: vec![],
        mtu: Some(1450),
        lease_secs: DEFAULT_LEASE_SECS,
        leases: vec![Lease {
            mac: CLIENT,
            ip: IP,
            hostname: "vm-one".into(),
        }],
    }
}

fn other_scope() -> Scope {
    Scope {
        cidr: (Ipv4Addr::new(10, 1, 0, 0), 24).into(),
        server_ip: Ipv4Addr::new(10, 1, 0, 2),
        server_mac: [0xfa, 0x16, 0x3e, 0, 1, 2],
        gateway: None,
        dns: vec![],
        domain: None,
        host_routes: vec![],
        mtu: None,
        lease_secs: 600,
        leases: vec![],
    }
}

fn client_msg(mt: MessageType, mac: [u8; 6]) -> Message {
    let mut m = Message::new_with_id(
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.opts_mut().insert(DhcpOption::MessageType(mt));
    m
}

fn frame(m: &Message) -> Vec<u8> {
    let mut payload = Vec::new();
    m.encode(&mut Encoder::new(&mut payload)).unwrap();
    let mac: [u8; 6] = m.chaddr()[..6].try_into().unwrap();
    packet::build_udp_frame(
        &UdpOut {
            src_mac: mac,
            dst_mac: BROADCAST_MAC,
            src_ip: m.ciaddr(),
            dst_ip: Ipv4Addr::BROADCAST,
            src_port: 68,
            dst_port: 67,
        },
        &payload,
    )
    .unwrap()
}

/// The reply's destination MAC, destination IP, UDP ports and message.
fn decode(reply: &[u8]) -> ([u8; 6], Ipv4Addr, Message) {
    assert_eq!(packet::checksum(&reply[14..34]), 0, "IPv4 checksum");
    assert_eq!(&reply[6..12], &SERVER_MAC);
    assert_eq!(&reply[26..30], &SERVER.octets());
    assert_eq!(&reply[34..38], &[0, 67, 0, 68]);
    let dst_ip = Ipv4Addr::new(reply[30], reply[31], reply[32], reply[33]);
    let udp_len = usize::from(u16::from_be_bytes([reply[38], reply[39]]));
    assert_eq!(udp_len, reply.len() - 34);
    assert!(udp_len - 8 >= MIN_BOOTP_LEN);
    let m = Message::decode(&mut Decoder::new(&reply[42..])).unwrap();
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.xid(), 0x1234_5678);
    (reply[..6].try_into().unwrap(), dst_ip, m)
}

fn ask(m: &Message, scopes: &[Scope]) -> Option<([u8; 6], Ipv4Addr, Message)> {
    respond(&frame(m), scopes).map(|r| decode(&r))
}

#[test]
fn discover_gets_an_offer_with_every_option() {
    let (mac, dst, m) = ask(&client_msg(MessageType::Discover, CLIENT), &[scope()]).unwrap();
    assert_eq!(mac, CLIENT, "unicast to the client's MAC");
    assert_eq!(dst, IP);
    assert_eq!(m.yiaddr(), IP);
    let o = m.opts();
    assert_eq!(o.msg_type(), Some(MessageType::Offer));
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 0, 53
        )]))
    );
    assert_eq!(
        o.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("vm-one".into()))
    );
    assert_eq!(
        o.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("nubo.internal".into()))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1450))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(86_400))
    );
    assert_eq!(
        o.get(OptionCode::Renewal),
        Some(&DhcpOption::Renewal(43_200))
    );
    assert_eq!(
        o.get(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(75_600))
    );
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert!(o.get(OptionCode::ClasslessStaticRoute).is_none());
}

#[test]
fn broadcast_flag_gets_a_broadcast_reply() {
    let mut d = client_msg(MessageType::Discover, CLIENT);
    d.set_flags(Flags::default().set_broadcast());
    let (mac, dst, m) = ask(&d, &[scope()]).unwrap();
    assert_eq!(mac, BROADCAST_MAC);
    assert_eq!(dst, Ipv4Addr::BROADCAST);
    assert!(m.flags().broadcast());
}

fn selecting(ip: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut r = client_msg(MessageType::Request, CLIENT);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    r
}

#[test]
fn request_for_the_lease_is_acked() {
    let (mac, dst, m) = ask(&selecting(IP, SERVER), &[scope()]).unwrap();
    assert_eq!((mac, dst), (CLIENT, IP));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), IP);
    assert!(m.opts().get(OptionCode::AddressLeaseTime).is_some());
}

#[test]
fn init_reboot_request_without_server_id_is_acked() {
    let mut r = client_msg(MessageType::Request, CLIENT);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
    let (_, _, m) = ask(&r, &[scope()]).unwrap();
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
}

#[test]
fn renewal_is_acked_by_unicast_to_ciaddr() {
    let mut r = client_msg(MessageType::Request, CLIENT);
    r.set_ciaddr(IP);
    let (mac, dst, m) = ask(&r, &[scope()]).unwrap();
    assert_eq!((mac, dst), (CLIENT, IP));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.ciaddr(), IP);
    assert_eq!(m.yiaddr(), IP);
}

#[test]
fn request_for_another_address_is_naked() {
    let (mac, dst, m) = ask(&selecting(Ipv4Addr::new(10, 0, 0, 9), SERVER), &[scope()]).unwrap();
    assert_eq!((mac, dst), (BROADCAST_MAC, Ipv4Addr::BROADCAST));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
    // Renewing a wrong ciaddr too.
    let mut r = client_msg(MessageType::Request, CLIENT);
    r.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
    let (_, _, m) = ask(&r, &[scope()]).unwrap();
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    // No address at all.
    let r = client_msg(MessageType::Request, CLIENT);
    let (_, _, m) = ask(&r, &[scope()]).unwrap();
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
}

#[test]
fn request_to_our_other_scope_is_naked_to_a_foreign_server_ignored() {
    let scopes = [scope(), other_scope()];
    let (_, _, m) = ask(&selecting(IP, Ipv4Addr::new(10, 1, 0, 2)), &scopes).unwrap();
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert!(ask(&selecting(IP, Ipv4Addr::new(192, 0, 2, 1)), &scopes).is_none());
}

#[test]
fn inform_gets_options_without_a_lease() {
    let mut r = client_msg(MessageType::Inform, CLIENT);
    r.set_ciaddr(IP);
    let (mac, dst, m) = ask(&r, &[scope()]).unwrap();
    assert_eq!((mac, dst), (CLIENT, IP));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(m.opts().get(OptionCode::Renewal).is_none());
    assert!(m.opts().get(OptionCode::SubnetMask).is_some());
}

#[test]
fn release_and_decline_get_nothing() {
    for mt in [MessageType::Release, MessageType::Decline] {
        let mut r = client_msg(mt, CLIENT);
        r.set_ciaddr(IP);
        assert!(respond(&frame(&r), &[scope()]).is_none(), "{mt:?}");
    }
}

#[test]
fn unknown_mac_gets_nothing() {
    let other = [0xfa, 0x16, 0x3e, 9, 9, 9];
    for mt in [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
    ] {
        assert!(respond(&frame(&client_msg(mt, other)), &[scope()]).is_none());
    }
    assert!(respond(&frame(&client_msg(MessageType::Discover, CLIENT)), &[]).is_none());
}

#[test]
fn relayed_and_reply_messages_get_nothing() {
    let mut d = client_msg(MessageType::Discover, CLIENT);
    d.set_giaddr(Ipv4Addr::new(10, 9, 9, 9));
    assert!(respond(&frame(&d), &[scope()]).is_none());
    let mut d = client_msg(MessageType::Discover, CLIENT);
    d.set_opcode(Opcode::BootReply);
    assert!(respond(&frame(&d), &[scope()]).is_none());
    let d = client_msg(MessageType::Offer, CLIENT);
    assert!(respond(&frame(&d), &[scope()]).is_none());
}

#[test]
fn option_121_is_rfc3442_with_the_default_route() {
    let mut s = scope();
    s.host_routes = vec![
        (
            Ipv4Net::from((Ipv4Addr::new(192, 168, 0, 0), 16)),
            Ipv4Addr::new(10, 0, 0, 254),
        ),
        (
            Ipv4Net::from((Ipv4Addr::new(10, 9, 8, 7), 32)),
            Ipv4Addr::new(10, 0, 0, 253),
        ),
        // Host bits set in a prefix are cleared.
        (
            Ipv4Net::from((Ipv4Addr::new(172, 16, 5, 1), 12)),
            Ipv4Addr::new(10, 0, 0, 252),
        ),
    ];
    let reply = respond(&frame(&client_msg(MessageType::Discover, CLIENT)), &[s]).unwrap();
    let want: &[u8] = &[
        121, 28, //
        16, 192, 168, 10, 0, 0, 254, //
        32, 10, 9, 8, 7, 10, 0, 0, 253, //
        12, 172, 16, 10, 0, 0, 252, //
        0, 10, 0, 0, 1, // default route via the gateway
    ];
    let opts = &reply[42 + 240..];
    assert!(
        opts.windows(want.len()).any(|w| w == want),
        "option 121 not found as {want:?} in {opts:?}"
    );
    // Option 3 is still there for clients that ignore 121.
    let (_, _, m) = decode(&reply);
    assert!(m.opts().get(OptionCode::Router).is_some());
}

#[test]
fn arp_for_the_server_address_is_answered() {
    let mut f = BROADCAST_MAC.to_vec();
    f.extend_from_slice(&CLIENT);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT);
    f.extend_from_slice(&IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&SERVER.octets());
    let r = respond(&f, &[scope()]).unwrap();
    assert_eq!(&r[..6], &CLIENT);
    assert_eq!(&r[22..28], &SERVER_MAC);
    assert_eq!(&r[28..32], &SERVER.octets());
    // Not our address: nothing.
    f[38..42].copy_from_slice(&[10, 0, 0, 1]);
    assert!(respond(&f, &[scope()]).is_none());
}

/// xorshift64: deterministic noise without a dependency.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn malformed_frames_never_panic() {
    let scopes = [scope(), other_scope()];
    let good = frame(&selecting(IP, SERVER));
    assert!(respond(&good, &scopes).is_some());
    // Every truncation.
    for n in 0..good.len() {
        let _ = respond(&good[..n], &scopes);
    }
    let mut rng = Noise(0x9e37_79b9_7f4a_7c15);
    // Random bytes behind a valid Ethernet/IPv4/UDP header, so the DHCP
    // decoder gets garbage options and lengths.
    for _ in 0..20_000 {
        let mut f = good.clone();
        let start = 42 + if rng.below(2) == 0 { 0 } else { 236 };
        for b in f.iter_mut().skip(start) {
            *b = rng.next() as u8;
        }
        if rng.below(2) == 0 {
            // Keep the magic cookie and message type so options get parsed.
            f[42 + 236..42 + 240].copy_from_slice(&[99, 130, 83, 99]);
            f[42 + 240..42 + 243].copy_from_slice(&[53, 1, 3]);
        }
        let _ = respond(&f, &scopes);
    }
    // Byte flips anywhere (lengths, IHL, ports, checksums).
    for _ in 0..20_000 {
        let mut f = good.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(f.len());
            f[i] = rng.next() as u8;
        }
        let n = if rng.below(4) == 0 {
            rng.below(f.len())
        } else {
            f.len()
        };
        let _ = respond(&f[..n], &scopes);
    }
    // Pure noise of every length.
    for _ in 0..20_000 {
        let len = rng.below(700);
        let f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = respond(&f, &scopes);
    }
}
