//! [`NetAgent`]: the real [`NetHost`]. It converges this host to a
//! [`NetPlan`] with `netstack` — netlink for links, addresses, routes, FDB
//! and namespaces, `nft -f` for port filters and router NAT, the in-daemon
//! DHCP server — as Neutron's linuxbridge, l3 and DHCP agents do:
//!
//! - a network is a bridge `brq<id>` with its segment device enslaved: a
//!   VXLAN device `vxlan-<vni>` over `--vxlan-local-ip` with a flood entry
//!   per other host's VTEP (`--vxlan-peer`, Neutron's l2population), an
//!   802.1Q sub-interface `<iface>.<vid>` of the physnet's interface, or the
//!   physnet's interface itself (flat);
//! - a server's port is a TAP `tap<port>` in its bridge (opened here and
//!   handed to the VMM), filtered by the table `bridge nubo_p_tap<port>`;
//! - a router is a namespace `qrouter-<id>` with forwarding on, a veth leg
//!   per attached subnet (`qr-`) and one on the external network (`qg-`,
//!   which also carries the floating IPs), and `ip nubo_router` for SNAT
//!   and 1:1 NAT;
//! - DHCP answers on each bridge from the plan's static leases;
//! - with `--external-network CIDR` (one host, testbed or a lab), the host
//!   itself is the external network's gateway: a veth `nubo-ex` (with the
//!   CIDR's first address) / `nubo-exp` (the `external` physnet) and a
//!   masquerade out of the host's default route.
//!
//! Whatever carries nubo's names and the plan does not name is removed. A
//! network being created is rolled back (its bridge and segment device
//! deleted) when a step fails. [`ApplyReport::changes`] counts kernel
//! objects created, changed or removed; a second apply of the same plan
//! counts zero (DHCP scopes, which live in this process, are not counted).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, MutexGuard};

use netstack::dhcp::{DhcpServer, Lease, Scope, ServerConfig, DEFAULT_LEASE_SECS};
use netstack::link::{self, LinkKind, Netlink, RouteSpec, VxlanSpec, VXLAN_PORT};
use netstack::nft::{self, Family, FilterRule, PortFilter, RouterNat, Table, L4};
use netstack::{netns, Ipv4Net, Tap};

use super::plan::{
    bridge_name, router_leg_name, router_namespace, tap_name, Direction, NetworkPlan, PortKind,
    PortPlan, Remote, RouterLeg, RouterPlan, Segment,
};
use super::{ApplyReport, NetHost, NetHostError, NetPlan};

/// The physnet name of the host's own external network leg.
pub const EXTERNAL_PHYSNET: &str = "external";
/// The host end of the external leg (carries the gateway address).
pub const EXTERNAL_HOST_IF: &str = "nubo-ex";
/// The bridge end of the external leg (the `external` physnet's interface).
pub const EXTERNAL_BRIDGE_IF: &str = "nubo-exp";

/// What the agent needs to know about this host.
#[derive(Debug, Clone, Default)]
pub struct NetAgentConfig {
    /// physnet → interface (`--physical-interface-mappings`).
    pub physical_interface_mappings: BTreeMap<String, String>,
    /// This host's VTEP address (`--vxlan-local-ip`).
    pub vxlan_local_ip: Option<Ipv4Addr>,
    /// The other hosts' VTEPs (`--vxlan-peer`).
    pub vxlan_peers: Vec<Ipv4Addr>,
    /// The one-host external network (`--external-network`): the host's
    /// gateway address with the network's prefix length.
    pub external_gateway: Option<Ipv4Net>,
}

/// The real network agent of this host.
pub struct NetAgent {
    cfg: NetAgentConfig,
    dhcp: DhcpServer,
    /// Whether the kernel has conntrack in the bridge family (stateful port
    /// filters); probed once.
    bridge_ct: Result<(), String>,
    state: Mutex<AgentState>,
}

#[derive(Default)]
struct AgentState {
    /// MTU per network, from the last plan (for TAPs opened later).
    mtu: HashMap<String, u32>,
    /// The port filters of the last plan, by port id.
    filters: HashMap<String, Table>,
    /// DHCP scopes handed to the server, by bridge.
    scopes: HashMap<String, Vec<Scope>>,
}

