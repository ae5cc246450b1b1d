//! IPv4 addresses of a link: list, add, delete.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::AddressFamily;

use super::error::{Error, Result};
use super::{Ipv4Net, Netlink};

fn v4_of(msg: &AddressMessage) -> Option<Ipv4Addr> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut address = None;
    for a in &msg.attributes {
        match a {
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
            // peer's on point-to-point links).
            AddressAttribute::Local(IpAddr::V4(v)) => return Some(*v),
            AddressAttribute::Address(IpAddr::V4(v)) => address = Some(*v),
            _ => {}
        }
    }
    address
}

impl Netlink {
    fn address_messages(&self, link: &str) -> Result<Vec<AddressMessage>> {
        let index = self.index_of(link)?;
        let req = self.rtnl().address().get().set_link_index_filter(index);
        self.block(req.execute().try_collect())
            .map_err(|e| Error::from_rtnl(format!("listing the addresses of {link}"), e))
    }

    /// The IPv4 addresses of `link`, with their prefix lengths.
    pub fn addresses(&self, link: &str) -> Result<Vec<Ipv4Net>> {
        let msgs = self.address_messages(link)?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                v4_of(m).map(|addr| Ipv4Net {
                    addr,
                    prefix_len: m.header.prefix_len,
                })
            })
            .collect())
    }

    /// Adds `addr` to `link` (with the subnet's broadcast address).
    /// `EEXIST` if it is already there.
    pub fn add_address(&self, link: &str, addr: Ipv4Net) -> Result<()> {
        let addr = Ipv4Net::new(addr.addr, addr.prefix_len)?;
        let index = self.index_of(link)?;
        let req = self
            .rtnl()
            .address()
            .add(index, IpAddr::V4(addr.addr), addr.prefix_len);
        self.block(req.execute())
            .map_err(|e| Error::from_rtnl(format!("adding {addr} to {link}"), e))?;
        tracing::info!(%addr, link, ns = ?self.namespace(), "address added");
        Ok(())
    }

    /// Deletes `addr` from `link`. Returns `false` if it was not there.
    pub fn delete_address(&self, link: &str, addr: Ipv4Net) -> Result<bool> {
        let msgs = self.address_messages(link)?;
        let Some(msg) = msgs
            .into_iter()
            .find(|m| v4_of(m) == Some(addr.addr) && m.header.prefix_len == addr.prefix_len)
        else {
            return Ok(false);
        };
        match self.block(self.rtnl().address().del(msg).execute()) {
            Ok(()) => {
                tracing::info!(%addr, link, ns = ?self.namespace(), "address deleted");
                Ok(true)
            }
            Err(e) => match Error::from_rtnl(format!("deleting {addr} from {link}"), e) {
                Error::Kernel { errno, .. } if errno == libc::EADDRNOTAVAIL => Ok(false),
                other => Err(other),
            },
        }
    }
}
