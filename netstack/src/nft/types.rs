//! The inputs of the generators: what a port's filter, a router's NAT and
//! the host's masquerade are made of. Close to the orchestrator's plan
//! (`host::net::plan`), but owned here so `netstack` does not depend on it.

use std::fmt;
use std::net::Ipv4Addr;

use super::NftError;
use crate::Ipv4Net;

/// How nft spells a prefix: `a.b.c.d` for a `/32`, `network/len`
/// otherwise (host bits cleared; nft refuses them in a prefix).
pub(crate) struct NftPrefix(pub(crate) Ipv4Net);

impl fmt::Display for NftPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n.prefix_len >= 32 {
            write!(f, "{}", n.addr)
        } else {
            write!(f, "{}/{}", n.network(), n.prefix_len)
        }
    }
}

impl From<crate::Ipv4NetError> for NftError {
    /// A bad prefix is invalid input.
    fn from(e: crate::Ipv4NetError) -> Self {
        NftError::invalid("prefix", e.to_string())
    }
}

/// An Ethernet address.
pub type Mac = [u8; 6];

pub(crate) fn fmt_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Which way a rule matches, seen from the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic to the port (the guest receives it).
    Ingress,
    /// Traffic from the port (the guest sends it).
    Egress,
}

/// What a rule matches above IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// Any protocol.
    Any,
    /// One IP protocol number, any port.
    Proto(u8),
    /// A protocol with ports (tcp 6, udp 17, dccp 33, sctp 132, udplite
    /// 136) and a destination port range, `min..=max`.
    Ports {
        /// IP protocol number.
        proto: u8,
        /// First port.
        min: u16,
        /// Last port.
        max: u16,
    },
    /// ICMP (protocol 1), optionally one type and, with it, one code.
    Icmp {
        /// ICMP type; `None`: any.
        icmp_type: Option<u8>,
        /// ICMP code; `None`: any (needs a type).
        code: Option<u8>,
    },
}

/// Protocols whose header starts with 16-bit source and destination ports.
const PORTED: [u8; 5] = [6, 17, 33, 132, 136];

impl L4 {
    /// From Neutron's fields: `protocol` (number) and `port_range`
    /// (`port_range_min`, `port_range_max`; for ICMP the type and the code,
    /// a value above 255 meaning "any"). Errors on a port range with a
    /// protocol that has no ports, or `min > max`.
    pub fn from_neutron(
        protocol: Option<u8>,
        port_range: Option<(u16, u16)>,
    ) -> Result<Self, NftError> {
        let Some(proto) = protocol else {
            return match port_range {
                None => Ok(L4::Any),
                Some(_) => Err(NftError::invalid(
                    "rule",
                    "a port range needs a protocol".to_string(),
                )),
            };
        };
        match (proto, port_range) {
            (1, None) => Ok(L4::Icmp {
                icmp_type: None,
                code: None,
            }),
            (1, Some((t, c))) => {
                let icmp_type = u8::try_from(t).ok();
                let code = u8::try_from(c).ok();
                if icmp_type.is_none() && code.is_some() {
                    return Err(NftError::invalid(
                        "rule",
                        "an ICMP code needs an ICMP type".to_string(),
                    ));
                }
                Ok(L4::Icmp { icmp_type, code })
            }
            (p, None) => Ok(L4::Proto(p)),
            (p, Some((min, max))) if PORTED.contains(&p) => {
                if min > max {
                    return Err(NftError::invalid(
                        "rule",
                        format!("port range {min}-{max}: min above max"),
                    ));
                }
                Ok(L4::Ports { proto: p, min, max })
            }
            (p, Some(_)) => Err(NftError::invalid(
                "rule",
                format!("protocol {p} has no ports, but the rule has a port range"),
            )),
        }
    }
}

/// Where the other end of a rule's traffic may be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Remote {
    /// Anywhere.
    Any,
    /// A prefix (`remote_ip_prefix`).
    Prefix(Ipv4Net),
    /// A security group's members (`remote_group_id`): a named set
    /// `rg_<first 12 id characters>` in the port's table.
    Group {
        /// The group's id.
        group_id: String,
        /// Its members' addresses.
        members: Vec<Ipv4Addr>,
    },
}

/// One security group rule (IPv4), resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FilterRule {
    /// The rule's id (kept as the nft rule's comment).
    pub id: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// Protocol and ports.
    pub l4: L4,
    /// The other end.
    pub remote: Remote,
}

/// One port's filter: anti-spoofing plus its security groups' rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFilter {
    /// The port's host device (its TAP, or a router leg's bridge end).
    pub tap: String,
    /// The port's MAC.
    pub mac: Mac,
    /// Its fixed IPs.
    pub ips: Vec<Ipv4Addr>,
    /// `allowed_address_pairs`: a prefix and a MAC (`None`: the port's).
    pub allowed_pairs: Vec<(Ipv4Net, Option<Mac>)>,
    /// The rules of all its security groups.
    pub rules: Vec<FilterRule>,
}

/// A floating IP of a router: 1:1 NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloatingNat {
    /// The floating IP's id (kept as a comment).
    pub id: String,
    /// The external address.
    pub floating_ip: Ipv4Addr,
    /// The inside address it maps to.
    pub fixed_ip: Ipv4Addr,
}

/// A router's NAT, inside its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterNat {
    /// The gateway leg's device in the namespace (`qg-...`).
    pub gateway_if: String,
    /// The gateway leg's address (what SNAT rewrites to).
    pub gateway_ip: Ipv4Addr,
    /// `enable_snat`.
    pub enable_snat: bool,
    /// The inside subnets SNAT applies to.
    pub snat_sources: Vec<Ipv4Net>,
    /// Floating IPs.
    pub floating_ips: Vec<FloatingNat>,
}

/// The host's masquerade for an external network that has no real uplink
/// of its own (the "usable default on one host"): its subnet leaves through
/// whatever route the host has, behind the host's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalNat {
    /// The external network's bridge.
    pub bridge: String,
    /// Its subnet.
    pub cidr: Ipv4Net,
}
