//! The Networking service's rules: visibility, validation of request
//! bodies, segment allocation, IPAM over the store, the DHCP port, quotas;
//! and what the service answers the others (compute's NICs).
//!
//! Functions taking `&Connection` never open a transaction themselves
//! unless their name says so: callers wrap a request in one.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::ipam;
use super::model::*;
use super::store;
use crate::config::{Config, TenantNetworkType};
use crate::host::net::plan::{Ipv4Cidr, PortPlan, Segment};
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
use crate::quota;
use crate::util::{new_id, now_iso};

pub use super::nics::{
    check_nics, create_server_ports, release_server_ports, server_addresses, server_interfaces,
    NicRequest, NicsAsked,
};

/// Who asks, with what configuration, on which host.
pub struct Cx<'a> {
    /// The caller.
    pub auth: &'a AuthContext,
    /// The daemon's configuration.
    pub cfg: &'a Config,
    /// This host's name (ports are bound to it).
    pub host: &'a str,
}

impl Cx<'_> {
    fn admin(&self) -> bool {
        self.auth.is_admin()
    }
}

/// A request body's resource object (`{"network": {...}}`), every key
/// among `allowed`, else 400 "Unrecognized attribute(s) 'x'".
pub fn body_object(body: Value, key: &str, allowed: &[&str]) -> ApiResult<Map<String, Value>> {
    let Value::Object(mut outer) = body else {
        return Err(ApiError::bad_request(format!(
            "Invalid input: the body must be a JSON object with a '{key}' object"
        )));
    };
    let Some(Value::Object(inner)) = outer.remove(key) else {
        return Err(ApiError::bad_request(format!(
            "Resource body required: the body must have a '{key}' object"
        )));
    };
    let unknown: Vec<&str> = inner
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Unrecognized attribute(s) '{}'",
            unknown.join(", ")
        )));
    }
    Ok(inner)
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Invalid input for {field}. Reason: {reason}."))
}

fn get_str(m: &Map<String, Value>, k: &str) -> ApiResult<Option<String>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 255 && !crate::util::has_control_chars(s) => {
            Ok(Some(s.clone()))
        }
        Some(Value::String(_)) => Err(invalid(k, "too long or has control characters")),
        Some(v) => Err(invalid(k, format!("'{v}' is not a valid string"))),
    }
}

fn get_bool(m: &Map<String, Value>, k: &str) -> ApiResult<Option<bool>> {
    match m.get(k) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(invalid(k, format!("'{v}' is not a valid boolean value"))),
    }
}

fn get_int(m: &Map<String, Value>, k: &str) -> ApiResult<Option<i64>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(k, format!("'{s}' is not an integer"))),
        Some(v) => Err(invalid(k, format!("'{v}' is not an integer"))),
    }
}

fn get_ip(field: &str, v: &Value) -> ApiResult<Ipv4Addr> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(field, format!("'{v}' is not a valid IPv4 address")))
}

/// The project a new resource belongs to: the caller's, or (admins only)
/// the body's `project_id`/`tenant_id`.
fn owner_project(cx: &Cx<'_>, m: &Map<String, Value>) -> ApiResult<String> {
    let asked = get_str(m, "project_id")?.or(get_str(m, "tenant_id")?);
    match asked {
        Some(p) if p != cx.auth.project_id && !cx.admin() => Err(ApiError::forbidden(
            "Specifying 'project_id' or 'tenant_id' other than the authenticated project \
             in request requires admin privileges",
        )),
        Some(p) => Ok(p),
        None => Ok(cx.auth.project_id.clone()),
    }
}

fn new_standard(m: &Map<String, Value>, project: String) -> ApiResult<Standard> {
    let now = now_iso();
    Ok(Standard {
        id: new_id(),
        name: get_str(m, "name")?.unwrap_or_default(),
        description: get_str(m, "description")?.unwrap_or_default(),
        project_id: project,
        created_at: now.clone(),
        updated_at: now,
        revision: 1,
    })
}

fn touch(s: &mut Standard, m: &Map<String, Value>) -> ApiResult<()> {
    if let Some(n) = get_str(m, "name")? {
        s.name = n;
    }
    if let Some(d) = get_str(m, "description")? {
        s.description = d;
    }
    s.updated_at = now_iso();
    s.revision += 1;
    Ok(())
}

/// 403 unless the caller may change `project`'s resources (its own as a
/// member, any as an admin), in Neutron's words.
fn require_write(cx: &Cx<'_>, project: &str, rule: &str) -> ApiResult<()> {
    crate::http::policy::require_member(cx.auth, &policy_refusal(rule))?;
    if crate::http::policy::owns_or_admin(cx.auth, project) {
        Ok(())
    } else {
        Err(ApiError::forbidden(policy_refusal(rule)))
    }
}

/// Neutron's policy refusal.
pub fn policy_refusal(rule: &str) -> String {
    format!("rule:{rule} is disallowed by policy")
}

/// 409 unless `project` may have `adding` more of `resource`.
pub fn check_quota(
    conn: &Connection,
    cfg: &Config,
    project: &str,
    resource: &str,
    adding: i64,
) -> ApiResult<()> {
    let limit = quota::limit(conn, &cfg.quotas, project, resource)?;
    let used = usage(conn, project, resource)?;
    if limit >= 0 && used + adding > limit {
        return Err(ApiError::conflict(format!(
            "Quota exceeded for resources: ['{resource}']."
        )));
    }
    Ok(())
}

