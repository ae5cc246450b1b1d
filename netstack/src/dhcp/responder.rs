//! The DHCP logic, pure: a frame in, maybe a frame out.
//!
//! * DISCOVER → OFFER of the MAC's static lease.
//! * REQUEST → ACK when the requested address (option 50, or `ciaddr` when
//!   renewing/rebinding) is the MAC's lease and the server identifier, if
//!   any, is its scope's; NAK when the address is not the lease, or the
//!   server identifier is another of *our* scopes. A server identifier that
//!   is none of ours means the client chose another server: no answer
//!   (RFC 2131 §4.3.2).
//! * INFORM → ACK with the options and no lease (no yiaddr, no 51/58/59).
//! * RELEASE, DECLINE → nothing (leases are static).
//! * Unknown MAC, relayed requests (`giaddr` set), anything malformed →
//!   nothing.
//! * ARP request for a scope's server address → ARP reply from its MAC.
//!
//! Options sent (all of them whatever the parameter request list says,
//! which is "honouring it loosely": clients ignore what they did not ask
//! for): 1, 3, 6, 12, 15, 26, 51, 54, 58, 59 and 121 when the scope has
//! host routes.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, DhcpOptions, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
// dhcproto's option 121 takes `ipnet`'s prefix type.
use ipnet::Ipv4Net as IpnetV4;

use super::packet::{self, UdpOut, BROADCAST_MAC, DHCP_CLIENT_PORT, DHCP_SERVER_PORT};
use super::{Lease, Scope};

/// Minimum BOOTP message size (RFC 951); some clients drop shorter replies.
const MIN_BOOTP_LEN: usize = 300;

/// Answers one frame received on a bridge served with `scopes`; `None`
/// when the frame needs no answer (or is not something we understand).
pub fn respond(frame: &[u8], scopes: &[Scope]) -> Option<Vec<u8>> {
    if let Some(req) = packet::parse_arp_request(frame) {
        let scope = scopes.iter().find(|s| s.server_ip == req.target_ip)?;
        return Some(packet::build_arp_reply(
            &req,
            scope.server_mac,
            scope.server_ip,
        ));
    }
    let udp = packet::parse_udp_to_server(frame).ok()?;
    let clean = sanitize(udp.payload)?;
    let msg = Message::decode(&mut Decoder::new(&clean)).ok()?;
    if msg.opcode() != Opcode::BootRequest
        || msg.htype() != HType::Eth
        || msg.hlen() != 6
        || !msg.giaddr().is_unspecified()
    {
        return None;
    }
    let mac: [u8; 6] = msg.chaddr().get(..6)?.try_into().ok()?;
    let (scope, lease) = find_lease(scopes, mac)?;
    let reply = match msg.opts().msg_type()? {
        MessageType::Discover => Reply::Offer,
        MessageType::Request => request(&msg, scopes, scope, lease)?,
        MessageType::Inform => Reply::InformAck,
        _ => return None,
    };
    build(&msg, scope, lease, reply)
}

/// The options a server reads; every other option is dropped before the
/// message reaches `dhcproto`, whose decoders for some rarely used options
/// (80, 81, 94, 151–155 in 0.14) assert on or underflow with bad lengths:
/// guest input must never reach an assertion (release builds abort on
/// panic). 53 message type, 50 requested IP, 54 server id, 55 parameter
/// request list, 57 max message size, 61 client id.
const KEPT_OPTIONS: [u8; 6] = [53, 50, 54, 55, 57, 61];

/// Fixed BOOTP header (236 bytes) and the magic cookie.
const FIXED_LEN: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// The message with only [`KEPT_OPTIONS`], bounds-checked; `None` when the
/// header or an option runs past the end, or the magic cookie is wrong.
fn sanitize(payload: &[u8]) -> Option<Vec<u8>> {
    let fixed = payload.get(..FIXED_LEN)?;
    if fixed[FIXED_LEN - 4..] != MAGIC {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len().min(1500));
    out.extend_from_slice(fixed);
    let mut i = FIXED_LEN;
    while let Some(&code) = payload.get(i) {
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = usize::from(*payload.get(i + 1)?);
                let value = payload.get(i + 2..i + 2 + len)?;
                if KEPT_OPTIONS.contains(&code) {
                    out.push(code);
                    out.push(len as u8);
                    out.extend_from_slice(value);
                }
                i += 2 + len;
            }
        }
    }
    out.push(255);
    Some(out)
}

