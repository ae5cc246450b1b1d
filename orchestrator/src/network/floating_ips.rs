//! Floating IPs: an address of an external network, held by a
//! `network:floatingip` port, NATed 1:1 to a port's fixed IP by the router
//! that reaches it.

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use super::l3::*;
use super::model::*;
use super::service::{allocate_ips, check_quota, visible_network, visible_port, Cx};
use super::store;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
use crate::util::{new_id, now_iso};
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
