//! Routers and floating IPs (Neutron's `router`, `extraroute`,
//! `ext-gw-mode`): their rules over the store.

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use super::ipam;
use super::model::*;
use super::service::{
    allocate_ips, check_quota, policy_refusal, remove_port, subnet_cidr, visible_network,
    visible_port, visible_subnet, Cx,
};
use super::store;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
use crate::util::{new_id, now_iso};

/// The fields a router body may have.
pub const ROUTER_FIELDS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "external_gateway_info",
    "routes",
    "project_id",
    "tenant_id",
    "availability_zone_hints",
    "distributed",
    "ha",
    "flavor_id",
];

/// The fields a floating IP body may have.
pub const FIP_FIELDS: &[&str] = &[
    "floating_network_id",
    "port_id",
    "fixed_ip_address",
    "floating_ip_address",
    "description",
    "project_id",
    "tenant_id",
    "subnet_id",
    "dns_name",
    "dns_domain",
    "qos_policy_id",
];

fn str_of(m: &Map<String, Value>, k: &str) -> ApiResult<Option<String>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 255 && !crate::util::has_control_chars(s) => {
            Ok(Some(s.clone()))
        }
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for {k}. Reason: '{v}' is not a valid string."
        ))),
    }
}

fn bool_of(m: &Map<String, Value>, k: &str) -> ApiResult<Option<bool>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for {k}. Reason: '{v}' is not a valid boolean value."
        ))),
    }
}

fn owner(cx: &Cx<'_>, m: &Map<String, Value>, rule: &str) -> ApiResult<String> {
    crate::http::policy::require_member(cx.auth, &policy_refusal(rule))?;
    let asked = str_of(m, "project_id")?.or(str_of(m, "tenant_id")?);
    match asked {
        Some(p) if p != cx.auth.project_id && !cx.auth.is_admin() => {
            Err(ApiError::forbidden(policy_refusal(rule)))
        }
        Some(p) => Ok(p),
        None => Ok(cx.auth.project_id.clone()),
    }
}

fn require_write(cx: &Cx<'_>, project: &str, rule: &str) -> ApiResult<()> {
    crate::http::policy::require_member(cx.auth, &policy_refusal(rule))?;
    if crate::http::policy::owns_or_admin(cx.auth, project) {
        Ok(())
    } else {
        Err(ApiError::forbidden(policy_refusal(rule)))
    }
}

// ---------------------------------------------------------------- routers

/// Router `id` if the caller may see it, else 404.
pub fn visible_router(conn: &Connection, auth: &AuthContext, id: &str) -> ApiResult<Router> {
    match store::get_router(conn, id)? {
        Some(r) if auth.is_admin() || r.std.project_id == auth.project_id => Ok(r),
        _ => Err(ApiError::not_found(format!(
            "Router {id} could not be found."
        ))),
    }
}

/// Every router the caller sees.
pub fn list_routers(conn: &Connection, auth: &AuthContext) -> ApiResult<Vec<Router>> {
    Ok(store::list_routers(conn)?
        .into_iter()
        .filter(|r| auth.is_admin() || r.std.project_id == auth.project_id)
        .collect())
}

