//! IPv4 routes of a namespace's main table: list, add, replace, delete.
//! Routes nubo adds carry `proto static`, so [`super::ensure`] can tell
//! them from the kernel's link routes (`proto kernel`).

use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::error::{Error, Result};
use super::{Ipv4Net, Netlink};

/// Who installed a route (`rtm_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteProto {
    /// The kernel (a link's prefix route).
    Kernel,
    /// `proto boot`: `ip route add` without a protocol.
    Boot,
    /// `proto static`: what nubo installs.
    Static,
    /// A DHCP client.
    Dhcp,
    /// Anything else, by number.
    Other(u8),
}

impl From<&RouteProtocol> for RouteProto {
    fn from(p: &RouteProtocol) -> Self {
        match p {
            RouteProtocol::Kernel => Self::Kernel,
            RouteProtocol::Boot => Self::Boot,
            RouteProtocol::Static => Self::Static,
            RouteProtocol::Dhcp => Self::Dhcp,
            other => Self::Other(u8::from(*other)),
        }
    }
}

/// A route to install: `dst` via `gateway` and/or out of `dev`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteSpec {
    /// Destination prefix ([`Ipv4Net::DEFAULT`] for the default route);
    /// host bits are ignored.
    pub dst: Ipv4Net,
    /// Next hop.
    pub gateway: Option<Ipv4Addr>,
    /// Output device, by name.
    pub dev: Option<String>,
}

impl RouteSpec {
    /// The default route via `gateway`.
    pub fn default_via(gateway: Ipv4Addr) -> Self {
        Self {
            dst: Ipv4Net::DEFAULT,
            gateway: Some(gateway),
            dev: None,
        }
    }

    /// `dst` via `gateway`.
    pub fn via(dst: Ipv4Net, gateway: Ipv4Addr) -> Self {
        Self {
            dst,
            gateway: Some(gateway),
            dev: None,
        }
    }

    /// Whether installed route `r` is this one (same network, same next
    /// hop, and the same device if this names one).
    pub fn matches(&self, r: &Route) -> bool {
        let dst = Ipv4Net {
            addr: self.dst.network(),
            prefix_len: self.dst.prefix_len,
        };
        r.dst == dst && r.gateway == self.gateway && (self.dev.is_none() || r.dev == self.dev)
    }
}

/// A route of the main table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination (network address and prefix length).
    pub dst: Ipv4Net,
    /// Next hop.
    pub gateway: Option<Ipv4Addr>,
    /// Output device index.
    pub oif: Option<u32>,
    /// Output device name (resolved in the namespace).
    pub dev: Option<String>,
    /// Who installed it.
    pub protocol: RouteProto,
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    if msg.header.address_family != AddressFamily::Inet || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(Route {
        dst: Ipv4Net {
            addr: dst,
            prefix_len: msg.header.destination_prefix_length,
        },
        gateway,
        oif,
        dev: None,
        protocol: RouteProto::from(&msg.header.protocol),
    })
}

impl Netlink {
    /// The IPv4 unicast routes of the main table.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let req = self
            .rtnl()
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build());
        let msgs: Vec<RouteMessage> = self
            .block(req.execute().try_collect())
            .map_err(|e| Error::from_rtnl("listing routes", e))?;
        let mut routes: Vec<Route> = msgs.iter().filter_map(parse_route).collect();
        if routes.iter().any(|r| r.oif.is_some()) {
            let links = self.links()?;
            for r in &mut routes {
                r.dev = r
                    .oif
                    .and_then(|i| links.iter().find(|l| l.index == i))
                    .map(|l| l.name.clone());
            }
        }
        Ok(routes)
    }

    fn route_message(&self, spec: &RouteSpec) -> Result<RouteMessage> {
        let dst = Ipv4Net::new(spec.dst.network(), spec.dst.prefix_len)?;
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr, dst.prefix_len)
            .protocol(RouteProtocol::Static);
        match spec.gateway {
            Some(gw) => b = b.gateway(gw),
            None if spec.dev.is_some() => b = b.scope(RouteScope::Link),
            None => {
                return Err(Error::Invalid(format!(
                    "route to {dst} needs a gateway or a device"
                )))
            }
        }
        if let Some(dev) = &spec.dev {
            b = b.output_interface(self.index_of(dev)?);
        }
        Ok(b.build())
    }

    /// Adds a route (`proto static`); `EEXIST` if the same destination is
    /// already routed.
    pub fn add_route(&self, spec: &RouteSpec) -> Result<()> {
        let msg = self.route_message(spec)?;
        self.block(self.rtnl().route().add(msg).execute())
            .map_err(|e| Error::from_rtnl(format!("adding route {spec:?}"), e))?;
        tracing::info!(?spec, ns = ?self.namespace(), "route added");
        Ok(())
    }

    /// Adds a route, replacing any route to the same destination.
    pub fn replace_route(&self, spec: &RouteSpec) -> Result<()> {
        let msg = self.route_message(spec)?;
        self.block(self.rtnl().route().add(msg).replace().execute())
            .map_err(|e| Error::from_rtnl(format!("replacing route {spec:?}"), e))?;
        tracing::info!(?spec, ns = ?self.namespace(), "route replaced");
        Ok(())
    }

    /// Deletes the route `spec` names (any protocol, any scope). Returns
    /// `false` if there was none.
    pub fn delete_route(&self, spec: &RouteSpec) -> Result<bool> {
        let mut msg = self.route_message(spec)?;
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        match self.block(self.rtnl().route().del(msg).execute()) {
            Ok(()) => {
                tracing::info!(?spec, ns = ?self.namespace(), "route deleted");
                Ok(true)
            }
            Err(e) => match Error::from_rtnl(format!("deleting route {spec:?}"), e) {
                Error::Kernel { errno, .. } if errno == libc::ESRCH => Ok(false),
                other => Err(other),
            },
        }
    }
}
