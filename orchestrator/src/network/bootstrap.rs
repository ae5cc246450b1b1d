//! The one-host external network (`--external-network CIDR`): at start, a
//! flat `router:external` network `public` of the admin project on the
//! `external` physnet, with one subnet whose gateway is this host (the
//! CIDR's first address) and whose pool leaves the low addresses (up to .99
//! of a /24) to hosts the operator puts there. Created through the same
//! rules as `openstack network create --external` and `subnet create`, and
//! only when no `public` network exists.

use std::net::Ipv4Addr;

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::host::net::agent::EXTERNAL_PHYSNET;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::model::AuthContext;

use super::service::{self, Cx};
use super::store;

/// The external network's name.
pub const PUBLIC_NETWORK: &str = "public";

/// Creates `public` unless it exists; returns its id.
pub fn ensure_public_network(
    conn: &Connection,
    cfg: &Config,
    host: &str,
    cidr: netstack::Ipv4Net,
) -> ApiResult<String> {
    if let Some(id) = store::network_id_by_name(conn, PUBLIC_NETWORK)? {
        return Ok(id);
    }
    let admin_project = crate::identity::service::admin_project_id(conn)?
        .ok_or_else(|| ApiError::internal("the admin project does not exist"))?;
    let auth = AuthContext {
        user_id: "nubo".into(),
        user_name: "nubo".into(),
        project_id: admin_project.clone(),
        project_name: "admin".into(),
        roles: vec!["admin".into(), "member".into(), "reader".into()],
    };
    let cx = Cx {
        auth: &auth,
        cfg,
        host,
    };
    let obj = |v: Value| -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    };
    let mut net = service::prepare_network(
        conn,
        &cx,
        &obj(json!({
            "name": PUBLIC_NETWORK,
            "router:external": true,
            "provider:network_type": "flat",
            "provider:physical_network": EXTERNAL_PHYSNET,
        })),
    )?;
    service::store_network(conn, &cx, &mut net)?;
    let network = cidr.network();
    let size = 1u64 << (32 - u32::from(cidr.prefix_len.min(32)));
    let base = u32::from(network);
    let at = |off: u64| Ipv4Addr::from(base.wrapping_add(u32::try_from(off).unwrap_or(0)));
    let gateway = at(1);
    // The pool: from the 100th address (or the 2nd on a small network) to
    // the last host.
    let first = if size > 200 { 100 } else { 2 };
    let pools =
        json!([{ "start": at(first).to_string(), "end": at(size.saturating_sub(2)).to_string() }]);
    service::create_subnet(
        conn,
        &cx,
        &obj(json!({
            "name": format!("{PUBLIC_NETWORK}-subnet"),
            "network_id": net.std.id,
            "ip_version": 4,
            "cidr": format!("{network}/{}", cidr.prefix_len),
            "gateway_ip": gateway.to_string(),
            "enable_dhcp": false,
            "allocation_pools": pools,
        })),
    )?;
    tracing::info!(network = %net.std.id, %cidr, "created the external network public");
    Ok(net.std.id)
}