/// A router's JSON (with its gateway's fixed IPs).
pub fn router_json(conn: &Connection, r: &Router) -> ApiResult<Value> {
    let ips = match r.gw_port_id.as_deref() {
        Some(p) => store::get_port(conn, p)?
            .map(|p| p.fixed_ips)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(r.to_json(&ips))
}

/// Sets (or, with `null`/`{}`, clears) a router's gateway.
fn set_gateway(conn: &Connection, cx: &Cx<'_>, r: &mut Router, info: &Value) -> ApiResult<()> {
    let info = match info {
        Value::Null => None,
        Value::Object(o) if o.is_empty() => None,
        Value::Object(o) => Some(o),
        v => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for external_gateway_info. Reason: '{v}' is not a dictionary."
            )))
        }
    };
    let Some(info) = info else {
        if let Some(gw) = r.gw_port_id.take() {
            let net = r.gw_network_id.clone().unwrap_or_default();
            if store::list_fips(conn)?
                .iter()
                .any(|f| f.router_id.as_deref() == Some(r.std.id.as_str()))
            {
                return Err(ApiError::conflict(format!(
                    "Gateway cannot be updated for router {}, since a gateway to external \
                     network {net} is required by one or more floating IPs.",
                    r.std.id
                )));
            }
            remove_port(conn, &gw)?;
        }
        r.gw_network_id = None;
        return Ok(());
    };
    for k in info.keys() {
        if !["network_id", "enable_snat", "external_fixed_ips"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Unrecognized attribute(s) '{k}'"
            )));
        }
    }
    let net_id = str_of(info, "network_id")?.ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for external_gateway_info. Reason: network_id is required.",
        )
    })?;
    let net = visible_network(conn, cx.auth, &net_id)?;
    if !net.external {
        return Err(ApiError::bad_request(format!(
            "Bad router request: Network {net_id} is not a valid external network."
        )));
    }
    if let Some(s) = bool_of(info, "enable_snat")? {
        r.enable_snat = s;
    } else if r.gw_network_id.as_deref() != Some(net_id.as_str()) {
        r.enable_snat = true;
    }
    if r.gw_network_id.as_deref() == Some(net_id.as_str())
        && !info.contains_key("external_fixed_ips")
    {
        return Ok(());
    }
    if let Some(old) = r.gw_port_id.take() {
        remove_port(conn, &old)?;
    }
    let mut port = new_router_port(conn, &net, &r.std.project_id)?;
    port.device_owner = OWNER_ROUTER_GATEWAY.into();
    port.device_id = r.std.id.clone();
    port.host_id = cx.host.to_string();
    port.fixed_ips = allocate_ips(
        conn,
        &net,
        info.get("external_fixed_ips"),
        OWNER_ROUTER_GATEWAY,
    )?;
    store::insert_port(conn, &port)?;
    r.gw_port_id = Some(port.std.id);
    r.gw_network_id = Some(net_id);
    Ok(())
}

fn new_router_port(conn: &Connection, net: &Network, project: &str) -> ApiResult<Port> {
    let mut m = Map::new();
    m.insert("network_id".into(), json!(net.std.id));
    // A port without security groups or quota: built directly.
    let mut mac;
    loop {
        let b: [u8; 3] = rand::random();
        mac = format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]);
        if !store::mac_in_use(conn, &net.std.id, &mac)? {
            break;
        }
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
        port_security: false,
        host_id: String::new(),
        dns_name: String::new(),
        created_by_server: false,
        nic_index: 0,
        fixed_ips: Vec::new(),
        security_groups: Vec::new(),
        allowed_address_pairs: Vec::new(),
    })
}

fn parse_routes(conn: &Connection, r: &Router, v: &Value) -> ApiResult<Vec<RouteJson>> {
    let Value::Array(a) = v else {
        if v.is_null() {
            return Ok(Vec::new());
        }
        return Err(ApiError::bad_request(format!(
            "Invalid input for routes. Reason: '{v}' is not a list."
        )));
    };
    let connected: Vec<ipam::Pool> = Vec::new();
    let _ = connected;
    let mut cidrs = Vec::new();
    for p in store::ports_of_device(conn, &r.std.id)? {
        for f in &p.fixed_ips {
            if let Some(s) = store::get_subnet(conn, &f.subnet_id)? {
                cidrs.push(subnet_cidr(&s));
            }
        }
    }
    let mut out = Vec::new();
    for rt in a {
        let dest = rt.get("destination").and_then(Value::as_str).unwrap_or("");
        let hop = rt.get("nexthop").and_then(Value::as_str).unwrap_or("");
        let d = ipam::parse_cidr(dest, true).map_err(|e| {
            ApiError::bad_request(format!("Invalid input for routes. Reason: {e}."))
        })?;
        let h: std::net::Ipv4Addr = hop.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "Invalid input for routes. Reason: '{hop}' is not a valid IP address."
            ))
        })?;
        if !cidrs.iter().any(|c| ipam::contains(c, h)) {
            return Err(ApiError::bad_request(format!(
                "Invalid format for routes: {rt}, the nexthop is not connected with router"
            )));
        }
        out.push(RouteJson {
            destination: d.to_string(),
            nexthop: h.to_string(),
        });
    }
    Ok(out)
}

