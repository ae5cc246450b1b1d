//! Idempotent "ensure" helpers: each brings one object to the wanted state
//! and returns whether it changed anything (`false` on a second call with
//! the same arguments). The agent's reconcile pass is built from these.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::error::{Error, Result};
use super::links::VxlanSpec;
use super::{Ipv4Net, LinkKind, Netlink, RouteProto, RouteSpec};

impl Netlink {
    /// Bridge `name` exists (STP off, forward delay 0 when created), has
    /// MTU `mtu` (if given) and is up. [`Error::Conflict`] if `name` is
    /// another kind of link.
    pub fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<bool> {
        match self.link(name)? {
            None => {
                self.create_bridge(name, mtu)?;
                self.ensure_up(name)?;
                Ok(true)
            }
            Some(l) if l.kind == LinkKind::Bridge => {
                let mut changed = false;
                if let Some(mtu) = mtu {
                    changed |= self.ensure_mtu(name, mtu)?;
                }
                changed |= self.ensure_up(name)?;
                Ok(changed)
            }
            Some(l) => Err(Error::Conflict(format!(
                "{name} exists and is a {:?}, not a bridge",
                l.kind
            ))),
        }
    }

    /// VXLAN device `spec.name` exists with the VNI, local address, port
    /// and underlay of `spec` and `nolearning` (else it is deleted and
    /// recreated, which frees it from its bridge: call
    /// [`Netlink::ensure_master`] after), has the MTU (if given) and is up.
    pub fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<bool> {
        let underlay = match &spec.underlay {
            Some(dev) => Some(self.index_of(dev)?),
            None => None,
        };
        let mut changed = false;
        match self.link(&spec.name)? {
            Some(l) => {
                let same = l.kind == LinkKind::Vxlan
                    && l.vxlan.is_some_and(|v| {
                        v.vni == spec.vni
                            && v.local == spec.local
                            && v.port == spec.port
                            && v.underlay == underlay
                            && !v.learning
                    });
                if !same {
                    if l.kind != LinkKind::Vxlan && !spec.name.starts_with("vxlan-") {
                        return Err(Error::Conflict(format!(
                            "{} exists and is a {:?}, not a VXLAN device",
                            spec.name, l.kind
                        )));
                    }
                    tracing::info!(vxlan = %spec.name, "VXLAN parameters differ: recreating");
                    self.delete_link(&spec.name)?;
                    self.create_vxlan(spec)?;
                    changed = true;
                }
            }
            None => {
                self.create_vxlan(spec)?;
                changed = true;
            }
        }
        if let Some(mtu) = spec.mtu {
            changed |= self.ensure_mtu(&spec.name, mtu)?;
        }
        changed |= self.ensure_up(&spec.name)?;
        Ok(changed)
    }

    /// VLAN sub-interface `name` of `parent` with id `vid` exists (else a
    /// VLAN link of that name is recreated) and is up.
    pub fn ensure_vlan(&self, parent: &str, vid: u16, name: &str) -> Result<bool> {
        let parent_index = self.index_of(parent)?;
        let mut changed = false;
        match self.link(name)? {
            Some(l) => {
                let same = l.kind == LinkKind::Vlan
                    && l.vlan
                        .is_some_and(|v| v.vid == vid && v.parent == Some(parent_index));
                if !same {
                    if l.kind != LinkKind::Vlan {
                        return Err(Error::Conflict(format!(
                            "{name} exists and is a {:?}, not a VLAN",
                            l.kind
                        )));
                    }
                    self.delete_link(name)?;
                    self.create_vlan(parent, vid, name)?;
                    changed = true;
                }
            }
            None => {
                self.create_vlan(parent, vid, name)?;
                changed = true;
            }
        }
        changed |= self.ensure_up(name)?;
        Ok(changed)
    }

    /// `link` is enslaved to `bridge` (`None`: to nothing).
    pub fn ensure_master(&self, link: &str, bridge: Option<&str>) -> Result<bool> {
        let l = self.require_link(link)?;
        if l.master_name.as_deref() == bridge {
            return Ok(false);
        }
        self.set_master(link, bridge)?;
        Ok(true)
    }

    /// `link` is administratively up.
    pub fn ensure_up(&self, link: &str) -> Result<bool> {
        self.ensure_admin_state(link, true)
    }

