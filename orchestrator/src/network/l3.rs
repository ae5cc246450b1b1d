//! Routers and floating IPs (Neutron's `router`, `extraroute`,
//! `ext-gw-mode`): their rules over the store.

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::model::*;
use super::service::{policy_refusal, Cx};
use crate::http::error::{ApiError, ApiResult};

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

pub(crate) fn str_of(m: &Map<String, Value>, k: &str) -> ApiResult<Option<String>> {
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

pub(crate) fn bool_of(m: &Map<String, Value>, k: &str) -> ApiResult<Option<bool>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for {k}. Reason: '{v}' is not a valid boolean value."
        ))),
    }
}

pub(crate) fn owner(cx: &Cx<'_>, m: &Map<String, Value>, rule: &str) -> ApiResult<String> {
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

pub(crate) fn require_write(cx: &Cx<'_>, project: &str, rule: &str) -> ApiResult<()> {
    crate::http::policy::require_member(cx.auth, &policy_refusal(rule))?;
    if crate::http::policy::owns_or_admin(cx.auth, project) {
        Ok(())
    } else {
        Err(ApiError::forbidden(policy_refusal(rule)))
    }
}

/// A port of the network itself (router legs, floating IP holders): no
/// security groups, no quota.
pub(crate) fn new_router_port(conn: &Connection, net: &Network, project: &str) -> ApiResult<Port> {
    let mut p = super::service::blank_port(net, project, conn)?;
    p.port_security = false;
    Ok(p)
}

pub use super::floating_ips::*;
pub use super::routers::*;