/// How many networks, subnets, ports, routers and floating IPs `project`
/// still has (Identity asks before deleting it).
pub fn resources_in_project(conn: &Connection, project: &str) -> rusqlite::Result<i64> {
    let mut n = 0;
    for r in ["network", "subnet", "port", "router", "floatingip"] {
        n += store::usage(conn, project, r)?;
    }
    Ok(n)
}

/// How many of a Networking quota resource `project` has (security groups
/// are counted by their own module: 0 here).
pub fn usage(conn: &Connection, project: &str, resource: &str) -> rusqlite::Result<i64> {
    store::usage(conn, project, resource)
}

// ---------------------------------------------------------------- networks

/// Network `id` if the caller may see it (its own, shared, external, or any
/// for an admin), else 404.
pub fn visible_network(conn: &Connection, auth: &AuthContext, id: &str) -> ApiResult<Network> {
    match store::get_network(conn, id)? {
        Some(n) if network_visible(auth, &n) => Ok(n),
        _ => Err(ApiError::not_found(format!(
            "Network {id} could not be found."
        ))),
    }
}

fn network_visible(auth: &AuthContext, n: &Network) -> bool {
    auth.is_admin() || n.std.project_id == auth.project_id || n.shared || n.external
}

/// Every network the caller sees, with its subnets' ids.
pub fn list_networks(
    conn: &Connection,
    auth: &AuthContext,
) -> ApiResult<Vec<(Network, Vec<String>)>> {
    let nets = store::list_networks(conn)?;
    let subnets = store::list_subnets(conn)?;
    Ok(nets
        .into_iter()
        .filter(|n| network_visible(auth, n))
        .map(|n| {
            let ids = subnets
                .iter()
                .filter(|s| s.network_id == n.std.id)
                .map(|s| s.std.id.clone())
                .collect();
            (n, ids)
        })
        .collect())
}

/// The ids of a network's subnets.
pub fn subnet_ids(conn: &Connection, network_id: &str) -> ApiResult<Vec<String>> {
    Ok(store::subnets_of(conn, network_id)?
        .into_iter()
        .map(|s| s.std.id)
        .collect())
}

const NETWORK_FIELDS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "shared",
    "router:external",
    "port_security_enabled",
    "mtu",
    "provider:network_type",
    "provider:physical_network",
    "provider:segmentation_id",
    "project_id",
    "tenant_id",
    "availability_zone_hints",
    "is_default",
    "dns_domain",
    "qos_policy_id",
];

/// The fields a network body may have.
pub fn network_fields() -> &'static [&'static str] {
    NETWORK_FIELDS
}

/// The segment of a network.
pub fn segment_of(n: &Network) -> Segment {
    let physnet = n.physnet.clone().unwrap_or_default();
    let id = n.segmentation_id.unwrap_or(0);
    match n.network_type.as_str() {
        "flat" => Segment::Flat { physnet },
        "vlan" => Segment::Vlan {
            physnet,
            vid: u16::try_from(id).unwrap_or(0),
        },
        _ => Segment::Vxlan {
            vni: u32::try_from(id).unwrap_or(0),
        },
    }
}

fn max_mtu(network_type: &str) -> i64 {
    if network_type == "vxlan" {
        1450
    } else {
        1500
    }
}