fn find_lease(scopes: &[Scope], mac: [u8; 6]) -> Option<(&Scope, &Lease)> {
    scopes
        .iter()
        .find_map(|s| s.leases.iter().find(|l| l.mac == mac).map(|l| (s, l)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Offer,
    Ack,
    Nak,
    InformAck,
}

fn request(msg: &Message, scopes: &[Scope], scope: &Scope, lease: &Lease) -> Option<Reply> {
    if let Some(DhcpOption::ServerIdentifier(id)) = msg.opts().get(OptionCode::ServerIdentifier) {
        if *id != scope.server_ip {
            // Another of our scopes: that server is us, and it says no.
            return scopes
                .iter()
                .any(|s| s.server_ip == *id)
                .then_some(Reply::Nak);
        }
    }
    let wanted = match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
        _ => msg.ciaddr(),
    };
    Some(if wanted == lease.ip {
        Reply::Ack
    } else {
        Reply::Nak
    })
}

/// Option 121's routes: the scope's host routes, then its gateway as the
/// default route (RFC 3442). Invalid prefix lengths are skipped.
fn classless_routes(scope: &Scope) -> Vec<(IpnetV4, Ipv4Addr)> {
    let mut routes: Vec<(IpnetV4, Ipv4Addr)> = scope
        .host_routes
        .iter()
        .filter_map(|(p, via)| Some((IpnetV4::new(p.network(), p.prefix_len).ok()?, *via)))
        .collect();
    if let Some(gw) = scope.gateway {
        let has_default = routes.iter().any(|(n, _)| n.prefix_len() == 0);
        if !has_default {
            routes.push((IpnetV4::default(), gw));
        }
    }
    routes
}

fn options(scope: &Scope, lease: &Lease, kind: Reply) -> DhcpOptions {
    let mut o = DhcpOptions::new();
    let mt = match kind {
        Reply::Offer => MessageType::Offer,
        Reply::Nak => MessageType::Nak,
        Reply::Ack | Reply::InformAck => MessageType::Ack,
    };
    o.insert(DhcpOption::MessageType(mt));
    o.insert(DhcpOption::ServerIdentifier(scope.server_ip));
    if kind == Reply::Nak {
        return o;
    }
    o.insert(DhcpOption::SubnetMask(scope.cidr.netmask()));
    if let Some(gw) = scope.gateway {
        o.insert(DhcpOption::Router(vec![gw]));
    }
    if !scope.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(scope.dns.clone()));
    }
    if !lease.hostname.is_empty() {
        o.insert(DhcpOption::Hostname(lease.hostname.clone()));
    }
    if let Some(d) = scope.domain.as_ref().filter(|d| !d.is_empty()) {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(mtu) = scope.mtu {
        o.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if kind != Reply::InformAck {
        let t = scope.lease_secs;
        o.insert(DhcpOption::AddressLeaseTime(t));
        o.insert(DhcpOption::Renewal(t / 2));
        o.insert(DhcpOption::Rebinding(
            u32::try_from(u64::from(t) * 7 / 8).unwrap_or(t),
        ));
    }
    if !scope.host_routes.is_empty() {
        o.insert(DhcpOption::ClasslessStaticRoute(classless_routes(scope)));
    }
    o
}

fn build(req: &Message, scope: &Scope, lease: &Lease, kind: Reply) -> Option<Vec<u8>> {
    let yiaddr = match kind {
        Reply::Offer | Reply::Ack => lease.ip,
        Reply::Nak | Reply::InformAck => Ipv4Addr::UNSPECIFIED,
    };
    let ciaddr = match kind {
        Reply::Ack | Reply::InformAck => req.ciaddr(),
        Reply::Offer | Reply::Nak => Ipv4Addr::UNSPECIFIED,
    };
    let mut m = Message::new_with_id(
        req.xid(),
        ciaddr,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &lease.mac,
    );
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(req.flags())
        .set_opts(options(scope, lease, kind));
    let mut payload = Vec::with_capacity(MIN_BOOTP_LEN);
    m.encode(&mut Encoder::new(&mut payload)).ok()?;
    if payload.len() < MIN_BOOTP_LEN {
        payload.resize(MIN_BOOTP_LEN, 0);
    }
    // RFC 2131 §4.1, giaddr being 0: NAKs are broadcast; a client that has
    // an address (ciaddr) gets unicast to it; otherwise the broadcast bit
    // says whether the client can take unicast before it has an address.
    let (dst_mac, dst_ip) = if kind == Reply::Nak {
        (BROADCAST_MAC, Ipv4Addr::BROADCAST)
    } else if !req.ciaddr().is_unspecified() {
        (lease.mac, req.ciaddr())
    } else if req.flags().broadcast() {
        (BROADCAST_MAC, Ipv4Addr::BROADCAST)
    } else {
        (lease.mac, yiaddr)
    };
    packet::build_udp_frame(
        &UdpOut {
            src_mac: scope.server_mac,
            dst_mac,
            src_ip: scope.server_ip,
            dst_ip,
            src_port: DHCP_SERVER_PORT,
            dst_port: DHCP_CLIENT_PORT,
        },
        &payload,
    )
}

#[cfg(test)]
mod tests;
