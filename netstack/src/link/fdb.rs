//! The forwarding database of a VXLAN device: the l2population flooding
//! entries `00:00:00:00:00:00 dst VTEP` (one per remote host on the
//! network), which make broadcast/unknown/multicast frames go to every
//! listed VTEP. `bridge fdb append 00:00:00:00:00:00 dev vxlan-N dst IP
//! self permanent` equivalent: `RTM_NEWNEIGH`, family `AF_BRIDGE`,
//! `NTF_SELF`, `NUD_PERMANENT`, `NLM_F_CREATE | NLM_F_APPEND`.

use std::net::Ipv4Addr;

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::error::{Error, Result};
use super::Netlink;

/// The all-zero MAC of flooding entries.
pub const FLOOD_MAC: [u8; 6] = [0; 6];

/// One FDB entry of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    /// The MAC ([`FLOOD_MAC`] for flooding entries).
    pub mac: [u8; 6],
    /// The remote VTEP, for VXLAN entries.
    pub dst: Option<Ipv4Addr>,
    /// `NUD_PERMANENT` (static) rather than learned.
    pub permanent: bool,
}

fn parse_fdb(msg: &NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut dst = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => {
                mac = <[u8; 6]>::try_from(l.as_slice()).ok();
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
            // In an AF_BRIDGE message the library cannot tell the
            // address family of NDA_DST: four bytes are an IPv4 VTEP.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                dst = <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from);
            }
            _ => {}
        }
    }
    Some(FdbEntry {
        mac: mac?,
        dst,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

fn flood_message(index: u32, vtep: Ipv4Addr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(FLOOD_MAC.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            vtep,
        )));
    msg
}

impl Netlink {
    /// The FDB entries of device `dev` (for a VXLAN device: its own
    /// `self` entries, with their remote VTEPs).
    pub fn fdb(&self, dev: &str) -> Result<Vec<FdbEntry>> {
        let index = self.index_of(dev)?;
        let req = self
            .rtnl()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge);
        let msgs: Vec<NeighbourMessage> = self
            .block(req.execute().try_collect())
            .map_err(|e| Error::from_rtnl(format!("listing the FDB of {dev}"), e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(parse_fdb)
            .collect())
    }

    /// The VTEPs of the flooding entries of VXLAN device `dev`.
    pub fn flood_vteps(&self, dev: &str) -> Result<Vec<Ipv4Addr>> {
        let mut v: Vec<Ipv4Addr> = self
            .fdb(dev)?
            .into_iter()
            .filter(|e| e.mac == FLOOD_MAC)
            .filter_map(|e| e.dst)
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    async fn neigh_request(
        mut handle: rtnetlink::Handle,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut resp = handle.request(req)?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }

    /// Appends the flooding entry `00:00:00:00:00:00 dst vtep` to VXLAN
    /// device `dev` (`bridge fdb append`).
    pub fn fdb_append_flood(&self, dev: &str, vtep: Ipv4Addr) -> Result<()> {
        let index = self.index_of(dev)?;
        let msg = RouteNetlinkMessage::NewNeighbour(flood_message(index, vtep));
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        self.block(Self::neigh_request(self.rtnl(), msg, flags))
            .map_err(|e| {
                Error::from_rtnl(format!("appending FDB flood entry {vtep} to {dev}"), e)
            })?;
        tracing::info!(dev, %vtep, "FDB flood entry appended");
        Ok(())
    }

    /// Deletes the flooding entry to `vtep` from VXLAN device `dev`.
    /// Returns `false` if it was not there.
    pub fn fdb_delete_flood(&self, dev: &str, vtep: Ipv4Addr) -> Result<bool> {
        // The kernel answers success for a missing remote of an existing
        // MAC: look first.
        if !self.flood_vteps(dev)?.contains(&vtep) {
            return Ok(false);
        }
        let index = self.index_of(dev)?;
        let msg = RouteNetlinkMessage::DelNeighbour(flood_message(index, vtep));
        match self.block(Self::neigh_request(
            self.rtnl(),
            msg,
            NLM_F_REQUEST | NLM_F_ACK,
        )) {
            Ok(()) => {
                tracing::info!(dev, %vtep, "FDB flood entry deleted");
                Ok(true)
            }
            Err(e) => {
                match Error::from_rtnl(format!("deleting FDB flood entry {vtep} of {dev}"), e) {
                    Error::Kernel { errno, .. } if errno == libc::ENOENT => Ok(false),
                    other => Err(other),
                }
            }
        }
    }
}
