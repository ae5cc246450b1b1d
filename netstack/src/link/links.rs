//! Links: look up, list, delete, change (state, MTU, master, MAC,
//! namespace) and create (bridge, VXLAN, VLAN, veth).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    BridgeStpState, InfoData, InfoKind, InfoVeth, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage, State,
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan, LinkVxlan};

use super::error::{Error, Result};
use super::{
    check_ifname, Link, LinkKind, Netlink, VlanInfo, VxlanInfo, BRIDGE_FEATURE, VETH_FEATURE,
    VLAN_FEATURE, VXLAN_FEATURE,
};
use crate::netns;

/// What [`Netlink::create_vxlan`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name (nubo: `vxlan-<vni>`).
    pub name: String,
    /// VNI, 1–16777215.
    pub vni: u32,
    /// Local (source) address: the host's underlay address.
    pub local: Option<Ipv4Addr>,
    /// UDP destination port ([`super::VXLAN_PORT`]).
    pub port: u16,
    /// Underlay device to bind to, by name.
    pub underlay: Option<String>,
    /// MTU (`None`: the kernel's default, underlay MTU − 50).
    pub mtu: Option<u32>,
}

/// Decodes a kernel link message.
pub(crate) fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: LinkKind::Device,
        master: None,
        master_name: None,
        mtu: 0,
        admin_up: msg.header.flags.contains(LinkFlags::Up),
        oper_up: false,
        mac: None,
        vxlan: None,
        vlan: None,
        link: None,
    };
    let mut oper = State::Unknown;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(i) if *i != 0 => link.master = Some(*i),
            LinkAttribute::Link(i) if *i != 0 => link.link = Some(*i),
            LinkAttribute::OperState(s) => oper = *s,
            LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => parse_info(infos, &mut link),
            _ => {}
        }
    }
    link.oper_up = oper == State::Up
        || (oper == State::Unknown && msg.header.flags.contains(LinkFlags::Running));
    if let Some(v) = &mut link.vlan {
        v.parent = link.link;
    }
    link
}

