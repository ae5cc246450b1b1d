//! `/v2.0/extensions` and `/v2.0` (the resource list).

use axum::extract::Path;
use axum::Json;
use serde_json::{json, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{BaseUrl, ProjectAuth};

/// The extensions this service implements: alias and name.
pub const EXTENSIONS: &[(&str, &str)] = &[
    ("external-net", "Neutron external network"),
    ("router", "Neutron L3 Router"),
    ("extraroute", "Neutron Extra Route"),
    ("extraroute-atomic", "Atomically add/remove extra routes"),
    (
        "ext-gw-mode",
        "Neutron L3 Configurable external gateway mode",
    ),
    ("provider", "Provider Network"),
    ("security-group", "security-group"),
    ("port-security", "Port Security"),
    ("allowed-address-pairs", "Allowed Address Pairs"),
    ("binding", "Port Binding"),
    ("quotas", "Quota management support"),
    ("quota_details", "Quota details management support"),
    ("net-mtu", "Network MTU"),
    ("net-mtu-writable", "Network MTU (writable)"),
    ("standard-attr-description", "standard-attr-description"),
    ("standard-attr-revisions", "Resource revision numbers"),
    ("standard-attr-timestamp", "Resource timestamps"),
    ("project-id", "project_id field enabled"),
    ("fip-port-details", "Floating IP Port Details Extension"),
];

fn ext_json(alias: &str, name: &str) -> Value {
    json!({ "alias": alias, "name": name, "description": name,
            "updated": "2013-01-01T00:00:00-00:00", "links": [] })
}

pub(crate) async fn list_extensions(ProjectAuth(_ctx): ProjectAuth) -> Json<Value> {
    let v: Vec<Value> = EXTENSIONS.iter().map(|(a, n)| ext_json(a, n)).collect();
    Json(json!({ "extensions": v }))
}

pub(crate) async fn show_extension(
    ProjectAuth(_ctx): ProjectAuth,
    Path(alias): Path<String>,
) -> ApiResult<Json<Value>> {
    EXTENSIONS
        .iter()
        .find(|(a, _)| *a == alias)
        .map(|(a, n)| Json(json!({ "extension": ext_json(a, n) })))
        .ok_or_else(|| ApiError::not_found(format!("Extension with alias {alias} does not exist")))
}

/// `GET /v2.0`: the resources.
pub(crate) async fn resources(BaseUrl(base): BaseUrl) -> Json<Value> {
    let v: Vec<Value> = [
        ("network", "networks"),
        ("subnet", "subnets"),
        ("port", "ports"),
        ("router", "routers"),
        ("floatingip", "floatingips"),
        ("security_group", "security-groups"),
        ("security_group_rule", "security-group-rules"),
        ("quota", "quotas"),
    ]
    .iter()
    .map(|(name, coll)| {
        json!({ "name": name, "collection": coll,
                "links": [{ "rel": "self", "href": format!("{base}/network/v2.0/{coll}") }] })
    })
    .collect();
    Json(json!({ "resources": v }))
}
