//! What the Networking service answers Compute about servers' NICs: which
//! networks or ports a server may get (Nova's `networks`), creating and
//! releasing its ports, its `addresses`, its `os-interface` attachments.
//! Re-exported by [`super::service`], through which Compute asks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use rusqlite::Connection;
use serde_json::{json, Map, Value};

use super::model::*;
use super::service::{insert_port_from, remove_port, Cx};
use super::store;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
use crate::util::now_iso;

/// One NIC a server asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicRequest {
    /// A new port on this network (with this address, if given).
    Network {
        /// The network's id.
        id: String,
        /// `fixed_ip`.
        fixed_ip: Option<Ipv4Addr>,
    },
    /// An existing, unbound port.
    Port(String),
}

/// What a server create asks for (Nova's `networks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicsAsked {
    /// `"none"` or `[]`: no NIC.
    None,
    /// `"auto"`: the project's only usable network.
    Auto,
    /// No `networks` at all (microversion 2.1): the only usable network if
    /// there is exactly one, else no NIC.
    Unspecified,
    /// The listed NICs, in order.
    List(Vec<NicRequest>),
}

/// The networks a project may boot on: its own and shared ones, not
/// external.
fn usable_networks(conn: &Connection, auth: &AuthContext) -> ApiResult<Vec<Network>> {
    Ok(store::list_networks(conn)?
        .into_iter()
        .filter(|n| !n.external && (n.std.project_id == auth.project_id || n.shared))
        .collect())
}

/// Checks the NICs a server create asks for (before anything is stored) and
/// resolves `auto`; Nova's statuses and words: 400 for a network or port
/// that cannot be found or a fixed IP with `max_count > 1`, 409 for a port
/// in use or an ambiguous `auto`.
pub fn check_nics(
    conn: &Connection,
    auth: &AuthContext,
    asked: &NicsAsked,
    max_count: i64,
) -> ApiResult<Vec<NicRequest>> {
    let list = match asked {
        NicsAsked::None => return Ok(Vec::new()),
        NicsAsked::Unspecified => {
            let nets = usable_networks(conn, auth)?;
            return Ok(match nets.as_slice() {
                [only] => vec![NicRequest::Network {
                    id: only.std.id.clone(),
                    fixed_ip: None,
                }],
                _ => Vec::new(),
            });
        }
        NicsAsked::Auto => {
            let nets = usable_networks(conn, auth)?;
            return match nets.as_slice() {
                [] => Err(ApiError::bad_request(format!(
                    "Unable to automatically allocate a network for project {}",
                    auth.project_id
                ))),
                [only] => Ok(vec![NicRequest::Network {
                    id: only.std.id.clone(),
                    fixed_ip: None,
                }]),
                _ => Err(ApiError::conflict(
                    "Multiple possible networks found, use a Network ID to be more specific.",
                )),
            };
        }
        NicsAsked::List(list) => list,
    };
    let mut seen_ports = Vec::new();
    for nic in list {
        match nic {
            NicRequest::Network { id, fixed_ip } => {
                let visible = store::get_network(conn, id)?.is_some_and(|n| {
                    auth.is_admin() || n.std.project_id == auth.project_id || n.shared
                });
                if !visible {
                    return Err(ApiError::bad_request(format!(
                        "Network {id} could not be found."
                    )));
                }
                if fixed_ip.is_some() && max_count > 1 {
                    return Err(ApiError::bad_request(
                        "Failed to launch instances: max_count cannot be greater than 1 if \
                         an fixed_ip is specified.",
                    ));
                }
            }
            NicRequest::Port(pid) => {
                let p = store::get_port(conn, pid)?
                    .filter(|p| auth.is_admin() || p.std.project_id == auth.project_id)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("Port id {pid} could not be found."))
                    })?;
                if !p.device_id.is_empty() || seen_ports.contains(pid) {
                    return Err(ApiError::conflict(format!("Port {pid} is still in use.")));
                }
                if max_count > 1 {
                    return Err(ApiError::bad_request(
                        "Failed to launch instances: max_count cannot be greater than 1 if \
                         a port is specified.",
                    ));
                }
                seen_ports.push(pid.clone());
            }
        }
    }
    Ok(list.clone())
}