/// Creates a router, in one transaction.
pub fn create_router(conn: &Connection, cx: &Cx<'_>, m: &Map<String, Value>) -> ApiResult<Router> {
    let project = owner(cx, m, "create_router")?;
    let now = now_iso();
    let mut r = Router {
        std: Standard {
            id: new_id(),
            name: str_of(m, "name")?.unwrap_or_default(),
            description: str_of(m, "description")?.unwrap_or_default(),
            project_id: project,
            created_at: now.clone(),
            updated_at: now,
            revision: 1,
        },
        admin_state_up: bool_of(m, "admin_state_up")?.unwrap_or(true),
        gw_network_id: None,
        gw_port_id: None,
        enable_snat: true,
        routes: Vec::new(),
    };
    let tx = conn.unchecked_transaction()?;
    check_quota(&tx, cx.cfg, &r.std.project_id, "router", 1)?;
    store::save_router(&tx, &r)?;
    if let Some(info) = m.get("external_gateway_info") {
        set_gateway(&tx, cx, &mut r, info)?;
        store::save_router(&tx, &r)?;
    }
    if let Some(routes) = m.get("routes") {
        r.routes = parse_routes(&tx, &r, routes)?;
        store::save_router(&tx, &r)?;
    }
    tx.commit()?;
    Ok(r)
}

/// Updates a router (name, description, admin_state_up, gateway, routes).
pub fn update_router(
    conn: &Connection,
    cx: &Cx<'_>,
    id: &str,
    m: &Map<String, Value>,
) -> ApiResult<Router> {
    let mut r = visible_router(conn, cx.auth, id)?;
    require_write(cx, &r.std.project_id, "update_router")?;
    let tx = conn.unchecked_transaction()?;
    if let Some(n) = str_of(m, "name")? {
        r.std.name = n;
    }
    if let Some(d) = str_of(m, "description")? {
        r.std.description = d;
    }
    if let Some(b) = bool_of(m, "admin_state_up")? {
        r.admin_state_up = b;
    }
    if let Some(info) = m.get("external_gateway_info") {
        set_gateway(&tx, cx, &mut r, info)?;
    }
    if let Some(routes) = m.get("routes") {
        r.routes = parse_routes(&tx, &r, routes)?;
    }
    r.std.updated_at = now_iso();
    r.std.revision += 1;
    store::save_router(&tx, &r)?;
    tx.commit()?;
    Ok(r)
}

/// Deletes a router: 409 while it has interfaces; its gateway port goes.
pub fn delete_router(conn: &Connection, cx: &Cx<'_>, id: &str) -> ApiResult<()> {
    let r = visible_router(conn, cx.auth, id)?;
    require_write(cx, &r.std.project_id, "delete_router")?;
    let ports = store::ports_of_device(conn, id)?;
    if ports
        .iter()
        .any(|p| p.device_owner == OWNER_ROUTER_INTERFACE)
    {
        return Err(ApiError::conflict(format!("Router {id} still has ports")));
    }
    if store::list_fips(conn)?
        .iter()
        .any(|f| f.router_id.as_deref() == Some(id))
    {
        return Err(ApiError::conflict(format!(
            "Router {id} still has floating IPs associated through it"
        )));
    }
    let tx = conn.unchecked_transaction()?;
    for p in ports {
        remove_port(&tx, &p.std.id)?;
    }
    store::delete_router(&tx, id)?;
    tx.commit()?;
    Ok(())
}

fn interface_answer(r: &Router, p: &Port) -> Value {
    let subnet_ids: Vec<&str> = p.fixed_ips.iter().map(|f| f.subnet_id.as_str()).collect();
    json!({
        "id": r.std.id, "subnet_id": subnet_ids.first(), "subnet_ids": subnet_ids,
        "port_id": p.std.id, "network_id": p.network_id,
        "tenant_id": r.std.project_id, "project_id": r.std.project_id,
    })
}

