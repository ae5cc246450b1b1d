//! Layer 2/3 plumbing over route netlink (`rtnetlink`): what the host agent
//! needs to build a network's data plane. No `ip`/`bridge` commands are run.
//!
//! Everything goes through a [`Netlink`] handle bound to one network
//! namespace ([`Netlink::host`], [`Netlink::in_namespace`]); its API is
//! blocking (see [`handle`]). Namespaces themselves are in [`crate::netns`].
//!
//! Primitives (each one netlink request, or a lookup and a request):
//! - Links ([`links`]): [`Netlink::link`] (index, [`LinkKind`], master,
//!   MTU, admin/oper state, MAC, VXLAN and VLAN details),
//!   [`Netlink::links`], [`Netlink::delete_link`] (absent is fine),
//!   [`Netlink::set_up`], [`Netlink::set_mtu`], [`Netlink::set_master`],
//!   [`Netlink::set_mac`], [`Netlink::move_to_namespace`].
//! - Creation ([`links`]): [`Netlink::create_bridge`] (STP off, forward
//!   delay 0), [`Netlink::create_vxlan`] (`nolearning`, UDP port, local
//!   address, optional underlay device), [`Netlink::create_vlan`] (802.1Q
//!   `<parent>.<vid>`), [`Netlink::create_veth`] (peer optionally created
//!   directly in another namespace).
//! - Addresses ([`addr`]): IPv4 addresses with prefix on a link.
//! - Routes ([`route`]): IPv4 routes of the main table.
//! - FDB ([`fdb`]): a VXLAN device's `00:00:00:00:00:00 dst VTEP` flooding
//!   entries (`bridge fdb append`).
//! - Idempotent `ensure_*` helpers ([`ensure`]) returning whether they
//!   changed anything: what the agent's reconcile loop is built on.
//! - Feature probes ([`probe`]): whether the kernel can make bridges,
//!   VXLAN and VLAN devices, tried in a throwaway namespace.
//!
//! Errors ([`Error`]) keep the kernel's errno; a kernel that lacks a link
//! type gives [`Error::Unsupported`] naming it.

pub mod addr;
pub mod ensure;
pub mod error;
pub mod fdb;
pub mod handle;
pub mod links;
pub mod probe;
pub mod route;

use std::net::Ipv4Addr;

pub use error::{Error, Result};
pub use fdb::FdbEntry;
pub use handle::Netlink;
pub use links::VxlanSpec;
pub use probe::{probe_bridge, probe_vlan, probe_vxlan};
pub use route::{Route, RouteProto, RouteSpec};

use crate::Ipv4Net;

/// The standard VXLAN UDP port (IANA), what `dstport 4789` sets.
pub const VXLAN_PORT: u16 = 4789;

/// What the kernel says a VLAN feature is missing as.
pub const VLAN_FEATURE: &str = "802.1Q VLAN (kernel module 8021q)";
/// What the kernel says a VXLAN feature is missing as.
pub const VXLAN_FEATURE: &str = "VXLAN (kernel module vxlan)";
/// What the kernel says a bridge feature is missing as.
pub const BRIDGE_FEATURE: &str = "Ethernet bridge (kernel module bridge)";
/// What the kernel says a veth feature is missing as.
pub const VETH_FEATURE: &str = "veth pairs (kernel module veth)";

/// The type of a link (`IFLA_INFO_KIND`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// A VXLAN device.
    Vxlan,
    /// An 802.1Q VLAN sub-interface.
    Vlan,
    /// One end of a veth pair.
    Veth,
    /// A TUN or TAP device.
    Tun,
    /// Another kind, by its kernel name (`dummy`, `bond`, ...).
    Other(String),
    /// No kind: a physical device or the loopback.
    Device,
}

/// A VXLAN device's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanInfo {
    /// The VNI.
    pub vni: u32,
    /// The local (source) address, if set.
    pub local: Option<Ipv4Addr>,
    /// The UDP destination port.
    pub port: u16,
    /// The underlay device's index, if bound to one.
    pub underlay: Option<u32>,
    /// Whether the device learns remote MACs (nubo wants `false`).
    pub learning: bool,
}

/// A VLAN sub-interface's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanInfo {
    /// The VLAN id.
    pub vid: u16,
    /// The parent's index.
    pub parent: Option<u32>,
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Its type.
    pub kind: LinkKind,
    /// The bridge (or other master) it is enslaved to: index.
    pub master: Option<u32>,
    /// The master's name (resolved in the same namespace).
    pub master_name: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub admin_up: bool,
    /// Operationally up (`IF_OPER_UP`, or `UNKNOWN` with `IFF_RUNNING`,
    /// as for TAPs with a reader and loopback).
    pub oper_up: bool,
    /// MAC address, if it has an Ethernet one.
    pub mac: Option<[u8; 6]>,
    /// The VXLAN parameters of a [`LinkKind::Vxlan`].
    pub vxlan: Option<VxlanInfo>,
    /// The VLAN parameters of a [`LinkKind::Vlan`].
    pub vlan: Option<VlanInfo>,
    /// The `IFLA_LINK` index: a VLAN's parent, a veth's peer (when in the
    /// same namespace).
    pub link: Option<u32>,
}

impl Link {
    /// Whether the name is one nubo gives its devices: `brq*` bridges,
    /// `tap*` TAPs and router legs, `vxlan-*` devices, `qr-*`/`qg-*`
    /// router ends. VLAN sub-interfaces are found by [`LinkKind::Vlan`].
    pub fn is_nubo_named(&self) -> bool {
        ["brq", "tap", "vxlan-", "qr-", "qg-"]
            .iter()
            .any(|p| self.name.starts_with(p))
    }
}

/// Checks an interface name: 1–15 bytes, no `/`, `:`, whitespace or NUL,
/// not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace());
    if bad {
        return Err(Error::Invalid(format!("interface name {name:?}")));
    }
    Ok(())
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames() {
        for bad in [
            "",
            ".",
            "..",
            "0123456789abcdef",
            "a b",
            "a/b",
            "a:b",
            "a\0",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        check_ifname("eth0.100").unwrap();
        check_ifname("vxlan-16777215").unwrap();
    }

    #[test]
    fn nets() {
        let e: Error = Ipv4Net::new(Ipv4Addr::LOCALHOST, 33).unwrap_err().into();
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        assert_eq!(format_mac(&[0, 1, 0xab, 3, 4, 5]), "00:01:ab:03:04:05");
    }
}
