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
                Some(Ipv4Net {
                    addr: f.ip_address.parse().ok()?,
                    prefix_len: subnet_cidr(s).prefix_len,
                })
            })
            .collect(),
    }
}

/// Adds network `id` to `plan` if it is not there (without DHCP): the
/// one-host external network, whose bridge carries the host's own leg even
/// before any router or floating IP uses it.
pub fn add_network(conn: &Connection, plan: &mut NetPlan, id: &str) -> rusqlite::Result<()> {
    if plan.networks.iter().any(|n| n.id == id) {
        return Ok(());
    }
    if let Some(net) = store::get_network(conn, id)? {
        plan.networks.push(NetworkPlan {
            id: net.std.id.clone(),
            segment: segment_of(&net),
            mtu: u32::try_from(net.mtu).unwrap_or(1500),
            dhcp: Vec::new(),
        });
        plan.networks.sort_by(|a, b| a.id.cmp(&b.id));
    }
    Ok(())
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
                let mut snat_sources: Vec<Ipv4Net> = interfaces
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn exec(conn: &Connection, sql: &str) {
        conn.execute_batch(sql).unwrap();
    }

    /// A network with a DHCP subnet, a DHCP port, two VM ports (one bound
    /// here, one elsewhere), a router with an interface and a gateway on an
    /// external network, and a floating IP.
    fn seeded() -> Db {
        let db = Db::open_in_memory().unwrap();
        let conn = db.lock();
        exec(
            &conn,
            "INSERT INTO networks (id, project_id, mtu, network_type, segmentation_id, created_at, updated_at) \
               VALUES ('n1', 'p', 1450, 'vxlan', 1000, 't', 't'), \
                      ('ext', 'admin', 1500, 'flat', NULL, 't', 't');
             UPDATE networks SET physnet = 'physnet1', external = 1 WHERE id = 'ext';
             INSERT INTO subnets (id, project_id, network_id, cidr, gateway_ip, enable_dhcp, \
               allocation_pools, dns_nameservers, created_at, updated_at) VALUES \
               ('s1', 'p', 'n1', '10.0.0.0/24', '10.0.0.1', 1, '[]', '[\"8.8.8.8\"]', 't', 't'), \
               ('se', 'admin', 'ext', '172.24.4.0/24', '172.24.4.1', 0, '[]', '[]', 't', 't');
             INSERT INTO ports (id, project_id, network_id, mac_address, device_id, device_owner, \
               host_id, created_at, updated_at) VALUES \
               ('pd', 'p', 'n1', 'fa:16:3e:00:00:02', 'dhcph-n1', 'network:dhcp', 'h', 't', 't'), \
               ('pb', 'p', 'n1', 'fa:16:3e:00:00:04', 'vm2', 'compute:nova', 'h', 't', 't'), \
               ('pa', 'p', 'n1', 'fa:16:3e:00:00:03', 'vm1', 'compute:nova', 'other', 't', 't'), \
               ('pr', 'p', 'n1', 'fa:16:3e:00:00:01', 'r1', 'network:router_interface', 'h', 't', 't'), \
               ('pg', 'p', 'ext', 'fa:16:3e:00:00:05', 'r1', 'network:router_gateway', 'h', 't', 't'), \
               ('pf', '', 'ext', 'fa:16:3e:00:00:06', 'f1', 'network:floatingip', '', 't', 't');
             INSERT INTO port_fixed_ips (port_id, subnet_id, ip_address) VALUES \
               ('pd', 's1', '10.0.0.2'), ('pa', 's1', '10.0.0.3'), ('pb', 's1', '10.0.0.4'), \
               ('pr', 's1', '10.0.0.1'), ('pg', 'se', '172.24.4.2'), ('pf', 'se', '172.24.4.3');
             INSERT INTO routers (id, project_id, gw_network_id, gw_port_id, created_at, updated_at) \
               VALUES ('r1', 'p', 'ext', 'pg', 't', 't');
             INSERT INTO router_routes (router_id, destination, nexthop) \
               VALUES ('r1', '192.168.0.0/16', '10.0.0.254');
             INSERT INTO floating_ips (id, project_id, floating_network_id, floating_ip_address, \
               floating_port_id, port_id, fixed_ip_address, router_id, created_at, updated_at) \
               VALUES ('f1', 'p', 'ext', '172.24.4.3', 'pf', 'pb', '10.0.0.4', 'r1', 't', 't');",
        );
        drop(conn);
        db
    }

    #[test]
    fn the_plan_of_a_host_has_its_ports_networks_dhcp_and_routers() {
        let db = seeded();
        let plan = host_plan(&db.lock(), "h").unwrap();
        let ids: Vec<&str> = plan.ports.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["pb", "pd", "pg", "pr"], "bound here, sorted by id");
        assert_eq!(plan.ports[0].kind, PortKind::Vm);
        assert_eq!(plan.ports[1].kind, PortKind::None);
        assert_eq!(plan.ports[2].kind, PortKind::Router);
        let nets: Vec<&str> = plan.networks.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(nets, ["ext", "n1"]);
        let n1 = &plan.networks[1];
        assert_eq!(n1.segment, Segment::Vxlan { vni: 1000 });
        assert_eq!(n1.mtu, 1450);
        assert_eq!(
            plan.networks[0].segment,
            Segment::Flat {
                physnet: "physnet1".into()
            }
        );
        assert!(
            plan.networks[0].dhcp.is_empty(),
            "no DHCP on the external subnet"
        );
        let dhcp = &n1.dhcp[0];
        assert_eq!(dhcp.server_ip.to_string(), "10.0.0.2");
        assert_eq!(dhcp.server_mac, [0xfa, 0x16, 0x3e, 0, 0, 2]);
        assert_eq!(
            dhcp.gateway.map(|g| g.to_string()).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(dhcp.dns_nameservers.len(), 1);
        // Every port with an address on the subnet has a lease, on any host.
        let leases: Vec<String> = dhcp.leases.iter().map(|l| l.ip.to_string()).collect();
        assert_eq!(leases, ["10.0.0.1", "10.0.0.3", "10.0.0.4"]);
        assert_eq!(dhcp.leases[1].hostname, "host-10-0-0-3");
        let r = &plan.routers[0];
        assert_eq!(r.interfaces.len(), 1);
        assert_eq!(r.interfaces[0].addrs[0].to_string(), "10.0.0.1/24");
        let gw = r.gateway.as_ref().unwrap();
        assert_eq!(gw.leg.addrs[0].to_string(), "172.24.4.2/24");
        assert_eq!(
            gw.default_route.map(|g| g.to_string()).as_deref(),
            Some("172.24.4.1")
        );
        assert!(gw.enable_snat);
        assert_eq!(gw.snat_sources[0].to_string(), "10.0.0.0/24");
        assert_eq!(r.floating_ips.len(), 1);
        assert_eq!(r.floating_ips[0].fixed_ip.to_string(), "10.0.0.4");
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn equal_databases_give_equal_plans_and_other_hosts_get_theirs() {
        let db = seeded();
        let a = host_plan(&db.lock(), "h").unwrap();
        let b = host_plan(&db.lock(), "h").unwrap();
        assert_eq!(a, b);
        let other = host_plan(&db.lock(), "other").unwrap();
        assert_eq!(other.ports.len(), 1);
        assert_eq!(other.networks.len(), 1);
        assert!(other.routers.is_empty());
        assert_eq!(
            host_plan(&db.lock(), "nowhere").unwrap(),
            NetPlan::default()
        );
    }
}