fn failed(what: impl Into<String>) -> impl FnOnce(link::Error) -> NetHostError {
    let what = what.into();
    move |e| match e {
        link::Error::Unsupported(s) => NetHostError::Unsupported(s),
        e => NetHostError::Failed {
            what,
            reason: e.to_string(),
        },
    }
}

fn nft_failed(what: impl Into<String>) -> impl FnOnce(nft::NftError) -> NetHostError {
    let what = what.into();
    move |e| NetHostError::Failed {
        what,
        reason: e.to_string(),
    }
}

fn ns_failed(what: impl Into<String>) -> impl FnOnce(netns::NetnsError) -> NetHostError {
    let what = what.into();
    move |e| NetHostError::Failed {
        what,
        reason: e.to_string(),
    }
}

/// Adds `b` (whether a step changed something) to a change count.
fn count(changes: &mut usize, b: bool) {
    if b {
        *changes += 1;
    }
}

/// The segment device of a network: its name and the interface it hangs
/// off (VLAN), if any.
fn segment_device(seg: &Segment, cfg: &NetAgentConfig) -> Result<String, NetHostError> {
    match seg {
        Segment::Vxlan { vni } => Ok(format!("vxlan-{vni}")),
        Segment::Vlan { physnet, vid } => Ok(format!("{}.{vid}", physical_if(cfg, physnet)?)),
        Segment::Flat { physnet } => physical_if(cfg, physnet),
    }
}

fn physical_if(cfg: &NetAgentConfig, physnet: &str) -> Result<String, NetHostError> {
    cfg.physical_interface_mappings
        .get(physnet)
        .cloned()
        .ok_or_else(|| {
            NetHostError::Unsupported(format!(
                "physical network {physnet} is not mapped to an interface on this host \
                 (--physical-interface-mappings {physnet}:IFACE)"
            ))
        })
}

