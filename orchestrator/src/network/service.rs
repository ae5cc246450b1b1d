//! The Networking service's rules: visibility, validation of request
//! bodies, segment allocation, IPAM over the store, the DHCP port, quotas;
//! and what the service answers the others (compute's NICs).
//!
//! Functions taking `&Connection` never open a transaction themselves
//! unless their name says so: callers wrap a request in one.

use std::net::Ipv4Addr;

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::model::*;
use super::store;
use crate::config::Config;
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;
use crate::quota;
use crate::util::{new_id, now_iso};

pub use super::networks::*;
pub use super::nics::{
    check_nics, create_server_ports, release_server_ports, server_addresses, server_interfaces,
    NicRequest, NicsAsked,
};
pub use super::ports::*;
pub use super::subnets::*;

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
    /// Whether the caller is an admin.
    pub fn admin(&self) -> bool {
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

pub(crate) fn invalid(field: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Invalid input for {field}. Reason: {reason}."))
}

pub(crate) fn get_str(m: &Map<String, Value>, k: &str) -> ApiResult<Option<String>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 255 && !crate::util::has_control_chars(s) => {
            Ok(Some(s.clone()))
        }
        Some(Value::String(_)) => Err(invalid(k, "too long or has control characters")),
        Some(v) => Err(invalid(k, format!("'{v}' is not a valid string"))),
    }
}

pub(crate) fn get_bool(m: &Map<String, Value>, k: &str) -> ApiResult<Option<bool>> {
    match m.get(k) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(invalid(k, format!("'{v}' is not a valid boolean value"))),
    }
}

pub(crate) fn get_int(m: &Map<String, Value>, k: &str) -> ApiResult<Option<i64>> {
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

pub(crate) fn get_ip(field: &str, v: &Value) -> ApiResult<Ipv4Addr> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(field, format!("'{v}' is not a valid IPv4 address")))
}

/// The project a new resource belongs to: the caller's, or (admins only)
/// the body's `project_id`/`tenant_id`.
pub(crate) fn owner_project(cx: &Cx<'_>, m: &Map<String, Value>) -> ApiResult<String> {
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

pub(crate) fn new_standard(m: &Map<String, Value>, project: String) -> ApiResult<Standard> {
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

pub(crate) fn touch(s: &mut Standard, m: &Map<String, Value>) -> ApiResult<()> {
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
pub(crate) fn require_write(cx: &Cx<'_>, project: &str, rule: &str) -> ApiResult<()> {
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
