//! What one host should look like ([`NetPlan`]), computed from the
//! database: the ports bound to it with their resolved rules, the networks
//! they need, DHCP scopes, and routers with their legs, gateway, SNAT and
//! floating IPs. Everything sorted by id, so equal databases give equal
//! plans.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use rusqlite::Connection;

use super::model::*;
use super::service::{mac_bytes, segment_of, subnet_cidr};
use super::{ipam, store};
use crate::host::net::plan::*;
use crate::network::security_groups::service::resolve_rules;

fn kind_of(owner: &str) -> PortKind {
    if owner.starts_with("compute:") {
        PortKind::Vm
    } else if owner == OWNER_ROUTER_INTERFACE || owner == OWNER_ROUTER_GATEWAY {
        PortKind::Router
    } else {
        PortKind::None
    }
}

fn ips_of(p: &Port) -> Vec<Ipv4Addr> {
    p.fixed_ips
        .iter()
        .filter_map(|f| f.ip_address.parse().ok())
        .collect()
}

fn group_members(conn: &Connection, group_id: &str) -> Vec<Ipv4Addr> {
    store::group_member_addresses(conn, group_id)
        .unwrap_or_default()
        .iter()
        .filter_map(|a| ipam::parse_cidr(a, false).ok())
        .map(|c| c.addr)
        .collect()
}

/// A port as the host sees it, rules resolved.
pub fn port_plan(conn: &Connection, p: &Port) -> rusqlite::Result<PortPlan> {
    let rules = if p.port_security && !p.security_groups.is_empty() {
        let mut r = resolve_rules(conn, &p.security_groups, &|g| group_members(conn, g))?;
        r.sort_by(|a, b| a.id.cmp(&b.id));
        r
    } else {
        Vec::new()
    };
    Ok(PortPlan {
        id: p.std.id.clone(),
        network_id: p.network_id.clone(),
        kind: kind_of(&p.device_owner),
        admin_state_up: p.admin_state_up,
        mac: mac_bytes(&p.mac_address),
        ips: ips_of(p),
        port_security: p.port_security,
        allowed_address_pairs: p
            .allowed_address_pairs
            .iter()
            .filter_map(|a| {
                let c = ipam::parse_cidr(&a.ip_address, false).ok()?;
                Some((c, super::service::parse_mac(&a.mac_address)))
            })
            .collect(),
        rules,
    })
}

fn leg(p: &Port, subnets: &BTreeMap<String, Subnet>) -> RouterLeg {
    RouterLeg {
        port_id: p.std.id.clone(),
        network_id: p.network_id.clone(),
        mac: mac_bytes(&p.mac_address),
        addrs: p
            .fixed_ips
            .iter()
            .filter_map(|f| {
                let s = subnets.get(&f.subnet_id)?;
                Some(Ipv4Cidr {
                    addr: f.ip_address.parse().ok()?,
                    prefix_len: subnet_cidr(s).prefix_len,
                })
            })
            .collect(),
    }
}

