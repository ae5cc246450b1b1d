//! The DHCP server of a host's networks: static leases only, answered from
//! inside the daemon.
//!
//! # Decision: a server in the daemon, on `dhcproto` (not dnsmasq)
//!
//! The API decides every address (static leases, MAC → IP + hostname), so
//! a DHCP server here only looks a MAC up and answers. Doing it in-process
//! means no extra process to supervise per network, no namespace per
//! network, answers in microseconds, and tests that run in-process.
//!
//! One raw `AF_PACKET` socket per network bridge, bound to the bridge's
//! ifindex, with a classic BPF filter that lets only IPv4/UDP to port 67 (and
//! ARP, see below) through; [`packet`] checks everything again in userspace.
//! Networks are isolated by construction (a network's server sees only its
//! bridge's frames) and the bridge needs no IP address. Replies are built as
//! whole Ethernet/IPv4/UDP frames (IPv4 header checksum; UDP checksum 0, legal
//! for IPv4) from the subnet's DHCP port address and MAC, to the client's MAC
//! (or broadcast when the client set the broadcast flag). The DHCP message
//! itself is encoded and decoded by `dhcproto`.
//!
//! The server also answers ARP requests for its own address (the subnet's
//! DHCP port IP): a client renews by unicast to the server identifier, so it
//! must be able to resolve it. Those unicast frames reach the socket only if
//! the bridge delivers the server's MAC locally: [`ServerConfig::promiscuous`]
//! (a `PACKET_MR_PROMISC` membership of the socket, dropped with it; the BPF
//! filter keeps its cost in the kernel) or a local FDB entry for the MAC.
//! Without either, clients renew by broadcast when rebinding (7/8 of the
//! lease), which always works.
//!
//! * [`packet`]: framing (parse untrusted frames with bounds checks; build).
//! * [`responder`]: pure, `respond(frame, scopes) -> Option<frame>`.
//! * [`server`]: the thread serving every bridge's socket with `poll`.

pub mod packet;
pub mod responder;
pub mod server;

use std::net::Ipv4Addr;

pub use responder::respond;
pub use server::{DhcpError, DhcpServer, ServerConfig};

use crate::Ipv4Net;

/// Default lease time in seconds (option 51): one day. Leases are static,
/// so this only says how often clients check in.
pub const DEFAULT_LEASE_SECS: u32 = 86_400;

/// A static lease: a port's MAC, its fixed IP and its hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The port's MAC.
    pub mac: [u8; 6],
    /// Its fixed IP on the scope's subnet.
    pub ip: Ipv4Addr,
    /// Option 12 (skipped when empty).
    pub hostname: String,
}

/// What the server hands out on one subnet (mirrors the orchestrator's
/// `DhcpSubnet`, plus the network's MTU; netstack does not depend on the
/// orchestrator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The subnet (option 1 is its mask).
    pub cidr: Ipv4Net,
    /// The address the server answers from (option 54, IPv4 source).
    pub server_ip: Ipv4Addr,
    /// The MAC the server answers from (Ethernet source).
    pub server_mac: [u8; 6],
    /// Option 3, if the subnet has a gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Option 6 (skipped when empty).
    pub dns: Vec<Ipv4Addr>,
    /// Option 15, if any.
    pub domain: Option<String>,
    /// Option 121: destination and next hop. When not empty, the gateway
    /// is sent in it too as `0.0.0.0/0` (RFC 3442: a client that gets
    /// option 121 ignores option 3).
    pub host_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Option 26, the network's MTU, if known.
    pub mtu: Option<u16>,
    /// Option 51 (58 and 59 are 1/2 and 7/8 of it).
    pub lease_secs: u32,
    /// The static leases, by MAC.
    pub leases: Vec<Lease>,
}
