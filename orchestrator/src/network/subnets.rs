//! Subnets (IPv4): CIDR, gateway, pools, DNS, host routes, and the
//! network's DHCP port.

use std::net::Ipv4Addr;

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::ipam;
use super::model::*;
use super::service::*;
use super::store;
use crate::host::net::plan::Ipv4Net;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
/// Subnet `id` if the caller may see it (its own, on a shared or external
/// network, any for an admin), else 404.
pub fn visible_subnet(conn: &Connection, auth: &AuthContext, id: &str) -> ApiResult<Subnet> {
    if let Some(s) = store::get_subnet(conn, id)? {
        if subnet_visible(conn, auth, &s)? {
            return Ok(s);
        }
    }
    Err(ApiError::not_found(format!(
        "Subnet {id} could not be found."
    )))
}

fn subnet_visible(conn: &Connection, auth: &AuthContext, s: &Subnet) -> ApiResult<bool> {
    if auth.is_admin() || s.std.project_id == auth.project_id {
        return Ok(true);
    }
    Ok(store::get_network(conn, &s.network_id)?.is_some_and(|n| network_visible(auth, &n)))
}

/// Every subnet the caller sees.
pub fn list_subnets(conn: &Connection, auth: &AuthContext) -> ApiResult<Vec<Subnet>> {
    let mut out = Vec::new();
    for s in store::list_subnets(conn)? {
        if subnet_visible(conn, auth, &s)? {
            out.push(s);
        }
    }
    Ok(out)
}

const SUBNET_FIELDS: &[&str] = &[
    "name",
    "description",
    "network_id",
    "ip_version",
    "cidr",
    "gateway_ip",
    "allocation_pools",
    "enable_dhcp",
    "dns_nameservers",
    "host_routes",
    "project_id",
    "tenant_id",
    "subnetpool_id",
    "ipv6_address_mode",
    "ipv6_ra_mode",
    "service_types",
    "segment_id",
    "use_default_subnetpool",
    "prefixlen",
    "dns_publish_fixed_ip",
];

/// The fields a subnet body may have.
pub fn subnet_fields() -> &'static [&'static str] {
    SUBNET_FIELDS
}

fn parse_dns(m: &Map<String, Value>) -> ApiResult<Option<Vec<String>>> {
    match m.get("dns_nameservers") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| get_ip("dns_nameservers", v).map(|ip| ip.to_string()))
            .collect::<ApiResult<Vec<_>>>()
            .map(Some),
        Some(v) => Err(invalid("dns_nameservers", format!("'{v}' is not a list"))),
    }
}

fn parse_routes(m: &Map<String, Value>, key: &str) -> ApiResult<Option<Vec<RouteJson>>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for r in a {
                let dest = r
                    .get("destination")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(key, "each route needs a destination"))?;
                let dest = ipam::parse_cidr(dest, true).map_err(|e| invalid(key, e))?;
                let hop = get_ip(key, r.get("nexthop").unwrap_or(&Value::Null))?;
                out.push(RouteJson {
                    destination: dest.to_string(),
                    nexthop: hop.to_string(),
                });
            }
            Ok(Some(out))
        }
        Some(v) => Err(invalid(key, format!("'{v}' is not a list"))),
    }
}

fn parse_pools(m: &Map<String, Value>) -> ApiResult<Option<Vec<ipam::Pool>>> {
    match m.get("allocation_pools") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| {
                Ok((
                    get_ip("allocation_pools", p.get("start").unwrap_or(&Value::Null))?,
                    get_ip("allocation_pools", p.get("end").unwrap_or(&Value::Null))?,
                ))
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(Some),
        Some(v) => Err(invalid("allocation_pools", format!("'{v}' is not a list"))),
    }
}

/// Parses a subnet's stored CIDR.
pub fn subnet_cidr(s: &Subnet) -> Ipv4Net {
    ipam::parse_cidr(&s.cidr, false).unwrap_or(Ipv4Net {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 32,
    })
}

pub(crate) fn pools_of(s: &Subnet) -> Vec<ipam::Pool> {
    s.allocation_pools
        .iter()
        .filter_map(|p| Some((p.start.parse().ok()?, p.end.parse().ok()?)))
        .collect()
}