/// `add_router_interface` by `subnet_id` (a new port with the subnet's
/// gateway) or `port_id` (an existing unbound port).
pub fn add_interface(conn: &Connection, cx: &Cx<'_>, id: &str, body: &Value) -> ApiResult<Value> {
    let r = visible_router(conn, cx.auth, id)?;
    require_write(cx, &r.std.project_id, "add_router_interface")?;
    let subnet_id = body.get("subnet_id").and_then(Value::as_str);
    let port_id = body.get("port_id").and_then(Value::as_str);
    let tx = conn.unchecked_transaction()?;
    let existing = store::ports_of_device(&tx, id)?;
    let port = match (subnet_id, port_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "Bad router request: Cannot specify both subnet-id and port-id",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "Bad router request: Either subnet_id or port_id must be specified",
            ))
        }
        (Some(sid), None) => {
            let s = visible_subnet(&tx, cx.auth, sid)?;
            let Some(gw) = s.gateway_ip.clone() else {
                return Err(ApiError::bad_request(format!(
                    "Bad router request: Subnet {sid} does not have a gateway IP."
                )));
            };
            if existing
                .iter()
                .any(|p| p.fixed_ips.iter().any(|f| f.subnet_id == sid))
            {
                return Err(ApiError::bad_request(format!(
                    "Bad router request: Router already has a port on subnet {sid}."
                )));
            }
            for p in &existing {
                if p.device_owner != OWNER_ROUTER_INTERFACE {
                    continue;
                }
                for f in &p.fixed_ips {
                    if let Some(o) = store::get_subnet(&tx, &f.subnet_id)? {
                        if ipam::overlaps(&subnet_cidr(&o), &subnet_cidr(&s)) {
                            return Err(ApiError::bad_request(format!(
                                "Bad router request: Cidr {} of subnet {sid} overlaps with \
                                 cidr {} of subnet {}.",
                                s.cidr, o.cidr, o.std.id
                            )));
                        }
                    }
                }
            }
            let net = visible_network(&tx, cx.auth, &s.network_id)?;
            let mut p = new_router_port(&tx, &net, &r.std.project_id)?;
            p.device_owner = OWNER_ROUTER_INTERFACE.into();
            p.device_id = r.std.id.clone();
            p.host_id = cx.host.to_string();
            p.fixed_ips = allocate_ips(
                &tx,
                &net,
                Some(&json!([{ "subnet_id": sid, "ip_address": gw }])),
                OWNER_ROUTER_INTERFACE,
            )?;
            store::insert_port(&tx, &p)?;
            p
        }
        (None, Some(pid)) => {
            let mut p = visible_port(&tx, cx.auth, pid)?;
            if !p.device_id.is_empty() || !p.device_owner.is_empty() {
                return Err(ApiError::conflict(format!("Port {pid} is still in use.")));
            }
            if p.fixed_ips.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "Bad router request: Router port must have at least one fixed IP (port {pid})."
                )));
            }
            p.device_owner = OWNER_ROUTER_INTERFACE.into();
            p.device_id = r.std.id.clone();
            p.host_id = cx.host.to_string();
            p.security_groups.clear();
            p.allowed_address_pairs.clear();
            p.port_security = false;
            p.std.revision += 1;
            store::update_port(&tx, &p)?;
            p
        }
    };
    tx.commit()?;
    Ok(interface_answer(&r, &port))
}

/// `remove_router_interface` by `subnet_id` or `port_id`; the port goes.
pub fn remove_interface(
    conn: &Connection,
    cx: &Cx<'_>,
    id: &str,
    body: &Value,
) -> ApiResult<Value> {
    let r = visible_router(conn, cx.auth, id)?;
    require_write(cx, &r.std.project_id, "remove_router_interface")?;
    let subnet_id = body.get("subnet_id").and_then(Value::as_str);
    let port_id = body.get("port_id").and_then(Value::as_str);
    let ports: Vec<Port> = store::ports_of_device(conn, id)?
        .into_iter()
        .filter(|p| p.device_owner == OWNER_ROUTER_INTERFACE)
        .collect();
    let port = match (subnet_id, port_id) {
        (_, Some(pid)) => ports.into_iter().find(|p| p.std.id == pid).ok_or_else(|| {
            ApiError::not_found(format!(
                "Router {id} does not have an interface with id {pid}"
            ))
        })?,
        (Some(sid), None) => ports
            .into_iter()
            .find(|p| p.fixed_ips.iter().any(|f| f.subnet_id == sid))
            .ok_or_else(|| {
                ApiError::not_found(format!("Router {id} has no interface on subnet {sid}"))
            })?,
        (None, None) => {
            return Err(ApiError::bad_request(
                "Bad router request: Either subnet_id or port_id must be specified",
            ))
        }
    };
    // Floating IPs reaching ports on this subnet through this router.
    let subnet_ids: Vec<String> = port.fixed_ips.iter().map(|f| f.subnet_id.clone()).collect();
    for f in store::list_fips(conn)? {
        if f.router_id.as_deref() != Some(id) {
            continue;
        }
        if let Some(pid) = &f.port_id {
            if let Some(fp) = store::get_port(conn, pid)? {
                if fp
                    .fixed_ips
                    .iter()
                    .any(|x| subnet_ids.contains(&x.subnet_id))
                {
                    return Err(ApiError::conflict(format!(
                        "Router interface for subnet {} on router {id} cannot be deleted, as \
                         it is required by one or more floating IPs.",
                        subnet_ids.first().cloned().unwrap_or_default()
                    )));
                }
            }
        }
    }
    let tx = conn.unchecked_transaction()?;
    remove_port(&tx, &port.std.id)?;
    tx.commit()?;
    Ok(interface_answer(&r, &port))
}