/// Validates a network create body and chooses its segment (a free one for
/// tenant networks); nothing is stored. Ask the host about
/// [`segment_of`] the result, then [`store_network`] it.
pub fn prepare_network(
    conn: &Connection,
    cx: &Cx<'_>,
    m: &Map<String, Value>,
) -> ApiResult<Network> {
    let project = owner_project(cx, m)?;
    crate::http::policy::require_member(cx.auth, &policy_refusal("create_network"))?;
    let shared = get_bool(m, "shared")?.unwrap_or(false);
    let external = get_bool(m, "router:external")?.unwrap_or(false);
    for (flag, rule) in [
        (shared, "create_network:shared"),
        (external, "create_network:router:external"),
    ] {
        if flag && !cx.admin() {
            return Err(ApiError::forbidden(policy_refusal(rule)));
        }
    }
    let ptype = get_str(m, "provider:network_type")?;
    let physnet = get_str(m, "provider:physical_network")?;
    let seg_id = get_int(m, "provider:segmentation_id")?;
    if (ptype.is_some() || physnet.is_some() || seg_id.is_some()) && !cx.admin() {
        return Err(ApiError::forbidden(policy_refusal(
            "create_network:provider:network_type",
        )));
    }
    let net = &cx.cfg.network;
    let (network_type, physnet, seg_id) = match ptype.as_deref() {
        None if physnet.is_none() && seg_id.is_none() => match net.tenant_network_type {
            TenantNetworkType::Vxlan => ("vxlan".to_string(), None, Some(free_vni(conn, cx)?)),
            TenantNetworkType::Vlan => {
                let (p, v) = free_tenant_vlan(conn, cx, None)?;
                ("vlan".to_string(), Some(p), Some(v))
            }
        },
        None => {
            return Err(ApiError::bad_request(
                "Invalid input for operation: provider:network_type required.",
            ))
        }
        Some("vxlan") => {
            if physnet.is_some() {
                return Err(ApiError::bad_request(
                    "Invalid input for operation: provider:physical_network specified for vxlan network.",
                ));
            }
            let vni = match seg_id {
                Some(v) if (1..=16_777_215).contains(&v) => v,
                Some(v) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for operation: segmentation_id {v} out of range (1 through 16777215)."
                    )))
                }
                None => free_vni(conn, cx)?,
            };
            ("vxlan".to_string(), None, Some(vni))
        }
        Some("vlan") => {
            let Some(p) = physnet else {
                return Err(ApiError::bad_request(
                    "Invalid input for operation: provider:physical_network required.",
                ));
            };
            if !net.knows_physnet(&p) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for operation: physical_network '{p}' unknown for VLAN provider network."
                )));
            }
            let vid = match seg_id {
                Some(v) if (1..=4094).contains(&v) => v,
                Some(v) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input for operation: segmentation_id {v} out of range (1 through 4094)."
                    )))
                }
                None => free_tenant_vlan(conn, cx, Some(&p))?.1,
            };
            ("vlan".to_string(), Some(p), Some(vid))
        }
        Some("flat") => {
            let Some(p) = physnet else {
                return Err(ApiError::bad_request(
                    "Invalid input for operation: provider:physical_network required.",
                ));
            };
            if seg_id.is_some() {
                return Err(ApiError::bad_request(
                    "Invalid input for operation: provider:segmentation_id specified for flat network.",
                ));
            }
            if !net.knows_physnet(&p) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for operation: physical_network '{p}' unknown for flat provider network."
                )));
            }
            ("flat".to_string(), Some(p), None)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for operation: network_type value '{other}' not supported \
                 (supported: flat, vlan, vxlan)."
            )))
        }
    };
    let max = max_mtu(&network_type);
    let mtu = match get_int(m, "mtu")? {
        Some(v) if (68..=max).contains(&v) => v,
        Some(v) => {
            return Err(ApiError::bad_request(format!(
            "Invalid input for operation: Requested MTU is too big, maximum is {max} (asked {v})."
        )))
        }
        None => max,
    };
    Ok(Network {
        std: new_standard(m, project)?,
        admin_state_up: get_bool(m, "admin_state_up")?.unwrap_or(true),
        shared,
        external,
        port_security: get_bool(m, "port_security_enabled")?.unwrap_or(true),
        mtu,
        network_type,
        physnet,
        segmentation_id: seg_id,
    })
}

fn free_vni(conn: &Connection, cx: &Cx<'_>) -> ApiResult<i64> {
    let taken = store::taken_segments(conn, "vxlan", "")?;
    let (lo, hi) = cx.cfg.network.vni_range;
    (i64::from(lo)..=i64::from(hi))
        .find(|v| !taken.contains(v))
        .ok_or_else(no_tenant_network)
}

fn no_tenant_network() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "Unable to create the network. No tenant network is available for allocation.",
    )
}

fn free_tenant_vlan(
    conn: &Connection,
    cx: &Cx<'_>,
    physnet: Option<&str>,
) -> ApiResult<(String, i64)> {
    for r in &cx.cfg.network.vlan_ranges {
        if physnet.is_some_and(|p| p != r.physnet) {
            continue;
        }
        let Some((lo, hi)) = r.range else { continue };
        let taken = store::taken_segments(conn, "vlan", &r.physnet)?;
        if let Some(v) = (i64::from(lo)..=i64::from(hi)).find(|v| !taken.contains(v)) {
            return Ok((r.physnet.clone(), v));
        }
    }
    if physnet.is_some() {
        return Err(ApiError::bad_request(
            "Invalid input for operation: provider:segmentation_id required \
             (the physical network has no VLAN range for automatic allocation).",
        ));
    }
    Err(no_tenant_network())
}

/// Stores a network prepared by [`prepare_network`]: quota, segment (409 if
/// taken meanwhile or by an admin's choice) and row, in one transaction.
pub fn store_network(conn: &Connection, cx: &Cx<'_>, n: &Network) -> ApiResult<()> {
    let tx = conn.unchecked_transaction()?;
    check_quota(&tx, cx.cfg, &n.std.project_id, "network", 1)?;
    store::insert_network(&tx, n)?;
    let physnet = n.physnet.clone().unwrap_or_default();
    let seg = n.segmentation_id.unwrap_or(0);
    if !store::allocate_segment(&tx, &n.network_type, &physnet, seg, &n.std.id)? {
        return Err(ApiError::conflict(match n.network_type.as_str() {
            "vlan" => format!(
                "Unable to create the network. The VLAN {seg} on physical network {physnet} is in use."
            ),
            "flat" => format!(
                "Unable to create the flat network. Physical network {physnet} is in use."
            ),
            _ => format!("Unable to create the network. The tunnel ID {seg} is in use."),
        }));
    }
    tx.commit()?;
    Ok(())
}