impl NetAgent {
    /// Starts the agent: the DHCP server's thread, and the probe of
    /// bridge-family conntrack. `--external-network` maps the `external`
    /// physnet to the host's leg.
    pub fn new(mut cfg: NetAgentConfig) -> Result<Self, NetHostError> {
        if cfg.external_gateway.is_some() {
            cfg.physical_interface_mappings
                .insert(EXTERNAL_PHYSNET.into(), EXTERNAL_BRIDGE_IF.into());
        }
        let dhcp = DhcpServer::start(ServerConfig {
            netns: None,
            promiscuous: false,
        })
        .map_err(|e| NetHostError::Failed {
            what: "starting the DHCP server".into(),
            reason: e.to_string(),
        })?;
        let bridge_ct = probe_bridge_conntrack();
        if let Err(e) = &bridge_ct {
            tracing::warn!("security groups cannot be enforced on this host: {e}");
        }
        if std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .is_ok_and(|v| v.trim() == "1")
        {
            tracing::warn!(
                "br_netfilter sends bridged frames through the ip family's hooks \
                 (net.bridge.bridge-nf-call-iptables=1): host NAT rules may see guest traffic"
            );
        }
        Ok(NetAgent {
            cfg,
            dhcp,
            bridge_ct,
            state: Mutex::new(AgentState::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn host(&self) -> Result<Netlink, NetHostError> {
        Netlink::host().map_err(failed("opening netlink"))
    }

    /// The host's external leg and its masquerade.
    fn ensure_external(&self, nl: &Netlink, changes: &mut usize) -> Result<(), NetHostError> {
        let Some(gw) = self.cfg.external_gateway else {
            return Ok(());
        };
        if nl
            .link(EXTERNAL_HOST_IF)
            .map_err(failed("reading the external leg"))?
            .is_none()
        {
            nl.create_veth(EXTERNAL_HOST_IF, EXTERNAL_BRIDGE_IF, None)
                .map_err(failed("creating the external leg"))?;
            *changes += 1;
        }
        let what = "configuring the external leg";
        count(
            changes,
            nl.ensure_addrs(EXTERNAL_HOST_IF, &[gw])
                .map_err(failed(what))?,
        );
        count(
            changes,
            nl.ensure_up(EXTERNAL_HOST_IF).map_err(failed(what))?,
        );
        count(
            changes,
            nl.ensure_up(EXTERNAL_BRIDGE_IF).map_err(failed(what))?,
        );
        if netns::sysctl_read(None, "net.ipv4.ip_forward")
            .map_err(ns_failed(what))?
            .trim()
            != "1"
        {
            netns::sysctl_write(None, "net.ipv4.ip_forward", "1").map_err(ns_failed(what))?;
            *changes += 1;
        }
        let table = nft::external_table(&nft::ExternalNat {
            bridge: EXTERNAL_HOST_IF.into(),
            cidr: Ipv4Net {
                addr: gw.network(),
                prefix_len: gw.prefix_len,
            },
        })
        .map_err(nft_failed("the external masquerade"))?;
        count(changes, apply_if_changed(None, &[table])?);
        Ok(())
    }

    /// A network's bridge and segment device; rolled back if it was new
    /// and a step fails.
    fn ensure_network(
        &self,
        nl: &Netlink,
        net: &NetworkPlan,
        changes: &mut usize,
    ) -> Result<(), NetHostError> {
        let bridge = bridge_name(&net.id);
        let new = nl
            .link(&bridge)
            .map_err(failed(format!("reading bridge {bridge}")))?
            .is_none();
        let mut made = 0;
        let r = self.build_network(nl, net, &bridge, &mut made);
        *changes += made;
        if r.is_err() && new {
            tracing::warn!(network = %net.id, "rolling back a half-built network");
            if let Ok(dev) = segment_device(&net.segment, &self.cfg) {
                if !matches!(net.segment, Segment::Flat { .. }) {
                    let _ = nl.delete_link(&dev);
                } else {
                    let _ = nl.set_master(&dev, None);
                }
            }
            let _ = nl.delete_link(&bridge);
        }
        r
    }

    fn build_network(
        &self,
        nl: &Netlink,
        net: &NetworkPlan,
        bridge: &str,
        changes: &mut usize,
    ) -> Result<(), NetHostError> {
        let what = format!("building bridge {bridge} of network {}", net.id);
        count(
            changes,
            nl.ensure_bridge(bridge, Some(net.mtu))
                .map_err(failed(&what))?,
        );
        count(
            changes,
            nl.ensure_mtu(bridge, net.mtu).map_err(failed(&what))?,
        );
        let dev = segment_device(&net.segment, &self.cfg)?;
        match &net.segment {
            Segment::Vxlan { vni } => {
                let local = self.cfg.vxlan_local_ip.ok_or_else(|| {
                    NetHostError::Unsupported(
                        "VXLAN networks need this host's underlay address (--vxlan-local-ip)"
                            .into(),
                    )
                })?;
                let spec = VxlanSpec {
                    name: dev.clone(),
                    vni: *vni,
                    local: Some(local),
                    port: VXLAN_PORT,
                    underlay: None,
                    mtu: Some(net.mtu),
                };
                count(changes, nl.ensure_vxlan(&spec).map_err(failed(&what))?);
                count(
                    changes,
                    nl.ensure_fdb(&dev, &self.cfg.vxlan_peers)
                        .map_err(failed(&what))?,
                );
            }
            Segment::Vlan { physnet, vid } => {
                let parent = physical_if(&self.cfg, physnet)?;
                count(changes, nl.ensure_up(&parent).map_err(failed(&what))?);
                count(
                    changes,
                    nl.ensure_vlan(&parent, *vid, &dev).map_err(failed(&what))?,
                );
            }
            Segment::Flat { .. } => {}
        }
        count(
            changes,
            nl.ensure_master(&dev, Some(bridge))
                .map_err(failed(&what))?,
        );
        count(changes, nl.ensure_up(&dev).map_err(failed(&what))?);
        count(changes, nl.ensure_up(bridge).map_err(failed(&what))?);
        Ok(())
    }

    /// A router: namespace, legs, routes, NAT.
    fn ensure_router(
        &self,
        nl: &Netlink,
        r: &RouterPlan,
        mtu: &HashMap<String, u32>,
        changes: &mut usize,
    ) -> Result<(), NetHostError> {
        let ns = router_namespace(&r.id);
        let what = format!("building router {}", r.id);
        count(changes, netns::create(&ns).map_err(ns_failed(&what))?);
        if netns::sysctl_read(Some(&ns), "net.ipv4.ip_forward")
            .map_err(ns_failed(&what))?
            .trim()
            != "1"
        {
            netns::sysctl_write(Some(&ns), "net.ipv4.ip_forward", "1").map_err(ns_failed(&what))?;
            *changes += 1;
        }
        let inner = Netlink::in_namespace(&ns).map_err(failed(&what))?;
        count(changes, inner.ensure_up("lo").map_err(failed(&what))?);
        let mut legs: Vec<(&RouterLeg, bool)> = r.interfaces.iter().map(|l| (l, false)).collect();
        if let Some(gw) = &r.gateway {
            legs.push((&gw.leg, true));
        }
        let mut wanted = BTreeSet::new();
        for (leg, gateway) in &legs {
            let host_end = tap_name(&leg.port_id);
            let ns_end = router_leg_name(&leg.port_id, *gateway);
            wanted.insert(ns_end.clone());
            let net_mtu = mtu.get(&leg.network_id).copied().unwrap_or(1500);
            count(
                changes,
                nl.ensure_veth(&host_end, &ns, &ns_end)
                    .map_err(failed(&what))?,
            );
            count(
                changes,
                nl.ensure_master(&host_end, Some(&bridge_name(&leg.network_id)))
                    .map_err(failed(&what))?,
            );
            count(
                changes,
                nl.ensure_mtu(&host_end, net_mtu).map_err(failed(&what))?,
            );
            count(changes, nl.ensure_up(&host_end).map_err(failed(&what))?);
            let mut addrs: Vec<Ipv4Net> = leg.addrs.clone();
            if *gateway {
                addrs.extend(r.floating_ips.iter().map(|f| Ipv4Net::host(f.floating_ip)));
            }
            count(
                changes,
                inner.ensure_mac(&ns_end, leg.mac).map_err(failed(&what))?,
            );
            count(
                changes,
                inner.ensure_mtu(&ns_end, net_mtu).map_err(failed(&what))?,
            );
            count(
                changes,
                inner.ensure_addrs(&ns_end, &addrs).map_err(failed(&what))?,
            );
            count(
                changes,
                inner
                    .ensure_admin_state(&ns_end, r.admin_state_up)
                    .map_err(failed(&what))?,
            );
        }
        // Legs of removed interfaces (their host ends go with them).
        for l in inner.links().map_err(failed(&what))? {
            if (l.name.starts_with("qr-") || l.name.starts_with("qg-")) && !wanted.contains(&l.name)
            {
                count(changes, inner.delete_link(&l.name).map_err(failed(&what))?);
            }
        }
        let mut routes: Vec<RouteSpec> = r
            .routes
            .iter()
            .map(|(dst, via)| RouteSpec::via(*dst, *via))
            .collect();
        if let Some(gw) = r.gateway.as_ref().and_then(|g| g.default_route) {
            routes.push(RouteSpec::default_via(gw));
        }
        count(
            changes,
            inner.ensure_routes(&routes).map_err(failed(&what))?,
        );
        let ns_opt = Some(ns.as_str());
        match &r.gateway {
            Some(gw) => {
                let gateway_ip =
                    gw.leg
                        .addrs
                        .first()
                        .map(|a| a.addr)
                        .ok_or_else(|| NetHostError::Failed {
                            what: what.clone(),
                            reason: "the gateway leg has no address".into(),
                        })?;
                let table = nft::router_table(&RouterNat {
                    gateway_if: router_leg_name(&gw.leg.port_id, true),
                    gateway_ip,
                    enable_snat: gw.enable_snat,
                    snat_sources: gw.snat_sources.clone(),
                    floating_ips: r
                        .floating_ips
                        .iter()
                        .map(|f| nft::FloatingNat {
                            id: f.id.clone(),
                            floating_ip: f.floating_ip,
                            fixed_ip: f.fixed_ip,
                        })
                        .collect(),
                })
                .map_err(nft_failed(&what))?;
                count(changes, apply_if_changed(ns_opt, &[table])?);
            }
            None => {
                let had = nft::list_tables(ns_opt)
                    .map_err(nft_failed(&what))?
                    .iter()
                    .any(|t| t.name == nft::ROUTER_TABLE);
                if had {
                    nft::delete_table(ns_opt, Family::Ip, nft::ROUTER_TABLE)
                        .map_err(nft_failed(&what))?;
                    *changes += 1;
                }
            }
        }
        Ok(())
    }

    /// Removes what carries nubo's names and the plan does not name.
    fn remove_stale(
        &self,
        nl: &Netlink,
        plan: &NetPlan,
        changes: &mut usize,
    ) -> Result<(), NetHostError> {
        let what = "removing what the plan no longer names";
        let bridges: BTreeSet<String> = plan.networks.iter().map(|n| bridge_name(&n.id)).collect();
        let mut segment_devs = BTreeSet::new();
        for n in &plan.networks {
            if let Ok(d) = segment_device(&n.segment, &self.cfg) {
                segment_devs.insert(d);
            }
        }
        let mut taps: BTreeSet<String> = plan
            .ports
            .iter()
            .filter(|p| p.kind == PortKind::Vm)
            .map(|p| tap_name(&p.id))
            .collect();
        for r in &plan.routers {
            taps.extend(r.interfaces.iter().map(|l| tap_name(&l.port_id)));
            taps.extend(r.gateway.iter().map(|g| tap_name(&g.leg.port_id)));
        }
        let mapped: BTreeSet<&String> = self.cfg.physical_interface_mappings.values().collect();
        let links = nl.links().map_err(failed(what))?;
        let index_name: HashMap<u32, String> =
            links.iter().map(|l| (l.index, l.name.clone())).collect();
        for l in &links {
            let stale = match &l.kind {
                LinkKind::Bridge => l.name.starts_with("brq") && !bridges.contains(&l.name),
                LinkKind::Vxlan => l.name.starts_with("vxlan-") && !segment_devs.contains(&l.name),
                LinkKind::Vlan => {
                    let parent = l
                        .vlan
                        .as_ref()
                        .and_then(|v| v.parent)
                        .and_then(|i| index_name.get(&i));
                    parent.is_some_and(|p| mapped.contains(p)) && !segment_devs.contains(&l.name)
                }
                LinkKind::Tun | LinkKind::Veth => {
                    l.name.starts_with("tap") && !taps.contains(&l.name)
                }
                _ => false,
            };
            if stale {
                tracing::info!(link = %l.name, "removing a stale link");
                count(changes, nl.delete_link(&l.name).map_err(failed(what))?);
            }
        }
        // A flat network's interface leaves a removed bridge by itself (the
        // bridge is gone); nothing to do.
        let routers: BTreeSet<String> = plan
            .routers
            .iter()
            .map(|r| router_namespace(&r.id))
            .collect();
        for ns in netns::list().map_err(ns_failed(what))? {
            if ns.starts_with("qrouter-") && !routers.contains(&ns) {
                tracing::info!(namespace = %ns, "removing a stale router");
                count(changes, netns::delete(&ns).map_err(ns_failed(what))?);
            }
        }
        Ok(())
    }

    /// The filter of a port, `None` when port security is off.
    fn port_filter(port: &PortPlan) -> Result<Option<Table>, NetHostError> {
        if !port.port_security || port.kind != PortKind::Vm {
            return Ok(None);
        }
        let what = format!("the filter of port {}", port.id);
        let mut rules = Vec::with_capacity(port.rules.len());
        for r in &port.rules {
            let l4 = match L4::from_neutron(r.protocol, r.port_range) {
                Ok(l4) => l4,
                Err(e) => {
                    // Rules only allow: skipping one never opens anything.
                    tracing::warn!(rule = %r.id, "skipping a rule nftables cannot express: {e}");
                    continue;
                }
            };
            rules.push(FilterRule {
                id: r.id.clone(),
                direction: match r.direction {
                    Direction::Ingress => nft::Direction::Ingress,
                    Direction::Egress => nft::Direction::Egress,
                },
                l4,
                remote: match &r.remote {
                    Remote::Any => nft::Remote::Any,
                    Remote::Prefix(p) => nft::Remote::Prefix(*p),
                    Remote::Group { group_id, members } => nft::Remote::Group {
                        group_id: group_id.clone(),
                        members: members.clone(),
                    },
                },
            });
        }
        let filter = PortFilter {
            tap: tap_name(&port.id),
            mac: port.mac,
            ips: port.ips.clone(),
            allowed_pairs: port.allowed_address_pairs.clone(),
            rules,
        };
        nft::port_table(&filter).map(Some).map_err(nft_failed(what))
    }

    /// Port filters: the planned ones applied where they differ (one
    /// transaction), the others removed.
    fn ensure_filters(&self, plan: &NetPlan, changes: &mut usize) -> Result<(), NetHostError> {
        let mut wanted = HashMap::new();
        for p in &plan.ports {
            if let Some(t) = Self::port_filter(p)? {
                wanted.insert(p.id.clone(), t);
            }
        }
        if !wanted.is_empty() {
            if let Err(e) = &self.bridge_ct {
                return Err(NetHostError::Unsupported(e.clone()));
            }
        }
        let tables: Vec<Table> = wanted.values().cloned().collect();
        count(changes, apply_if_changed(None, &tables)?);
        let names: BTreeSet<&str> = tables.iter().map(|t| t.name()).collect();
        for t in nft::list_tables(None).map_err(nft_failed("listing port filters"))? {
            if t.family == Family::Bridge
                && t.name.starts_with("nubo_p_")
                && !names.contains(t.name.as_str())
            {
                nft::delete_table(None, Family::Bridge, &t.name)
                    .map_err(nft_failed("removing a port filter"))?;
                *changes += 1;
            }
        }
        self.state().filters = wanted;
        Ok(())
    }

    /// DHCP scopes per bridge (not counted as changes: they live here).
    fn ensure_dhcp(&self, plan: &NetPlan) -> Result<(), NetHostError> {
        let mut wanted: HashMap<String, Vec<Scope>> = HashMap::new();
        for n in &plan.networks {
            if n.dhcp.is_empty() {
                continue;
            }
            let scopes = n
                .dhcp
                .iter()
                .map(|d| Scope {
                    cidr: d.cidr,
                    server_ip: d.server_ip,
                    server_mac: d.server_mac,
                    gateway: d.gateway,
                    dns: d.dns_nameservers.clone(),
                    domain: None,
                    host_routes: d.host_routes.clone(),
                    mtu: u16::try_from(n.mtu).ok(),
                    lease_secs: DEFAULT_LEASE_SECS,
                    leases: d
                        .leases
                        .iter()
                        .map(|l| Lease {
                            mac: l.mac,
                            ip: l.ip,
                            hostname: l.hostname.clone(),
                        })
                        .collect(),
                })
                .collect();
            wanted.insert(bridge_name(&n.id), scopes);
        }
        let mut st = self.state();
        for (bridge, scopes) in &wanted {
            if st.scopes.get(bridge) != Some(scopes) {
                self.dhcp
                    .set_scopes(bridge, scopes.clone())
                    .map_err(|e| NetHostError::Failed {
                        what: format!("DHCP on {bridge}"),
                        reason: e.to_string(),
                    })?;
            }
        }
        for bridge in self.dhcp.bridges() {
            if !wanted.contains_key(&bridge) {
                self.dhcp.remove(&bridge);
            }
        }
        st.scopes = wanted;
        Ok(())
    }
}

/// Applies those of `tables` whose content differs from what the kernel
/// has (one transaction); whether anything was applied.
fn apply_if_changed(ns: Option<&str>, tables: &[Table]) -> Result<bool, NetHostError> {
    if tables.is_empty() {
        return Ok(false);
    }
    let have: HashMap<(Family, String), Option<String>> = nft::list_tables(ns)
        .map_err(nft_failed("listing nftables tables"))?
        .into_iter()
        .map(|t| ((t.family, t.name), t.hash))
        .collect();
    let stale: Vec<Table> = tables
        .iter()
        .filter(|t| have.get(&(t.family(), t.name().to_string())) != Some(&Some(t.hash())))
        .cloned()
        .collect();
    if stale.is_empty() {
        return Ok(false);
    }
    nft::apply_tables(ns, &stale).map_err(nft_failed("applying nftables tables"))?;
    Ok(true)
}

/// Whether the kernel takes `ct state` in the bridge family (needed by the
/// stateful port filters), checked in a throwaway namespace.
fn probe_bridge_conntrack() -> Result<(), String> {
    let ns = netns::TempNetns::new("nubo-probe").map_err(|e| e.to_string())?;
    let table = Table::new(
        Family::Bridge,
        "nubo_probe",
        "\n\tchain f {\n\t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tct state established accept\n\t}\n"
            .into(),
    )
    .map_err(|e| e.to_string())?;
    nft::check_tables(Some(ns.name()), &[table]).map_err(|e| {
        format!(
            "stateful security groups need conntrack on bridges (kernel module \
             nf_conntrack_bridge) and the nft tool: {e}"
        )
    })
}

impl NetHost for NetAgent {
    fn check_segment(&self, segment: &Segment) -> Result<(), NetHostError> {
        link::probe_bridge().map_err(failed("probing bridges"))?;
        self.bridge_ct.clone().map_err(NetHostError::Unsupported)?;
        let nl = self.host()?;
        match segment {
            Segment::Vxlan { .. } => {
                if self.cfg.vxlan_local_ip.is_none() {
                    return Err(NetHostError::Unsupported(
                        "VXLAN networks need this host's underlay address (--vxlan-local-ip)"
                            .into(),
                    ));
                }
                link::probe_vxlan().map_err(failed("probing VXLAN"))?;
            }
            Segment::Vlan { physnet, .. } | Segment::Flat { physnet } => {
                let iface = physical_if(&self.cfg, physnet)?;
                if nl
                    .link(&iface)
                    .map_err(failed(format!("reading {iface}")))?
                    .is_none()
                {
                    return Err(NetHostError::Unsupported(format!(
                        "interface {iface} of physical network {physnet} does not exist on this host"
                    )));
                }
                if matches!(segment, Segment::Vlan { .. }) {
                    link::probe_vlan().map_err(failed("probing 802.1Q VLAN"))?;
                }
            }
        }
        Ok(())
    }

    fn apply(&self, plan: &NetPlan) -> Result<ApplyReport, NetHostError> {
        let nl = self.host()?;
        let mut changes = 0;
        self.ensure_external(&nl, &mut changes)?;
        let mut mtu = HashMap::new();
        for net in &plan.networks {
            self.ensure_network(&nl, net, &mut changes)?;
            mtu.insert(net.id.clone(), net.mtu);
        }
        for p in plan.ports.iter().filter(|p| p.kind == PortKind::Vm) {
            let tap = tap_name(&p.id);
            if nl
                .link(&tap)
                .map_err(failed(format!("reading {tap}")))?
                .is_none()
            {
                continue; // its server is not running: plugged when it starts
            }
            let what = format!("plugging {tap}");
            let bridge = bridge_name(&p.network_id);
            count(
                &mut changes,
                nl.ensure_master(&tap, Some(&bridge))
                    .map_err(failed(&what))?,
            );
            if let Some(m) = mtu.get(&p.network_id) {
                count(
                    &mut changes,
                    nl.ensure_mtu(&tap, *m).map_err(failed(&what))?,
                );
            }
            count(
                &mut changes,
                nl.ensure_admin_state(&tap, p.admin_state_up)
                    .map_err(failed(&what))?,
            );
        }
        self.ensure_filters(plan, &mut changes)?;
        for r in &plan.routers {
            self.ensure_router(&nl, r, &mtu, &mut changes)?;
        }
        self.remove_stale(&nl, plan, &mut changes)?;
        self.state().mtu = mtu;
        self.ensure_dhcp(plan)?;
        Ok(ApplyReport { changes })
    }

    fn open_tap(&self, port: &PortPlan) -> Result<OwnedFd, NetHostError> {
        let name = tap_name(&port.id);
        let what = format!("opening {name}");
        if let Some(t) = Self::port_filter(port)? {
            if let Err(e) = &self.bridge_ct {
                return Err(NetHostError::Unsupported(e.clone()));
            }
            apply_if_changed(None, &[t])?;
        }
        let tap = Tap::open(&name).map_err(|e| NetHostError::Failed {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        let nl = self.host()?;
        let bridge = bridge_name(&port.network_id);
        nl.ensure_master(&name, Some(&bridge))
            .map_err(failed(&what))?;
        if let Some(m) = self.state().mtu.get(&port.network_id).copied() {
            nl.ensure_mtu(&name, m).map_err(failed(&what))?;
        }
        nl.ensure_admin_state(&name, port.admin_state_up)
            .map_err(failed(&what))?;
        Ok(tap.into_fd())
    }
}