/// Creates a subnet (and the network's DHCP port if `enable_dhcp`), in one
/// transaction.
pub fn create_subnet(conn: &Connection, cx: &Cx<'_>, m: &Map<String, Value>) -> ApiResult<Subnet> {
    let project = owner_project(cx, m)?;
    let net_id = get_str(m, "network_id")?
        .ok_or_else(|| ApiError::bad_request("Invalid input: network_id is required"))?;
    let net = visible_network(conn, cx.auth, &net_id)?;
    require_write(cx, &net.std.project_id, "create_subnet")?;
    match get_int(m, "ip_version")? {
        None | Some(4) => {}
        Some(6) => {
            return Err(ApiError::bad_request(
                "Invalid input for ip_version. Reason: IPv6 subnets are not supported by this cloud (IPv4 only).",
            ))
        }
        Some(v) => {
            return Err(invalid(
                "ip_version",
                format!("'{v}' is not in [4, 6]"),
            ))
        }
    }
    if m.get("subnetpool_id").is_some_and(|v| !v.is_null())
        || m.get("use_default_subnetpool") == Some(&Value::Bool(true))
    {
        return Err(ApiError::bad_request(
            "Bad subnet request: subnet pools are not supported; specify a cidr.",
        ));
    }
    let cidr_s = get_str(m, "cidr")?.ok_or_else(|| {
        ApiError::bad_request(
            "Bad subnet request: a cidr must be specified in the absence of a subnet pool",
        )
    })?;
    let cidr = ipam::parse_cidr(&cidr_s, true).map_err(|e| invalid("cidr", e))?;
    let gateway = match m.get("gateway_ip") {
        None => Some(ipam::default_gateway(&cidr)),
        Some(Value::Null) => None,
        Some(v) => {
            let g = get_ip("gateway_ip", v)?;
            let (first, last) = ipam::host_range(&cidr);
            if !(first..=last).contains(&u32::from(g)) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for operation: Gateway IP {g} is not a host address of subnet {cidr}."
                )));
            }
            Some(g)
        }
    };
    let pools = match parse_pools(m)? {
        Some(p) => {
            ipam::validate_pools(&cidr, gateway, &p).map_err(ApiError::bad_request)?;
            p
        }
        None => ipam::default_pools(&cidr, gateway),
    };
    for other in store::subnets_of(conn, &net_id)? {
        if ipam::overlaps(&cidr, &subnet_cidr(&other)) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for operation: Requested subnet with cidr: {cidr} for network: \
                 {net_id} overlaps with another subnet."
            )));
        }
    }
    let s = Subnet {
        std: new_standard(m, project)?,
        network_id: net_id,
        cidr: cidr.to_string(),
        gateway_ip: gateway.map(|g| g.to_string()),
        enable_dhcp: get_bool(m, "enable_dhcp")?.unwrap_or(true),
        allocation_pools: pools
            .iter()
            .map(|(s, e)| PoolJson {
                start: s.to_string(),
                end: e.to_string(),
            })
            .collect(),
        dns_nameservers: parse_dns(m)?.unwrap_or_default(),
        host_routes: parse_routes(m, "host_routes")?.unwrap_or_default(),
    };
    let tx = conn.unchecked_transaction()?;
    check_quota(&tx, cx.cfg, &s.std.project_id, "subnet", 1)?;
    store::insert_subnet(&tx, &s)?;
    if s.enable_dhcp {
        add_dhcp_address(&tx, cx, &net, &s)?;
    }
    tx.commit()?;
    Ok(s)
}

/// The DHCP port's device id on this host (Neutron's `dhcp<host>-<net>`).
fn dhcp_device_id(host: &str, network_id: &str) -> String {
    format!("dhcp{host}-{network_id}")
}

/// Gives the network's DHCP port an address on `s` (creating the port).
pub(crate) fn add_dhcp_address(
    conn: &Connection,
    cx: &Cx<'_>,
    net: &Network,
    s: &Subnet,
) -> ApiResult<()> {
    let ports = store::ports_of_network(conn, &net.std.id)?;
    let ip = allocate_on_subnet(conn, net, s, None, OWNER_DHCP)?;
    match ports.into_iter().find(|p| p.device_owner == OWNER_DHCP) {
        Some(mut p) => {
            p.fixed_ips.push(ip);
            p.std.revision += 1;
            store::update_port(conn, &p)?;
        }
        None => {
            let mut p = blank_port(net, &net.std.project_id, conn)?;
            p.device_owner = OWNER_DHCP.into();
            p.device_id = dhcp_device_id(cx.host, &net.std.id);
            p.host_id = cx.host.to_string();
            p.port_security = false;
            p.fixed_ips = vec![ip];
            store::insert_port(conn, &p)?;
        }
    }
    Ok(())
}