    /// `link` is administratively up (`true`) or down.
    pub fn ensure_admin_state(&self, link: &str, up: bool) -> Result<bool> {
        let l = self.require_link(link)?;
        if l.admin_up == up {
            return Ok(false);
        }
        self.set_up(link, up)?;
        Ok(true)
    }

    /// `link` has MTU `mtu`.
    pub fn ensure_mtu(&self, link: &str, mtu: u32) -> Result<bool> {
        if self.require_link(link)?.mtu == mtu {
            return Ok(false);
        }
        self.set_mtu(link, mtu)?;
        Ok(true)
    }

    /// `link` has MAC `mac`.
    pub fn ensure_mac(&self, link: &str, mac: [u8; 6]) -> Result<bool> {
        if self.require_link(link)?.mac == Some(mac) {
            return Ok(false);
        }
        self.set_mac(link, mac)?;
        Ok(true)
    }

    /// `link` has exactly the IPv4 addresses `desired`: missing ones are
    /// added, others removed.
    pub fn ensure_addrs(&self, link: &str, desired: &[Ipv4Net]) -> Result<bool> {
        let want: BTreeSet<Ipv4Net> = desired.iter().copied().collect();
        let have: BTreeSet<Ipv4Net> = self.addresses(link)?.into_iter().collect();
        let mut changed = false;
        for a in have.difference(&want) {
            changed |= self.delete_address(link, *a)?;
        }
        for a in want.difference(&have) {
            self.add_address(link, *a)?;
            changed = true;
        }
        Ok(changed)
    }

    /// VXLAN device `dev` has exactly the flooding entries to `vteps`.
    pub fn ensure_fdb(&self, dev: &str, vteps: &[Ipv4Addr]) -> Result<bool> {
        let want: BTreeSet<Ipv4Addr> = vteps.iter().copied().collect();
        let have: BTreeSet<Ipv4Addr> = self.flood_vteps(dev)?.into_iter().collect();
        let mut changed = false;
        for v in have.difference(&want) {
            changed |= self.fdb_delete_flood(dev, *v)?;
        }
        for v in want.difference(&have) {
            self.fdb_append_flood(dev, *v)?;
            changed = true;
        }
        Ok(changed)
    }

    /// The main table's `proto static`/`proto boot` IPv4 routes (the ones
    /// nubo or an admin added; kernel link routes are left alone) are
    /// exactly `desired`: missing ones are added (replacing a route to the
    /// same destination), others deleted.
    pub fn ensure_routes(&self, desired: &[RouteSpec]) -> Result<bool> {
        let have: Vec<_> = self
            .routes()?
            .into_iter()
            .filter(|r| matches!(r.protocol, RouteProto::Static | RouteProto::Boot))
            .collect();
        let mut changed = false;
        for r in &have {
            if !desired.iter().any(|d| d.matches(r)) {
                let spec = RouteSpec {
                    dst: r.dst,
                    gateway: r.gateway,
                    dev: r.dev.clone(),
                };
                changed |= self.delete_route(&spec)?;
            }
        }
        for d in desired {
            if !have.iter().any(|r| d.matches(r)) {
                self.replace_route(d)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// A veth pair exists with `host_end` in this handle's namespace and
    /// `ns_end` in namespace `ns`; a `host_end` whose peer is missing is
    /// recreated. Both ends are left down if created (the caller sets
    /// MACs, masters and state).
    pub fn ensure_veth(&self, host_end: &str, ns: &str, ns_end: &str) -> Result<bool> {
        let peer = Netlink::in_namespace(ns)?;
        let here = self.link(host_end)?;
        let there = peer.link(ns_end)?;
        match (&here, &there) {
            (Some(h), Some(t)) if h.kind == LinkKind::Veth && t.kind == LinkKind::Veth => {
                return Ok(false)
            }
            (Some(h), _) if h.kind != LinkKind::Veth => {
                return Err(Error::Conflict(format!(
                    "{host_end} exists and is a {:?}, not a veth",
                    h.kind
                )))
            }
            (_, Some(t)) if t.kind != LinkKind::Veth => {
                return Err(Error::Conflict(format!(
                    "{ns_end} exists in {ns} and is a {:?}, not a veth",
                    t.kind
                )))
            }
            _ => {}
        }
        // Half a pair (or a pair elsewhere): start over.
        if here.is_some() {
            self.delete_link(host_end)?;
        }
        if there.is_some() {
            peer.delete_link(ns_end)?;
        }
        self.create_veth(host_end, ns_end, Some(ns))?;
        Ok(true)
    }
}