/// The plan of `host`: every port bound to it, every network with such a
/// port, DHCP for its networks' DHCP-enabled subnets, and its routers.
pub fn host_plan(conn: &Connection, host: &str) -> rusqlite::Result<NetPlan> {
    let mut ports = store::ports_on_host(conn, host)?;
    ports.sort_by(|a, b| a.std.id.cmp(&b.std.id));
    let subnets: BTreeMap<String, Subnet> = store::list_subnets(conn)?
        .into_iter()
        .map(|s| (s.std.id.clone(), s))
        .collect();
    let network_ids: BTreeSet<String> = ports.iter().map(|p| p.network_id.clone()).collect();

    let mut networks = Vec::new();
    for nid in &network_ids {
        let Some(net) = store::get_network(conn, nid)? else {
            continue;
        };
        let all_ports = store::ports_of_network(conn, nid)?;
        let dhcp_port = all_ports.iter().find(|p| p.device_owner == OWNER_DHCP);
        let mut dhcp = Vec::new();
        for s in subnets
            .values()
            .filter(|s| &s.network_id == nid && s.enable_dhcp)
        {
            let Some(server) = dhcp_port.and_then(|d| {
                d.fixed_ips
                    .iter()
                    .find(|f| f.subnet_id == s.std.id)
                    .and_then(|f| f.ip_address.parse::<Ipv4Addr>().ok())
                    .map(|ip| (ip, mac_bytes(&d.mac_address)))
            }) else {
                continue;
            };
            let mut leases: Vec<DhcpLease> = all_ports
                .iter()
                .filter(|p| p.device_owner != OWNER_DHCP)
                .flat_map(|p| {
                    p.fixed_ips
                        .iter()
                        .filter(|f| f.subnet_id == s.std.id)
                        .filter_map(|f| {
                            let ip: Ipv4Addr = f.ip_address.parse().ok()?;
                            Some(DhcpLease {
                                mac: mac_bytes(&p.mac_address),
                                ip,
                                hostname: if p.dns_name.is_empty() {
                                    format!("host-{}", f.ip_address.replace('.', "-"))
                                } else {
                                    p.dns_name.clone()
                                },
                            })
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            leases.sort_by_key(|l| (l.ip, l.mac));
            dhcp.push(DhcpSubnet {
                subnet_id: s.std.id.clone(),
                cidr: subnet_cidr(s),
                server_ip: server.0,
                server_mac: server.1,
                gateway: s.gateway_ip.as_deref().and_then(|g| g.parse().ok()),
                dns_nameservers: s
                    .dns_nameservers
                    .iter()
                    .filter_map(|d| d.parse().ok())
                    .collect(),
                host_routes: s
                    .host_routes
                    .iter()
                    .filter_map(|r| {
                        Some((
                            ipam::parse_cidr(&r.destination, false).ok()?,
                            r.nexthop.parse().ok()?,
                        ))
                    })
                    .collect(),
                leases,
            });
        }
        networks.push(NetworkPlan {
            id: net.std.id.clone(),
            segment: segment_of(&net),
            mtu: u32::try_from(net.mtu).unwrap_or(1500),
            dhcp,
        });
    }

    let mut port_plans = Vec::new();
    for p in &ports {
        port_plans.push(port_plan(conn, p)?);
    }

    // Routers with a leg on this host.
    let router_ids: BTreeSet<String> = ports
        .iter()
        .filter(|p| kind_of(&p.device_owner) == PortKind::Router)
        .map(|p| p.device_id.clone())
        .collect();
    let fips = store::list_fips(conn)?;
    let mut routers = Vec::new();
    for rid in &router_ids {
        let Some(r) = store::get_router(conn, rid)? else {
            continue;
        };
        let mut interfaces: Vec<RouterLeg> = ports
            .iter()
            .filter(|p| p.device_id == *rid && p.device_owner == OWNER_ROUTER_INTERFACE)
            .map(|p| leg(p, &subnets))
            .collect();
        interfaces.sort_by(|a, b| a.port_id.cmp(&b.port_id));
        let gateway = match r.gw_port_id.as_deref() {
            Some(gid) => ports.iter().find(|p| p.std.id == gid).map(|gp| {
                let default_route = gp
                    .fixed_ips
                    .iter()
                    .filter_map(|f| subnets.get(&f.subnet_id))
                    .find_map(|s| s.gateway_ip.as_deref().and_then(|g| g.parse().ok()));
                let mut snat_sources: Vec<Ipv4Cidr> = interfaces
                    .iter()
                    .flat_map(|l| {
                        l.addrs.iter().map(|a| {
                            ipam::parse_cidr(&format!("{}/{}", a.addr, a.prefix_len), false)
                                .unwrap_or(*a)
                        })
                    })
                    .collect();
                snat_sources.sort_by_key(|c| (c.addr, c.prefix_len));
                snat_sources.dedup();
                RouterGateway {
                    leg: leg(gp, &subnets),
                    default_route,
                    enable_snat: r.enable_snat,
                    snat_sources,
                }
            }),
            None => None,
        };
        let mut floating_ips: Vec<FloatingIpPlan> = if gateway.is_some() {
            fips.iter()
                .filter(|f| f.router_id.as_deref() == Some(rid.as_str()))
                .filter_map(|f| {
                    Some(FloatingIpPlan {
                        id: f.std.id.clone(),
                        floating_ip: f.floating_ip_address.parse().ok()?,
                        fixed_ip: f.fixed_ip_address.as_deref()?.parse().ok()?,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        floating_ips.sort_by(|a, b| a.id.cmp(&b.id));
        routers.push(RouterPlan {
            id: r.std.id.clone(),
            admin_state_up: r.admin_state_up,
            interfaces,
            gateway,
            floating_ips,
            routes: r
                .routes
                .iter()
                .filter_map(|rt| {
                    Some((
                        ipam::parse_cidr(&rt.destination, false).ok()?,
                        rt.nexthop.parse().ok()?,
                    ))
                })
                .collect(),
        });
    }
    Ok(NetPlan {
        networks,
        ports: port_plans,
        routers,
    })
}