/// Updates a network (name, description, admin_state_up, shared,
/// router:external, port_security_enabled, mtu).
pub fn update_network(
    conn: &Connection,
    cx: &Cx<'_>,
    id: &str,
    m: &Map<String, Value>,
) -> ApiResult<Network> {
    let mut n = visible_network(conn, cx.auth, id)?;
    require_write(cx, &n.std.project_id, "update_network")?;
    for k in [
        "provider:network_type",
        "provider:physical_network",
        "provider:segmentation_id",
    ] {
        if m.contains_key(k) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for operation: Plugin does not support updating the \
                 following provider network attributes: {k}."
            )));
        }
    }
    for (k, rule) in [
        ("shared", "update_network:shared"),
        ("router:external", "update_network:router:external"),
    ] {
        if m.contains_key(k) && !cx.admin() {
            return Err(ApiError::forbidden(policy_refusal(rule)));
        }
    }
    touch(&mut n.std, m)?;
    if let Some(b) = get_bool(m, "admin_state_up")? {
        n.admin_state_up = b;
    }
    if let Some(b) = get_bool(m, "shared")? {
        n.shared = b;
    }
    if let Some(b) = get_bool(m, "router:external")? {
        n.external = b;
    }
    if let Some(b) = get_bool(m, "port_security_enabled")? {
        n.port_security = b;
    }
    if let Some(v) = get_int(m, "mtu")? {
        let max = max_mtu(&n.network_type);
        if !(68..=max).contains(&v) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for operation: Requested MTU is too big, maximum is {max} (asked {v})."
            )));
        }
        n.mtu = v;
    }
    store::update_network(conn, &n)?;
    Ok(n)
}

/// Deletes a network: 409 while ports other than its DHCP port are on it.
pub fn delete_network(conn: &Connection, cx: &Cx<'_>, id: &str) -> ApiResult<()> {
    let n = visible_network(conn, cx.auth, id)?;
    require_write(cx, &n.std.project_id, "delete_network")?;
    let ports = store::ports_of_network(conn, id)?;
    if ports.iter().any(|p| p.device_owner != OWNER_DHCP) {
        return Err(ApiError::conflict(format!(
            "Unable to complete operation on network {id}. There are one or more ports \
             still in use on the network."
        )));
    }
    let tx = conn.unchecked_transaction()?;
    for p in ports {
        store::delete_port(&tx, &p.std.id)?;
    }
    store::delete_network(&tx, id)?;
    tx.commit()?;
    Ok(())
}

// ---------------------------------------------------------------- subnets

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
pub fn subnet_cidr(s: &Subnet) -> Ipv4Cidr {
    ipam::parse_cidr(&s.cidr, false).unwrap_or(Ipv4Cidr {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 32,
    })
}

fn pools_of(s: &Subnet) -> Vec<ipam::Pool> {
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
fn add_dhcp_address(conn: &Connection, cx: &Cx<'_>, net: &Network, s: &Subnet) -> ApiResult<()> {
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
fn remove_dhcp_address(conn: &Connection, network_id: &str, subnet_id: &str) -> ApiResult<()> {
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

// ---------------------------------------------------------------- ports

/// Port `id` if the caller may see it (its project's, or any for an admin),
/// else 404.
pub fn visible_port(conn: &Connection, auth: &AuthContext, id: &str) -> ApiResult<Port> {
    match store::get_port(conn, id)? {
        Some(p) if auth.is_admin() || p.std.project_id == auth.project_id => Ok(p),
        _ => Err(port_not_found(id)),
    }
}

fn port_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Port {id} could not be found."))
}

/// Every port the caller sees.
pub fn list_ports(conn: &Connection, auth: &AuthContext) -> ApiResult<Vec<Port>> {
    Ok(store::list_ports(conn)?
        .into_iter()
        .filter(|p| auth.is_admin() || p.std.project_id == auth.project_id)
        .collect())
}

const PORT_FIELDS: &[&str] = &[
    "name",
    "description",
    "network_id",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "security_groups",
    "port_security_enabled",
    "allowed_address_pairs",
    "binding:host_id",
    "binding:vnic_type",
    "binding:profile",
    "dns_name",
    "dns_domain",
    "extra_dhcp_opts",
    "project_id",
    "tenant_id",
    "qos_policy_id",
    "propagate_uplink_status",
    "numa_affinity_policy",
];

/// The fields a port body may have.
pub fn port_fields() -> &'static [&'static str] {
    PORT_FIELDS
}

fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// A new port on `net` with a fresh MAC and nothing else.
fn blank_port(net: &Network, project: &str, conn: &Connection) -> ApiResult<Port> {
    let mut mac = random_mac();
    let mut tries = 0;
    while store::mac_in_use(conn, &net.std.id, &mac)? {
        tries += 1;
        if tries > 32 {
            return Err(ApiError::conflict(format!(
                "Unable to generate a unique mac on network {}.",
                net.std.id
            )));
        }
        mac = random_mac();
    }
    let now = now_iso();
    Ok(Port {
        std: Standard {
            id: new_id(),
            project_id: project.to_string(),
            created_at: now.clone(),
            updated_at: now,
            revision: 1,
            ..Default::default()
        },
        network_id: net.std.id.clone(),
        mac_address: mac,
        admin_state_up: true,
        status: "DOWN".into(),
        device_id: String::new(),
        device_owner: String::new(),
        port_security: net.port_security,
        host_id: String::new(),
        dns_name: String::new(),
        created_by_server: false,
        nic_index: 0,
        fixed_ips: Vec::new(),
        security_groups: Vec::new(),
        allowed_address_pairs: Vec::new(),
    })
}

/// One address on `s`: `ip` if free (409 if taken), else the first free one
/// of the pools (409 when exhausted). The gateway only for router ports.
fn allocate_on_subnet(
    conn: &Connection,
    net: &Network,
    s: &Subnet,
    ip: Option<Ipv4Addr>,
    owner: &str,
) -> ApiResult<FixedIp> {
    let taken = store::taken_ips(conn, &s.std.id)?;
    let ip = match ip {
        Some(ip) => {
            let cidr = subnet_cidr(s);
            let (first, last) = ipam::host_range(&cidr);
            if !(first..=last).contains(&u32::from(ip)) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for operation: IP address {ip} is not a valid IP for the specified subnet."
                )));
            }
            if taken.contains(&ip.to_string()) {
                return Err(ApiError::conflict(format!(
                    "IP address {ip} already allocated in subnet {}",
                    s.std.id
                )));
            }
            if s.gateway_ip.as_deref() == Some(ip.to_string().as_str())
                && owner != OWNER_ROUTER_INTERFACE
            {
                return Err(ApiError::conflict(format!(
                    "IP address {ip} already allocated in subnet {}",
                    s.std.id
                )));
            }
            ip
        }
        None => {
            let taken: HashSet<Ipv4Addr> = taken.iter().filter_map(|t| t.parse().ok()).collect();
            ipam::pick_free(&pools_of(s), &taken).ok_or_else(|| {
                ApiError::conflict(format!(
                    "No more IP addresses available on network {}.",
                    net.std.id
                ))
            })?
        }
    };
    Ok(FixedIp {
        subnet_id: s.std.id.clone(),
        ip_address: ip.to_string(),
    })
}

