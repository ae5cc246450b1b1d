//! Routers: gateways on external networks (with SNAT), interfaces by subnet
//! or port, extra routes.

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use super::ipam;
use super::l3::*;
use super::model::*;
use super::service::{
    allocate_ips, check_quota, remove_port, subnet_cidr, visible_network, visible_port,
    visible_subnet, Cx,
};
use super::store;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
use crate::util::{new_id, now_iso};
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

fn parse_routes(conn: &Connection, r: &Router, v: &Value) -> ApiResult<Vec<RouteJson>> {
    let Value::Array(a) = v else {
        if v.is_null() {
            return Ok(Vec::new());
        }
        return Err(ApiError::bad_request(format!(
            "Invalid input for routes. Reason: '{v}' is not a list."
        )));
    };
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

/// `add_extraroutes` / `remove_extraroutes` (Neutron's `extraroute-atomic`):
/// adds or removes the body's `{"router": {"routes": [...]}}` to or from
/// the router's routes, atomically; answers the router.
pub fn change_extraroutes(
    conn: &Connection,
    cx: &Cx<'_>,
    id: &str,
    body: &Value,
    add: bool,
) -> ApiResult<Router> {
    let mut r = visible_router(conn, cx.auth, id)?;
    require_write(cx, &r.std.project_id, "update_router")?;
    let routes = body
        .get("router")
        .and_then(|b| b.get("routes"))
        .ok_or_else(|| {
            ApiError::bad_request(
                "Bad router request: the body must be {\"router\": {\"routes\": [...]}}",
            )
        })?;
    let tx = conn.unchecked_transaction()?;
    let asked = parse_routes(&tx, &r, routes)?;
    if add {
        for rt in asked {
            if !r.routes.contains(&rt) {
                r.routes.push(rt);
            }
        }
    } else {
        r.routes.retain(|rt| !asked.contains(rt));
    }
    r.std.updated_at = now_iso();
    r.std.revision += 1;
    store::save_router(&tx, &r)?;
    tx.commit()?;
    Ok(r)
}
