//! The desired network state of one host, as the Networking service decides
//! it from the database ([`NetPlan`]), and the only thing the host side
//! ([`super::NetHost`]) is told. Neutron's split: the server side (API, IPAM,
//! database) computes this; the agent side (bridges, TAPs, namespaces,
//! nftables, DHCP) converges the host to it. A plan is complete: whatever
//! nubo owns on the host and the plan does not name is removed.
//!
//! Names of host objects are derived here, once, from ids (Neutron's
//! linuxbridge and l3 agent conventions): see [`bridge_name`], [`tap_name`],
//! [`router_namespace`], [`router_leg_name`].

use std::net::Ipv4Addr;

/// Prefixes in the plan (subnets, routes, addresses, allowed address
/// pairs, security group remotes) are netstack's one IPv4 prefix type,
/// serialized as `{"addr": "a.b.c.d", "prefix_len": n}`.
pub use netstack::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Linux interface names hold at most 15 bytes; ids are cut to this many
/// characters after a 3–4 letter prefix, as Neutron does.
const ID_CHARS: usize = 11;

fn short(id: &str) -> &str {
    let end = id
        .char_indices()
        .nth(ID_CHARS)
        .map(|(i, _)| i)
        .unwrap_or(id.len());
    &id[..end]
}

/// The bridge of a network: `brq` + the first 11 characters of its id.
pub fn bridge_name(network_id: &str) -> String {
    format!("brq{}", short(network_id))
}

/// The host-side device of a port (a guest's TAP, or the bridge end of a
/// router leg's veth): `tap` + the first 11 characters of the port id.
pub fn tap_name(port_id: &str) -> String {
    format!("tap{}", short(port_id))
}

/// The router namespace: `qrouter-` + the router id.
pub fn router_namespace(router_id: &str) -> String {
    format!("qrouter-{router_id}")
}

/// The namespace end of a router leg: `qr-` (inside) or `qg-` (gateway) +
/// the first 11 characters of the port id.
pub fn router_leg_name(port_id: &str, gateway: bool) -> String {
    let prefix = if gateway { "qg-" } else { "qr-" };
    format!("{prefix}{}", short(port_id))
}

/// How a network's layer 2 leaves the host (Neutron's provider types).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Segment {
    /// The mapped physical interface itself is enslaved to the bridge.
    Flat {
        /// `provider:physical_network`, mapped to an interface by the host.
        physnet: String,
    },
    /// An 802.1Q sub-interface (`<phys>.<vid>`) of the mapped interface.
    Vlan {
        /// `provider:physical_network`.
        physnet: String,
        /// `provider:segmentation_id`, 1–4094.
        vid: u16,
    },
    /// A VXLAN device `vxlan-<vni>` over the host's underlay address, with
    /// the other hosts' VTEPs in its FDB.
    Vxlan {
        /// `provider:segmentation_id`, 1–16777215.
        vni: u32,
    },
}

/// One network present on this host: a bridge and its segment device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// The network's id.
    pub id: String,
    /// Its segment.
    pub segment: Segment,
    /// The network's MTU (what guests get by DHCP; devices are set to it).
    pub mtu: u32,
    /// DHCP on this network: one entry per subnet with `enable_dhcp`.
    pub dhcp: Vec<DhcpSubnet>,
}

/// DHCP for one subnet: its options and its static leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpSubnet {
    /// The subnet's id.
    pub subnet_id: String,
    /// The subnet's CIDR.
    pub cidr: Ipv4Net,
    /// The address the DHCP server answers from (the subnet's DHCP port,
    /// Neutron's `network:dhcp` port).
    pub server_ip: Ipv4Addr,
    /// The MAC the DHCP server answers from.
    pub server_mac: [u8; 6],
    /// Option 3 (router), if the subnet has a gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Option 6.
    pub dns_nameservers: Vec<Ipv4Addr>,
    /// Option 121 (classless static routes): destination and next hop.
    pub host_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// MAC → address, one per port with an address on this subnet.
    pub leases: Vec<DhcpLease>,
}

/// A static lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpLease {
    /// The port's MAC.
    pub mac: [u8; 6],
    /// Its fixed IP on this subnet.
    pub ip: Ipv4Addr,
    /// Option 12, from the port's `dns_name` or `host-<ip with dashes>`.
    pub hostname: String,
}

/// Which way a security group rule matches, seen from the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the port (the guest receives it).
    Ingress,
    /// Traffic from the port (the guest sends it).
    Egress,
}

/// Where the other end of a rule's traffic may be.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    /// Anywhere (no `remote_ip_prefix`, no `remote_group_id`).
    Any,
    /// `remote_ip_prefix`.
    Prefix(Ipv4Net),
    /// `remote_group_id`, resolved to the group's members' addresses (fixed
    /// IPs and allowed address pairs of every port in the group), at the
    /// time of the plan.
    Group {
        /// The group's id (names the nftables set).
        group_id: String,
        /// Its members' addresses.
        members: Vec<Ipv4Addr>,
    },
}