/// Addresses for a port on `net`: as `fixed_ips` asks (by subnet, by
/// address, or both), else one from the network's first subnet.
pub fn allocate_ips(
    conn: &Connection,
    net: &Network,
    requests: Option<&Value>,
    owner: &str,
) -> ApiResult<Vec<FixedIp>> {
    let subnets = store::subnets_of(conn, &net.std.id)?;
    let mut out: Vec<FixedIp> = Vec::new();
    let reserve = |f: FixedIp, out: &mut Vec<FixedIp>| -> ApiResult<()> {
        if out.contains(&f) {
            return Err(ApiError::conflict(format!(
                "IP address {} already allocated in subnet {}",
                f.ip_address, f.subnet_id
            )));
        }
        out.push(f);
        Ok(())
    };
    match requests {
        None | Some(Value::Null) => {
            if let Some(s) = subnets.first() {
                let f = allocate_on_subnet(conn, net, s, None, owner)?;
                reserve(f, &mut out)?;
            }
        }
        Some(Value::Array(reqs)) => {
            for r in reqs {
                let sid = r.get("subnet_id").and_then(Value::as_str);
                let ip = match r.get("ip_address") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(get_ip("fixed_ips", v)?),
                };
                if sid.is_none() && ip.is_none() {
                    return Err(invalid(
                        "fixed_ips",
                        "each entry needs a subnet_id or an ip_address",
                    ));
                }
                let subnet = match (sid, ip) {
                    (Some(sid), _) => {
                        subnets.iter().find(|s| s.std.id == sid).ok_or_else(|| {
                            ApiError::bad_request(format!(
                            "Invalid input for operation: Failed to create port on network {}, \
                             because fixed_ips included invalid subnet {sid}.",
                            net.std.id
                        ))
                        })?
                    }
                    (None, Some(ip)) => subnets
                        .iter()
                        .find(|s| ipam::contains(&subnet_cidr(s), ip))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "Invalid input for operation: IP address {ip} is not a valid \
                                 IP for the defined networks subnets."
                            ))
                        })?,
                    (None, None) => unreachable_request()?,
                };
                if let Some(ip) = ip {
                    if !ipam::contains(&subnet_cidr(subnet), ip) {
                        return Err(ApiError::bad_request(format!(
                            "Invalid input for operation: IP address {ip} is not a valid IP \
                             for the specified subnet."
                        )));
                    }
                }
                // Several requests for one subnet without addresses: each
                // gets the next free one.
                let mut f = allocate_on_subnet(conn, net, subnet, ip, owner)?;
                if ip.is_none() {
                    while out.contains(&f) {
                        let mut taken: HashSet<Ipv4Addr> = store::taken_ips(conn, &subnet.std.id)?
                            .iter()
                            .filter_map(|t| t.parse().ok())
                            .collect();
                        taken.extend(
                            out.iter()
                                .filter_map(|o| o.ip_address.parse::<Ipv4Addr>().ok()),
                        );
                        let next = ipam::pick_free(&pools_of(subnet), &taken).ok_or_else(|| {
                            ApiError::conflict(format!(
                                "No more IP addresses available on network {}.",
                                net.std.id
                            ))
                        })?;
                        f.ip_address = next.to_string();
                    }
                }
                reserve(f, &mut out)?;
            }
        }
        Some(v) => return Err(invalid("fixed_ips", format!("'{v}' is not a list"))),
    }
    Ok(out)
}

fn unreachable_request<T>() -> ApiResult<T> {
    Err(invalid(
        "fixed_ips",
        "each entry needs a subnet_id or an ip_address",
    ))
}

