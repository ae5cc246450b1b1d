//! Ports: MACs, fixed IPs from the subnets' pools, security groups,
//! allowed address pairs, binding and status.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::ipam;
use super::model::*;
use super::service::*;
use super::store;
use crate::host::net::plan::PortPlan;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
use crate::util::{new_id, now_iso};
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

pub(crate) fn random_mac() -> String {
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
pub(crate) fn blank_port(net: &Network, project: &str, conn: &Connection) -> ApiResult<Port> {
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
pub(crate) fn allocate_on_subnet(
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
                    (None, None) => {
                        return Err(invalid(
                            "fixed_ips",
                            "each entry needs a subnet_id or an ip_address",
                        ))
                    }
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
        // A unicast, non-zero MAC.
        parse_mac(&mac)
            .filter(|b| b[0] & 1 == 0 && *b != [0; 6])
            .ok_or_else(|| invalid("mac_address", format!("'{mac}' is not a valid MAC address")))?;
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
    if m.get("extra_dhcp_opts")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(ApiError::bad_request(
            "Invalid input for extra_dhcp_opts. Reason: extra DHCP options are not supported \
             by this cloud.",
        ));
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