// ---------------------------------------------------------------- floating IPs

/// Floating IP `id` if the caller may see it, else 404.
pub fn visible_fip(conn: &Connection, auth: &AuthContext, id: &str) -> ApiResult<FloatingIp> {
    match store::get_fip(conn, id)? {
        Some(f) if auth.is_admin() || f.std.project_id == auth.project_id => Ok(f),
        _ => Err(ApiError::not_found(format!(
            "Floating IP {id} could not be found"
        ))),
    }
}

/// Every floating IP the caller sees.
pub fn list_fips(conn: &Connection, auth: &AuthContext) -> ApiResult<Vec<FloatingIp>> {
    Ok(store::list_fips(conn)?
        .into_iter()
        .filter(|f| auth.is_admin() || f.std.project_id == auth.project_id)
        .collect())
}

/// A floating IP's JSON (with its port's details).
pub fn fip_json(conn: &Connection, f: &FloatingIp) -> ApiResult<Value> {
    let port = match &f.port_id {
        Some(p) => store::get_port(conn, p)?,
        None => None,
    };
    Ok(f.to_json(port.as_ref()))
}

/// Associates `f` with `port_id` (and `fixed_ip`), finding the router that
/// reaches the port's subnet from the floating network; `None`
/// disassociates.
fn associate(
    conn: &Connection,
    cx: &Cx<'_>,
    f: &mut FloatingIp,
    port_id: Option<&str>,
    fixed_ip: Option<&str>,
) -> ApiResult<()> {
    let Some(pid) = port_id else {
        f.port_id = None;
        f.fixed_ip_address = None;
        f.router_id = None;
        return Ok(());
    };
    let p = visible_port(conn, cx.auth, pid)?;
    let fixed = match fixed_ip {
        Some(ip) => p
            .fixed_ips
            .iter()
            .find(|x| x.ip_address == ip)
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Bad floatingip request: Port {pid} does not have fixed ip {ip}."
                ))
            })?,
        None => p.fixed_ips.first().cloned().ok_or_else(|| {
            ApiError::bad_request(format!(
                "Bad floatingip request: Cannot add floating IP to port {pid} that has no \
                 fixed IPv4 addresses."
            ))
        })?,
    };
    for other in store::list_fips(conn)? {
        if other.std.id != f.std.id
            && other.port_id.as_deref() == Some(pid)
            && other.fixed_ip_address.as_deref() == Some(fixed.ip_address.as_str())
        {
            return Err(ApiError::conflict(format!(
                "Cannot associate floating IP {} ({}) with port {pid} using fixed IP {}, as \
                 that fixed IP already has a floating IP on external network {}.",
                f.floating_ip_address, f.std.id, fixed.ip_address, other.floating_network_id
            )));
        }
    }
    let router = store::list_routers(conn)?.into_iter().find(|r| {
        r.gw_network_id.as_deref() == Some(f.floating_network_id.as_str())
            && store::ports_of_device(conn, &r.std.id)
                .unwrap_or_default()
                .iter()
                .any(|rp| {
                    rp.device_owner == OWNER_ROUTER_INTERFACE
                        && rp.fixed_ips.iter().any(|x| x.subnet_id == fixed.subnet_id)
                })
    });
    let Some(router) = router else {
        return Err(ApiError::not_found(format!(
            "External network {} is not reachable from subnet {}.  Therefore, cannot \
             associate Port {pid} with a Floating IP.",
            f.floating_network_id, fixed.subnet_id
        )));
    };
    f.port_id = Some(pid.to_string());
    f.fixed_ip_address = Some(fixed.ip_address);
    f.router_id = Some(router.std.id);
    Ok(())
}