fn parse_pairs(m: &Map<String, Value>, port_mac: &str) -> ApiResult<Option<Vec<AddressPair>>> {
    match m.get("allowed_address_pairs") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for p in a {
                let ip = p.get("ip_address").and_then(Value::as_str).ok_or_else(|| {
                    invalid("allowed_address_pairs", "each pair needs an ip_address")
                })?;
                let cidr =
                    ipam::parse_cidr(ip, false).map_err(|e| invalid("allowed_address_pairs", e))?;
                let ip = if ip.contains('/') {
                    cidr.to_string()
                } else {
                    cidr.addr.to_string()
                };
                let mac = match p.get("mac_address").and_then(Value::as_str) {
                    Some(m) => {
                        parse_mac(m).ok_or_else(|| {
                            invalid(
                                "allowed_address_pairs",
                                format!("'{m}' is not a valid MAC address"),
                            )
                        })?;
                        m.to_ascii_lowercase()
                    }
                    None => port_mac.to_string(),
                };
                out.push(AddressPair {
                    ip_address: ip,
                    mac_address: mac,
                });
            }
            Ok(Some(out))
        }
        Some(v) => Err(invalid(
            "allowed_address_pairs",
            format!("'{v}' is not a list"),
        )),
    }
}

fn parse_groups(
    conn: &Connection,
    cx: &Cx<'_>,
    m: &Map<String, Value>,
) -> ApiResult<Option<Vec<String>>> {
    match m.get("security_groups") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for g in a {
                let g = g
                    .as_str()
                    .ok_or_else(|| invalid("security_groups", format!("'{g}' is not an id")))?;
                if !crate::network::security_groups::service::group_visible(
                    conn,
                    &cx.auth.project_id,
                    cx.admin(),
                    g,
                )? {
                    return Err(ApiError::not_found(format!(
                        "Security group {g} does not exist"
                    )));
                }
                if !out.iter().any(|o| o == g) {
                    out.push(g.to_string());
                }
            }
            Ok(Some(out))
        }
        Some(v) => Err(invalid("security_groups", format!("'{v}' is not a list"))),
    }
}

fn check_binding_host(cx: &Cx<'_>, m: &Map<String, Value>) -> ApiResult<Option<String>> {
    let host = get_str(m, "binding:host_id")?;
    if host.is_some() && !cx.admin() {
        return Err(ApiError::forbidden(policy_refusal(
            "create_port:binding:host_id",
        )));
    }
    Ok(host)
}

fn check_mac_free(conn: &Connection, network_id: &str, mac: &str) -> ApiResult<()> {
    if store::mac_in_use(conn, network_id, mac)? {
        return Err(ApiError::conflict(format!(
            "Unable to complete operation for network {network_id}. The mac address {mac} is in use."
        )));
    }
    Ok(())
}

/// Builds and stores a port from a create body (no transaction: the
/// caller's). `extra` fills in what a server's NIC adds.
pub fn insert_port_from(
    conn: &Connection,
    cx: &Cx<'_>,
    m: &Map<String, Value>,
    extra: Option<&dyn Fn(&mut Port)>,
) -> ApiResult<Port> {
    let project = owner_project(cx, m)?;
    crate::http::policy::require_member(cx.auth, &policy_refusal("create_port"))?;
    let net_id = get_str(m, "network_id")?
        .ok_or_else(|| ApiError::bad_request("Invalid input: network_id is required"))?;
    let net = visible_network(conn, cx.auth, &net_id)?;
    let mut p = blank_port(&net, &project, conn)?;
    p.std.name = get_str(m, "name")?.unwrap_or_default();
    p.std.description = get_str(m, "description")?.unwrap_or_default();
    if let Some(mac) = get_str(m, "mac_address")? {
        let parsed = parse_mac(&mac)
            .filter(|b| b[0] & 1 == 0 && *b != [0; 6])
            .ok_or_else(|| invalid("mac_address", format!("'{mac}' is not a valid MAC address")))?;
        let _ = parsed;
        p.mac_address = mac.to_ascii_lowercase();
        check_mac_free(conn, &net_id, &p.mac_address)?;
    }
    p.admin_state_up = get_bool(m, "admin_state_up")?.unwrap_or(true);
    p.device_id = get_str(m, "device_id")?.unwrap_or_default();
    p.device_owner = get_str(m, "device_owner")?.unwrap_or_default();
    p.dns_name = get_str(m, "dns_name")?.unwrap_or_default();
    if let Some(h) = check_binding_host(cx, m)? {
        p.host_id = h;
    }
    if let Some(b) = get_bool(m, "port_security_enabled")? {
        p.port_security = b;
    }
    if let Some(f) = extra {
        f(&mut p);
    }
    p.fixed_ips = allocate_ips(conn, &net, m.get("fixed_ips"), &p.device_owner)?;
    p.allowed_address_pairs = parse_pairs(m, &p.mac_address)?.unwrap_or_default();
    let groups = parse_groups(conn, cx, m)?;
    if !p.port_security {
        if groups.as_ref().is_some_and(|g| !g.is_empty()) {
            return Err(ApiError::bad_request(
                "Port security must be enabled and port must have an IP address in order \
                 to use security groups.",
            ));
        }
        if !p.allowed_address_pairs.is_empty() {
            return Err(ApiError::conflict(
                "Port Security must be enabled in order to have allowed address pairs on a port.",
            ));
        }
    } else if !p.device_owner.starts_with("network:") {
        p.security_groups = match groups {
            Some(g) => g,
            None => vec![
                crate::network::security_groups::service::ensure_default_group(
                    conn,
                    &p.std.project_id,
                )?,
            ],
        };
    }
    if !p.device_owner.starts_with("network:") {
        check_quota(conn, cx.cfg, &p.std.project_id, "port", 1)?;
    }
    store::insert_port(conn, &p)?;
    Ok(p)
}