fn parse_info(infos: &[LinkInfo], link: &mut Link) {
    for info in infos {
        match info {
            LinkInfo::Kind(kind) => {
                link.kind = match kind {
                    InfoKind::Bridge => LinkKind::Bridge,
                    InfoKind::Vxlan => LinkKind::Vxlan,
                    InfoKind::Vlan => LinkKind::Vlan,
                    InfoKind::Veth => LinkKind::Veth,
                    InfoKind::Tun => LinkKind::Tun,
                    other => LinkKind::Other(other.to_string()),
                }
            }
            LinkInfo::Data(InfoData::Vxlan(data)) => {
                let mut v = VxlanInfo {
                    vni: 0,
                    local: None,
                    port: super::VXLAN_PORT,
                    underlay: None,
                    learning: true,
                };
                for d in data {
                    match d {
                        InfoVxlan::Id(id) => v.vni = *id,
                        InfoVxlan::Local(a) => v.local = Some(*a),
                        InfoVxlan::Port(p) => v.port = *p,
                        InfoVxlan::Link(i) if *i != 0 => v.underlay = Some(*i),
                        InfoVxlan::Learning(l) => v.learning = *l,
                        _ => {}
                    }
                }
                link.vxlan = Some(v);
            }
            LinkInfo::Data(InfoData::Vlan(data)) => {
                for d in data {
                    if let InfoVlan::Id(id) = d {
                        link.vlan = Some(VlanInfo {
                            vid: *id,
                            parent: None,
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

impl Netlink {
    /// Link `name`, `None` if there is no such link. Its master's name is
    /// resolved.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let Some(msg) = self.link_message(name)? else {
            return Ok(None);
        };
        let mut link = parse_link(&msg);
        if let Some(m) = link.master {
            link.master_name = self
                .link_message_by_index(m)?
                .map(|msg| parse_link(&msg).name);
        }
        Ok(Some(link))
    }

    /// Link `name`, or [`Error::NoSuchLink`].
    pub fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)?
            .ok_or_else(|| Error::NoSuchLink(name.to_string()))
    }

    /// Every link of the namespace, with kinds and master names, by index.
    pub fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .block(self.rtnl().link().get().execute().try_collect())
            .map_err(|e| Error::from_rtnl("listing links", e))?;
        let mut links: Vec<Link> = msgs.iter().map(parse_link).collect();
        let names: std::collections::HashMap<u32, String> =
            links.iter().map(|l| (l.index, l.name.clone())).collect();
        for l in &mut links {
            l.master_name = l.master.and_then(|m| names.get(&m).cloned());
        }
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// Deletes link `name` (a veth takes its peer along). Returns `false`
    /// if there was no such link.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(msg) = self.link_message(name)? else {
            return Ok(false);
        };
        let req = self.rtnl().link().del(msg.header.index);
        match self.block(req.execute()) {
            Ok(()) => {
                tracing::info!(link = name, ns = ?self.namespace(), "link deleted");
                Ok(true)
            }
            Err(e) => match Error::from_rtnl(format!("deleting link {name}"), e) {
                Error::Kernel { errno, .. } if errno == libc::ENODEV => Ok(false),
                other => Err(other),
            },
        }
    }

    fn set(&self, op: String, msg: LinkMessage) -> Result<()> {
        self.block(self.rtnl().link().set(msg).execute())
            .map_err(|e| Error::from_rtnl(op, e))
    }

    /// Sets link `name` administratively up or down.
    pub fn set_up(&self, name: &str, up: bool) -> Result<()> {
        let index = self.index_of(name)?;
        let b = LinkUnspec::new_with_index(index);
        let msg = if up { b.up() } else { b.down() }.build();
        self.set(
            format!("setting {name} {}", if up { "up" } else { "down" }),
            msg,
        )
    }

    /// Sets the MTU of link `name`.
    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let index = self.index_of(name)?;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set(format!("setting the MTU of {name} to {mtu}"), msg)
    }

    /// Enslaves link `name` to bridge `master`, or frees it (`None`).
    pub fn set_master(&self, name: &str, master: Option<&str>) -> Result<()> {
        let index = self.index_of(name)?;
        let b = LinkUnspec::new_with_index(index);
        let msg = match master {
            Some(m) => b.controller(self.index_of(m)?),
            None => b.nocontroller(),
        }
        .build();
        self.set(format!("setting the master of {name} to {master:?}"), msg)
    }

    /// Sets the MAC address of link `name`.
    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        let index = self.index_of(name)?;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set(
            format!("setting the MAC of {name} to {}", super::format_mac(&mac)),
            msg,
        )
    }

    /// Moves link `name` into namespace `ns`, renaming it to `new_name`
    /// there if given. The link arrives down, without addresses.
    pub fn move_to_namespace(&self, name: &str, ns: &str, new_name: Option<&str>) -> Result<()> {
        if let Some(n) = new_name {
            check_ifname(n)?;
        }
        let index = self.index_of(name)?;
        let file = netns::open(ns)?;
        let mut b = LinkUnspec::new_with_index(index).setns_by_fd(file.as_raw_fd());
        if let Some(n) = new_name {
            b = b.name(n);
        }
        self.set(format!("moving {name} to namespace {ns}"), b.build())?;
        tracing::info!(link = name, to = ns, ?new_name, "link moved");
        Ok(())
    }

    fn add(&self, op: String, feature: &str, msg: LinkMessage) -> Result<()> {
        self.block(self.rtnl().link().add(msg).execute())
            .map_err(|e| Error::from_rtnl_create(op, feature, e))
    }

    /// Creates bridge `name`: STP off, forward delay 0, the given MTU, up.
    pub fn create_bridge(&self, name: &str, mtu: Option<u32>) -> Result<()> {
        check_ifname(name)?;
        let mut b = LinkBridge::new(name)
            .stp_state(BridgeStpState::Disabled)
            .forward_delay(0);
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.add(format!("creating bridge {name}"), BRIDGE_FEATURE, b.build())?;
        tracing::info!(bridge = name, ?mtu, ns = ?self.namespace(), "bridge created");
        Ok(())
    }

    /// Creates a VXLAN device (`nolearning`, down).
    pub fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        check_ifname(&spec.name)?;
        if spec.vni == 0 || spec.vni > 0x00ff_ffff {
            return Err(Error::Invalid(format!("VNI {} (1–16777215)", spec.vni)));
        }
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(false);
        if let Some(local) = spec.local {
            b = b.local(local);
        }
        if let Some(dev) = &spec.underlay {
            b = b.dev(self.index_of(dev)?);
        }
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        self.add(
            format!("creating VXLAN {} (VNI {})", spec.name, spec.vni),
            VXLAN_FEATURE,
            b.build(),
        )?;
        tracing::info!(vxlan = %spec.name, vni = spec.vni, local = ?spec.local, "VXLAN created");
        Ok(())
    }

    /// Creates the 802.1Q sub-interface `name` of `parent` with VLAN id
    /// `vid` (down). [`Error::Unsupported`] without the `8021q` module.
    pub fn create_vlan(&self, parent: &str, vid: u16, name: &str) -> Result<()> {
        check_ifname(name)?;
        if vid == 0 || vid > 4094 {
            return Err(Error::Invalid(format!("VLAN id {vid} (1–4094)")));
        }
        let parent_index = self.index_of(parent)?;
        let msg = LinkVlan::new(name, parent_index, vid).build();
        self.add(format!("creating VLAN {name}"), VLAN_FEATURE, msg)?;
        tracing::info!(vlan = name, parent, vid, "VLAN created");
        Ok(())
    }

    /// Creates the veth pair `name` (here) – `peer`, the peer created
    /// directly in namespace `peer_ns` if given. Both ends down.
    pub fn create_veth(&self, name: &str, peer: &str, peer_ns: Option<&str>) -> Result<()> {
        check_ifname(name)?;
        check_ifname(peer)?;
        // Kept open until the request is done: the kernel reads the fd.
        let ns_file = peer_ns.map(netns::open).transpose()?;
        let mut peer_b = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string());
        if let Some(f) = &ns_file {
            peer_b = peer_b.setns_by_fd(f.as_raw_fd());
        }
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_b.build())))
            .build();
        self.add(format!("creating veth {name}/{peer}"), VETH_FEATURE, msg)?;
        drop(ns_file);
        tracing::info!(veth = name, peer, ?peer_ns, "veth pair created");
        Ok(())
    }
}