/// Creates a floating IP (an address held by a `network:floatingip` port on
/// the external network), associated if `port_id` is given.
pub fn create_fip(conn: &Connection, cx: &Cx<'_>, m: &Map<String, Value>) -> ApiResult<FloatingIp> {
    let project = owner(cx, m, "create_floatingip")?;
    let net_id = str_of(m, "floating_network_id")?
        .ok_or_else(|| ApiError::bad_request("Invalid input: floating_network_id is required"))?;
    let net = visible_network(conn, cx.auth, &net_id)?;
    if !net.external {
        return Err(ApiError::bad_request(format!(
            "Bad floatingip request: Network {net_id} is not a valid external network."
        )));
    }
    let tx = conn.unchecked_transaction()?;
    check_quota(&tx, cx.cfg, &project, "floatingip", 1)?;
    let mut req = Map::new();
    if let Some(a) = str_of(m, "floating_ip_address")? {
        req.insert("ip_address".into(), json!(a));
    }
    if let Some(s) = str_of(m, "subnet_id")? {
        req.insert("subnet_id".into(), json!(s));
    }
    let requests = if req.is_empty() {
        None
    } else {
        Some(Value::Array(vec![Value::Object(req)]))
    };
    let fid = new_id();
    let mut port = new_router_port(&tx, &net, "")?;
    port.device_owner = OWNER_FLOATINGIP.into();
    port.device_id = fid.clone();
    port.fixed_ips = allocate_ips(&tx, &net, requests.as_ref(), OWNER_FLOATINGIP)?;
    let Some(addr) = port.fixed_ips.first().map(|f| f.ip_address.clone()) else {
        return Err(ApiError::bad_request(format!(
            "Bad floatingip request: external network {net_id} has no subnet."
        )));
    };
    store::insert_port(&tx, &port)?;
    let now = now_iso();
    let mut f = FloatingIp {
        std: Standard {
            id: fid,
            name: String::new(),
            description: str_of(m, "description")?.unwrap_or_default(),
            project_id: project,
            created_at: now.clone(),
            updated_at: now,
            revision: 1,
        },
        floating_network_id: net_id,
        floating_ip_address: addr,
        floating_port_id: port.std.id,
        port_id: None,
        fixed_ip_address: None,
        router_id: None,
    };
    if let Some(pid) = str_of(m, "port_id")? {
        let fixed = str_of(m, "fixed_ip_address")?;
        associate(&tx, cx, &mut f, Some(&pid), fixed.as_deref())?;
    }
    store::save_fip(&tx, &f)?;
    tx.commit()?;
    Ok(f)
}

/// Updates a floating IP: `port_id` (null disassociates),
/// `fixed_ip_address`, `description`.
pub fn update_fip(
    conn: &Connection,
    cx: &Cx<'_>,
    id: &str,
    m: &Map<String, Value>,
) -> ApiResult<FloatingIp> {
    let mut f = visible_fip(conn, cx.auth, id)?;
    require_write(cx, &f.std.project_id, "update_floatingip")?;
    if let Some(d) = str_of(m, "description")? {
        f.std.description = d;
    }
    if m.contains_key("port_id") {
        let pid = str_of(m, "port_id")?;
        let fixed = str_of(m, "fixed_ip_address")?;
        associate(conn, cx, &mut f, pid.as_deref(), fixed.as_deref())?;
    }
    f.std.updated_at = now_iso();
    f.std.revision += 1;
    store::save_fip(conn, &f)?;
    Ok(f)
}

/// Deletes a floating IP and its port.
pub fn delete_fip(conn: &Connection, cx: &Cx<'_>, id: &str) -> ApiResult<()> {
    let f = visible_fip(conn, cx.auth, id)?;
    require_write(cx, &f.std.project_id, "delete_floatingip")?;
    let tx = conn.unchecked_transaction()?;
    store::delete_fip(&tx, id)?;
    store::delete_port(&tx, &f.floating_port_id)?;
    tx.commit()?;
    Ok(())
}