/// Creates a port (POST /ports), in one transaction.
pub fn create_port(conn: &Connection, cx: &Cx<'_>, m: &Map<String, Value>) -> ApiResult<Port> {
    let tx = conn.unchecked_transaction()?;
    let p = insert_port_from(&tx, cx, m, None)?;
    tx.commit()?;
    Ok(p)
}

/// Updates a port.
pub fn update_port(
    conn: &Connection,
    cx: &Cx<'_>,
    id: &str,
    m: &Map<String, Value>,
) -> ApiResult<Port> {
    let mut p = visible_port(conn, cx.auth, id)?;
    require_write(cx, &p.std.project_id, "update_port")?;
    if m.contains_key("network_id") {
        return Err(ApiError::bad_request(
            "Cannot update read-only attribute network_id",
        ));
    }
    let tx = conn.unchecked_transaction()?;
    touch(&mut p.std, m)?;
    if let Some(b) = get_bool(m, "admin_state_up")? {
        p.admin_state_up = b;
    }
    if let Some(d) = get_str(m, "device_id")? {
        p.device_id = d;
    }
    if let Some(d) = get_str(m, "device_owner")? {
        p.device_owner = d;
    }
    if let Some(d) = get_str(m, "dns_name")? {
        p.dns_name = d;
    }
    if m.contains_key("binding:host_id") {
        if !cx.admin() {
            return Err(ApiError::forbidden(policy_refusal(
                "update_port:binding:host_id",
            )));
        }
        p.host_id = get_str(m, "binding:host_id")?.unwrap_or_default();
    }
    if let Some(mac) = get_str(m, "mac_address")? {
        if !cx.admin() {
            return Err(ApiError::forbidden(policy_refusal(
                "update_port:mac_address",
            )));
        }
        parse_mac(&mac)
            .ok_or_else(|| invalid("mac_address", format!("'{mac}' is not a valid MAC address")))?;
        if mac.to_ascii_lowercase() != p.mac_address {
            check_mac_free(&tx, &p.network_id, &mac.to_ascii_lowercase())?;
            p.mac_address = mac.to_ascii_lowercase();
        }
    }
    if m.contains_key("fixed_ips") {
        let net = visible_network(&tx, cx.auth, &p.network_id)?;
        // Free the old addresses first so a request may keep them.
        let mut without = p.clone();
        without.fixed_ips.clear();
        store::update_port(&tx, &without)?;
        p.fixed_ips = allocate_ips(&tx, &net, m.get("fixed_ips"), &p.device_owner)?;
    }
    if let Some(b) = get_bool(m, "port_security_enabled")? {
        p.port_security = b;
    }
    if let Some(pairs) = parse_pairs(m, &p.mac_address)? {
        p.allowed_address_pairs = pairs;
    }
    if let Some(g) = parse_groups(&tx, cx, m)? {
        p.security_groups = g;
    }
    if !p.port_security {
        if !p.security_groups.is_empty() {
            return Err(ApiError::conflict(
                "Port has security group associated. Cannot disable port security or ip \
                 address until security group is removed",
            ));
        }
        if !p.allowed_address_pairs.is_empty() {
            return Err(ApiError::conflict(
                "Port Security must be enabled in order to have allowed address pairs on a port.",
            ));
        }
    }
    store::update_port(&tx, &p)?;
    tx.commit()?;
    Ok(p)
}

/// Deletes a port: router ports only through their router (409); a
/// floating IP on it is disassociated.
pub fn delete_port(conn: &Connection, cx: &Cx<'_>, id: &str) -> ApiResult<()> {
    let p = visible_port(conn, cx.auth, id)?;
    require_write(cx, &p.std.project_id, "delete_port")?;
    if p.device_owner == OWNER_ROUTER_INTERFACE
        || p.device_owner == OWNER_ROUTER_GATEWAY
        || p.device_owner == OWNER_FLOATINGIP
    {
        return Err(ApiError::conflict(format!(
            "Port {id} cannot be deleted directly via the port API: has device owner {}.",
            p.device_owner
        )));
    }
    let tx = conn.unchecked_transaction()?;
    remove_port(&tx, id)?;
    tx.commit()?;
    Ok(())
}

/// Removes a port, disassociating its floating IPs (no checks).
pub fn remove_port(conn: &Connection, id: &str) -> ApiResult<()> {
    for mut f in store::list_fips(conn)? {
        if f.port_id.as_deref() == Some(id) {
            f.port_id = None;
            f.fixed_ip_address = None;
            f.router_id = None;
            f.std.updated_at = now_iso();
            f.std.revision += 1;
            store::save_fip(conn, &f)?;
        }
    }
    store::delete_port(conn, id)?;
    Ok(())
}

/// Sets the status (`ACTIVE`, `DOWN`) of ports: what the agent wiring calls
/// when the data plane has (or lost) them.
pub fn set_port_status(conn: &Connection, ids: &[String], status: &str) -> ApiResult<()> {
    store::set_port_status(conn, ids, status)?;
    Ok(())
}