/// One IPv4 security group rule, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SgRule {
    /// The rule's id (kept as an nftables comment).
    pub id: String,
    /// Ingress or egress.
    pub direction: Direction,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, ...); `None`: any.
    pub protocol: Option<u8>,
    /// TCP/UDP destination port range (`port_range_min..=max`); for ICMP,
    /// `min` is the type and `max` the code (Neutron's convention), a code
    /// above 255 meaning any code.
    pub port_range: Option<(u16, u16)>,
    /// The other end.
    pub remote: Remote,
}

/// What a port is for, which says how it is plumbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// A server's NIC: a TAP the VMM gets (`compute:*` owners).
    Vm,
    /// A router's leg: a veth pair, one end in the bridge, the other in the
    /// router's namespace (`network:router_interface`,
    /// `network:router_gateway`); planned in [`RouterPlan`].
    Router,
    /// Anything else (`network:dhcp`, unbound ports): nothing on the host.
    None,
}

/// One port bound to this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPlan {
    /// The port's id ([`tap_name`] names its device).
    pub id: String,
    /// Its network.
    pub network_id: String,
    /// What it is.
    pub kind: PortKind,
    /// `admin_state_up`: a port that is down gets its device down.
    pub admin_state_up: bool,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its fixed IPs.
    pub ips: Vec<Ipv4Addr>,
    /// Port security: anti-spoofing and security groups. Off: no filtering.
    pub port_security: bool,
    /// `allowed_address_pairs`: more (address or prefix, MAC) the port may
    /// send from; the MAC defaults to the port's.
    pub allowed_address_pairs: Vec<(Ipv4Net, Option<[u8; 6]>)>,
    /// The rules of all its security groups, resolved.
    pub rules: Vec<SgRule>,
}

/// One leg of a router: a port of the router on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterLeg {
    /// The port's id.
    pub port_id: String,
    /// The network (its bridge takes the leg).
    pub network_id: String,
    /// The port's MAC.
    pub mac: [u8; 6],
    /// The leg's address and the subnet's prefix length (for example the
    /// inside subnet's `gateway_ip`/24).
    pub addrs: Vec<Ipv4Net>,
}

/// A floating IP of a router: 1:1 NAT between the external address and a
/// fixed IP behind the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIpPlan {
    /// The floating IP's id.
    pub id: String,
    /// `floating_ip_address`, added to the gateway leg (so it answers ARP).
    pub floating_ip: Ipv4Addr,
    /// `fixed_ip_address` of the associated port.
    pub fixed_ip: Ipv4Addr,
}

/// The router's external side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterGateway {
    /// The gateway port on the external network.
    pub leg: RouterLeg,
    /// The external subnet's gateway: the namespace's default route.
    pub default_route: Option<Ipv4Addr>,
    /// `enable_snat`: masquerade the inside subnets behind the leg's address.
    pub enable_snat: bool,
    /// The inside subnets that SNAT applies to.
    pub snat_sources: Vec<Ipv4Net>,
}

/// One router on this host: a namespace with forwarding on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPlan {
    /// The router's id ([`router_namespace`] names its namespace).
    pub id: String,
    /// `admin_state_up`: a router that is down has its legs down.
    pub admin_state_up: bool,
    /// Inside legs (`add_router_interface`).
    pub interfaces: Vec<RouterLeg>,
    /// `external_gateway_info`, if set.
    pub gateway: Option<RouterGateway>,
    /// Floating IPs through this router (only with a gateway).
    pub floating_ips: Vec<FloatingIpPlan>,
    /// The router's extra `routes`: destination and next hop.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// Everything nubo wants on this host's network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPlan {
    /// Networks with at least one port (or DHCP, or router leg) here.
    pub networks: Vec<NetworkPlan>,
    /// Ports bound to this host.
    pub ports: Vec<PortPlan>,
    /// Routers on this host.
    pub routers: Vec<RouterPlan>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_an_interface_name() {
        let id = "0123456789abcdef-0123-4567-89ab-cdef01234567";
        for name in [
            bridge_name(id),
            tap_name(id),
            router_leg_name(id, true),
            router_leg_name(id, false),
        ] {
            assert!(name.len() <= 15, "{name}");
        }
        assert_eq!(bridge_name(id), "brq0123456789a");
        assert_eq!(tap_name("abc"), "tapabc");
    }

    #[test]
    fn prefixes_serialize_as_before() {
        // The JSON `plan::Ipv4Cidr` had: a struct of addr and prefix_len.
        let route = (
            Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16).unwrap(),
            Ipv4Addr::new(10, 0, 0, 1),
        );
        let j = serde_json::to_string(&route).unwrap();
        assert_eq!(j, r#"[{"addr":"192.168.0.0","prefix_len":16},"10.0.0.1"]"#);
        assert_eq!(
            serde_json::from_str::<(Ipv4Net, Ipv4Addr)>(&j).unwrap(),
            route
        );
        let remote = Remote::Prefix("10.0.0.0/8".parse().unwrap());
        let j = serde_json::to_string(&remote).unwrap();
        assert_eq!(j, r#"{"prefix":{"addr":"10.0.0.0","prefix_len":8}}"#);
        assert_eq!(serde_json::from_str::<Remote>(&j).unwrap(), remote);
        // A length above 32 is refused, not carried along.
        assert!(serde_json::from_str::<Ipv4Net>(r#"{"addr":"10.0.0.0","prefix_len":33}"#).is_err());
    }
}