/// Creates (or binds) a server's ports, in NIC order, in the caller's
/// transaction: new ports are `compute:nova` ports of the server bound to
/// this host and remembered as the server's own; given ports are bound.
pub fn create_server_ports(
    conn: &Connection,
    cx: &Cx<'_>,
    server_id: &str,
    project_id: &str,
    nics: &[NicRequest],
) -> ApiResult<()> {
    for (i, nic) in nics.iter().enumerate() {
        match nic {
            NicRequest::Network { id, fixed_ip } => {
                let mut m = Map::new();
                m.insert("network_id".into(), json!(id));
                m.insert("project_id".into(), json!(project_id));
                if let Some(ip) = fixed_ip {
                    m.insert(
                        "fixed_ips".into(),
                        json!([{ "ip_address": ip.to_string() }]),
                    );
                }
                let host = cx.host.to_string();
                let sid = server_id.to_string();
                let fill = move |p: &mut Port| {
                    p.device_id = sid.clone();
                    p.device_owner = OWNER_COMPUTE.into();
                    p.host_id = host.clone();
                    p.created_by_server = true;
                    p.nic_index = i as i64;
                };
                insert_port_from(conn, cx, &m, Some(&fill))?;
            }
            NicRequest::Port(pid) => {
                let mut p = store::get_port(conn, pid)?.ok_or_else(|| {
                    ApiError::bad_request(format!("Port id {pid} could not be found."))
                })?;
                if !p.device_id.is_empty() {
                    return Err(ApiError::conflict(format!("Port {pid} is still in use.")));
                }
                p.device_id = server_id.to_string();
                p.device_owner = OWNER_COMPUTE.into();
                p.host_id = cx.host.to_string();
                p.created_by_server = false;
                p.nic_index = i as i64;
                p.std.updated_at = now_iso();
                p.std.revision += 1;
                store::update_port(conn, &p)?;
            }
        }
    }
    Ok(())
}

/// After a server is deleted: deletes the ports it created, unbinds the
/// ones it was given (device_id, device_owner, binding:host_id cleared).
pub fn release_server_ports(conn: &Connection, server_id: &str) -> ApiResult<()> {
    for mut p in store::ports_of_device(conn, server_id)? {
        if !p.device_owner.starts_with("compute:") {
            continue;
        }
        if p.created_by_server {
            remove_port(conn, &p.std.id)?;
        } else {
            p.device_id.clear();
            p.device_owner.clear();
            p.host_id.clear();
            p.status = "DOWN".into();
            p.nic_index = 0;
            p.std.updated_at = now_iso();
            p.std.revision += 1;
            store::update_port(conn, &p)?;
        }
    }
    Ok(())
}

/// A server's `addresses`: network name → its fixed IPs (and floating IPs
/// associated with them), in NIC order.
pub fn server_addresses(conn: &Connection, server_id: &str) -> rusqlite::Result<Value> {
    let ports = store::ports_of_device(conn, server_id)?;
    if ports.is_empty() {
        return Ok(json!({}));
    }
    let fips = store::list_fips(conn)?;
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in ports
        .iter()
        .filter(|p| p.device_owner.starts_with("compute:"))
    {
        let name = match store::get_network(conn, &p.network_id)? {
            Some(n) if !n.std.name.is_empty() => n.std.name,
            _ => p.network_id.clone(),
        };
        let entry = out.entry(name).or_default();
        for f in &p.fixed_ips {
            entry.push(json!({ "version": 4, "addr": f.ip_address,
                "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": p.mac_address }));
            for fip in fips.iter().filter(|x| {
                x.port_id.as_deref() == Some(p.std.id.as_str())
                    && x.fixed_ip_address.as_deref() == Some(f.ip_address.as_str())
            }) {
                entry.push(json!({ "version": 4, "addr": fip.floating_ip_address,
                    "OS-EXT-IPS:type": "floating", "OS-EXT-IPS-MAC:mac_addr": p.mac_address }));
            }
        }
    }
    Ok(serde_json::to_value(out).unwrap_or_else(|_| json!({})))
}

/// A server's `os-interface` attachments, in NIC order.
pub fn server_interfaces(conn: &Connection, server_id: &str) -> rusqlite::Result<Vec<Value>> {
    Ok(store::ports_of_device(conn, server_id)?
        .iter()
        .filter(|p| p.device_owner.starts_with("compute:"))
        .map(|p| {
            json!({ "port_id": p.std.id, "net_id": p.network_id, "mac_addr": p.mac_address,
                    "port_state": p.status, "fixed_ips": p.fixed_ips })
        })
        .collect())
}