/// A server's ports, in NIC order, as the host plumbs them (for the
/// integrator: each becomes a TAP handed to the VMM).
pub fn server_ports(conn: &Connection, server_id: &str) -> rusqlite::Result<Vec<PortPlan>> {
    let ports = store::ports_of_device(conn, server_id)?;
    let mut out = Vec::new();
    for p in ports
        .iter()
        .filter(|p| p.device_owner.starts_with("compute:"))
    {
        out.push(super::plan::port_plan(conn, p)?);
    }
    Ok(out)
}

/// The MAC of a port as bytes (zeros if malformed, which the API never
/// stores).
pub fn mac_bytes(mac: &str) -> [u8; 6] {
    parse_mac(mac).unwrap_or([0; 6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NetworkConfig, VlanRange};
    use crate::db::Db;
    use serde_json::json;

    fn config(network: NetworkConfig) -> Config {
        Config {
            state_dir: "/nonexistent".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
            vmm_binary: "/nonexistent".into(),
            default_kernel: None,
            default_initrd: None,
            default_cmdline: String::new(),
            token_ttl: std::time::Duration::from_secs(1),
            max_image_size: 0,
            overcommit: Default::default(),
            quotas: Default::default(),
            shutdown_timeout: std::time::Duration::from_secs(1),
            admin_password: None,
            vmm_uid_base: None,
            network,
        }
    }

    fn auth(admin: bool) -> AuthContext {
        AuthContext {
            user_id: "u".into(),
            user_name: "u".into(),
            project_id: "p".into(),
            project_name: "p".into(),
            roles: vec![if admin { "admin" } else { "member" }.into()],
        }
    }

    fn create(conn: &Connection, cx: &Cx<'_>, body: Value) -> ApiResult<Network> {
        let m = body.as_object().unwrap().clone();
        let n = prepare_network(conn, cx, &m)?;
        store_network(conn, cx, &n)?;
        Ok(n)
    }

    #[test]
    fn tenant_vnis_are_the_lowest_free_and_run_out() {
        let db = Db::open_in_memory().unwrap();
        let conn = db.lock();
        let cfg = config(NetworkConfig {
            vni_range: (5, 6),
            ..Default::default()
        });
        let a = auth(false);
        let cx = Cx {
            auth: &a,
            cfg: &cfg,
            host: "h",
        };
        let n1 = create(&conn, &cx, json!({})).unwrap();
        let n2 = create(&conn, &cx, json!({})).unwrap();
        assert_eq!((n1.segmentation_id, n2.segmentation_id), (Some(5), Some(6)));
        let e = create(&conn, &cx, json!({})).unwrap_err();
        assert_eq!(e.status.as_u16(), 503);
        // A freed VNI is taken again.
        delete_network(&conn, &cx, &n1.std.id).unwrap();
        assert_eq!(
            create(&conn, &cx, json!({})).unwrap().segmentation_id,
            Some(5)
        );
    }

    #[test]
    fn admin_segments_must_be_free_and_tenant_vlans_come_from_the_range() {
        let db = Db::open_in_memory().unwrap();
        let conn = db.lock();
        let cfg = config(NetworkConfig {
            tenant_network_type: TenantNetworkType::Vlan,
            vlan_ranges: vec![VlanRange {
                physnet: "physnet1".into(),
                range: Some((100, 101)),
            }],
            ..Default::default()
        });
        let a = auth(true);
        let cx = Cx {
            auth: &a,
            cfg: &cfg,
            host: "h",
        };
        let t = create(&conn, &cx, json!({})).unwrap();
        assert_eq!(t.network_type, "vlan");
        assert_eq!(t.segmentation_id, Some(100));
        assert_eq!(t.mtu, 1500);
        // The admin takes 101 by hand: the next tenant network has none.
        let v = json!({ "provider:network_type": "vlan",
                        "provider:physical_network": "physnet1",
                        "provider:segmentation_id": 101 });
        create(&conn, &cx, v.clone()).unwrap();
        assert_eq!(create(&conn, &cx, v).unwrap_err().status.as_u16(), 409);
        assert_eq!(
            create(&conn, &cx, json!({})).unwrap_err().status.as_u16(),
            503
        );
        // The same VNI twice, and one flat network per physical network.
        let x = json!({ "provider:network_type": "vxlan", "provider:segmentation_id": 7 });
        create(&conn, &cx, x.clone()).unwrap();
        assert_eq!(create(&conn, &cx, x).unwrap_err().status.as_u16(), 409);
        let f = json!({ "provider:network_type": "flat", "provider:physical_network": "physnet1" });
        create(&conn, &cx, f.clone()).unwrap();
        assert_eq!(create(&conn, &cx, f).unwrap_err().status.as_u16(), 409);
        for bad in [
            json!({ "provider:network_type": "vlan", "provider:physical_network": "physnet1",
                    "provider:segmentation_id": 4095 }),
            json!({ "provider:network_type": "gre" }),
            json!({ "provider:network_type": "vxlan", "mtu": 1500 }),
            json!({ "provider:network_type": "flat" }),
        ] {
            assert_eq!(
                create(&conn, &cx, bad.clone()).unwrap_err().status.as_u16(),
                400,
                "{bad}"
            );
        }
    }
}