/// Takes the DHCP port's address on `subnet_id` back (deleting the port if
/// it has no other).
pub(crate) fn remove_dhcp_address(
    conn: &Connection,
    network_id: &str,
    subnet_id: &str,
) -> ApiResult<()> {
    for mut p in store::ports_of_network(conn, network_id)? {
        if p.device_owner != OWNER_DHCP {
            continue;
        }
        p.fixed_ips.retain(|f| f.subnet_id != subnet_id);
        if p.fixed_ips.is_empty() {
            store::delete_port(conn, &p.std.id)?;
        } else {
            store::update_port(conn, &p)?;
        }
    }
    Ok(())
}

/// Updates a subnet (name, description, gateway_ip, enable_dhcp,
/// dns_nameservers, host_routes, allocation_pools).
pub fn update_subnet(
    conn: &Connection,
    cx: &Cx<'_>,
    id: &str,
    m: &Map<String, Value>,
) -> ApiResult<Subnet> {
    let mut s = visible_subnet(conn, cx.auth, id)?;
    require_write(cx, &s.std.project_id, "update_subnet")?;
    for k in ["cidr", "network_id", "ip_version"] {
        if m.contains_key(k) {
            return Err(ApiError::bad_request(format!(
                "Cannot update read-only attribute {k}"
            )));
        }
    }
    let cidr = subnet_cidr(&s);
    touch(&mut s.std, m)?;
    if let Some(v) = m.get("gateway_ip") {
        s.gateway_ip = if v.is_null() {
            None
        } else {
            Some(get_ip("gateway_ip", v)?.to_string())
        };
    }
    if let Some(p) = parse_pools(m)? {
        s.allocation_pools = p
            .iter()
            .map(|(a, b)| PoolJson {
                start: a.to_string(),
                end: b.to_string(),
            })
            .collect();
    }
    let gw = s.gateway_ip.as_deref().and_then(|g| g.parse().ok());
    ipam::validate_pools(&cidr, gw, &pools_of(&s)).map_err(ApiError::bad_request)?;
    if let Some(d) = parse_dns(m)? {
        s.dns_nameservers = d;
    }
    if let Some(r) = parse_routes(m, "host_routes")? {
        s.host_routes = r;
    }
    let tx = conn.unchecked_transaction()?;
    if let Some(dhcp) = get_bool(m, "enable_dhcp")? {
        if dhcp && !s.enable_dhcp {
            let net = visible_network(&tx, cx.auth, &s.network_id)?;
            s.enable_dhcp = true;
            add_dhcp_address(&tx, cx, &net, &s)?;
        } else if !dhcp && s.enable_dhcp {
            s.enable_dhcp = false;
            remove_dhcp_address(&tx, &s.network_id, &s.std.id)?;
        }
    }
    store::update_subnet(&tx, &s)?;
    tx.commit()?;
    Ok(s)
}

/// Deletes a subnet: 409 while a port other than the DHCP port has an
/// address on it.
pub fn delete_subnet(conn: &Connection, cx: &Cx<'_>, id: &str) -> ApiResult<()> {
    let s = visible_subnet(conn, cx.auth, id)?;
    require_write(cx, &s.std.project_id, "delete_subnet")?;
    let users = store::ports_on_subnet(conn, id)?;
    if users.iter().any(|p| p.device_owner != OWNER_DHCP) {
        return Err(ApiError::conflict(format!(
            "Unable to complete operation on subnet {id}: One or more ports have an IP \
             allocation from this subnet."
        )));
    }
    let tx = conn.unchecked_transaction()?;
    remove_dhcp_address(&tx, &s.network_id, id)?;
    store::delete_subnet(&tx, id)?;
    tx.commit()?;
    Ok(())
}
