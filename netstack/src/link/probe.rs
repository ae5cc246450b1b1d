//! Feature probes: whether this kernel can build bridges, VXLAN devices and
//! 802.1Q VLANs. Each creates the device in a throwaway namespace (so the
//! host is never touched) and removes the namespace again. A missing
//! feature gives [`super::Error::Unsupported`] naming it (on a kernel without
//! `8021q`: "802.1Q VLAN (kernel module 8021q)").

use super::error::Result;
use super::links::VxlanSpec;
use super::Netlink;
use crate::netns::TempNetns;

fn in_throwaway<F: FnOnce(&Netlink) -> Result<()>>(f: F) -> Result<()> {
    let ns = TempNetns::new("nuboprobe")?;
    let nl = Netlink::in_namespace(ns.name())?;
    let result = f(&nl);
    drop(nl);
    drop(ns);
    result
}

/// Whether Linux bridges can be created.
pub fn probe_bridge() -> Result<()> {
    in_throwaway(|nl| nl.create_bridge("probebr0", None))
}

/// Whether VXLAN devices can be created.
pub fn probe_vxlan() -> Result<()> {
    in_throwaway(|nl| {
        nl.create_vxlan(&VxlanSpec {
            name: "vxlan-probe".into(),
            vni: 1,
            local: None,
            port: super::VXLAN_PORT,
            underlay: None,
            mtu: None,
        })
    })
}

/// Whether 802.1Q VLAN sub-interfaces can be created (on a veth parent).
pub fn probe_vlan() -> Result<()> {
    in_throwaway(|nl| {
        nl.create_veth("probe0", "probe1", None)?;
        nl.create_vlan("probe0", 10, "probe0.10")
    })
}
