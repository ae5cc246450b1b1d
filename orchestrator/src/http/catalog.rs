//! The one list of services this daemon serves. The router
//! ([`super::router`]), the root document (`GET /`), the catalog every token
//! carries and Identity's service/endpoint views are all built from
//! [`SERVICES`], so adding a service is one entry here (and the one `match`
//! arm in [`super::router`] the compiler then asks for).

use axum::Json;
use serde_json::{json, Value};

use super::error::ErrorStyle;
use super::extract::BaseUrl;

/// Which service an entry of [`SERVICES`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// Keystone's Identity v3.
    Identity,
    /// Nova's Compute v2.1.
    Compute,
    /// Glance's Image v2.
    Image,
    /// Neutron's Networking v2.0.
    Network,
    /// Cinder's Block Storage v3.
    Volume,
}

/// One OpenStack service: where it is mounted and how it is listed.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Which service.
    pub kind: ServiceKind,
    /// The catalog `type` (`identity`, `compute`, `image`).
    pub catalog_type: &'static str,
    /// The catalog `name`, also the service's id (`keystone`, `nova`, `glance`).
    pub name: &'static str,
    /// The path prefix its routes are nested under (`/identity`).
    pub prefix: &'static str,
    /// The endpoint path clients are given (`/identity/v3`); `{project_id}`
    /// in it is the token's project.
    pub endpoint: &'static str,
    /// More catalog types the same endpoint is listed under (Cinder's
    /// `volumev3` next to `block-storage`).
    pub alias_types: &'static [&'static str],
    /// How its errors are shaped.
    pub style: ErrorStyle,
}

/// Every service, in catalog order.
pub const SERVICES: [Service; 5] = [
    Service {
        kind: ServiceKind::Identity,
        catalog_type: "identity",
        name: "keystone",
        prefix: "/identity",
        endpoint: "/identity/v3",
        alias_types: &[],
        style: ErrorStyle::Identity,
    },
    Service {
        kind: ServiceKind::Compute,
        catalog_type: "compute",
        name: "nova",
        prefix: "/compute",
        endpoint: "/compute/v2.1",
        alias_types: &[],
        style: ErrorStyle::Compute,
    },
    Service {
        kind: ServiceKind::Image,
        catalog_type: "image",
        name: "glance",
        prefix: "/image",
        endpoint: "/image",
        alias_types: &[],
        style: ErrorStyle::Image,
    },
    Service {
        kind: ServiceKind::Network,
        catalog_type: "network",
        name: "neutron",
        prefix: "/network",
        endpoint: "/network",
        alias_types: &[],
        style: ErrorStyle::Network,
    },
    Service {
        kind: ServiceKind::Volume,
        catalog_type: "block-storage",
        name: "cinderv3",
        prefix: "/volume",
        endpoint: "/volume/v3/{project_id}",
        alias_types: &["volumev3"],
        style: ErrorStyle::Volume,
    },
];

/// A service's endpoint path with `project` in place of `{project_id}`.
fn endpoint_path(s: &Service, project: &str) -> String {
    s.endpoint.replace("{project_id}", project)
}

/// `GET /`: where each service lives.
pub async fn root(BaseUrl(base): BaseUrl) -> Json<Value> {
    let services: serde_json::Map<String, Value> = SERVICES
        .iter()
        .map(|s| {
            (
                s.catalog_type.to_string(),
                json!(format!(
                    "{base}{}",
                    s.endpoint.trim_end_matches("/{project_id}")
                )),
            )
        })
        .collect();
    Json(json!({ "name": "nubo", "services": services }))
}

/// The service catalog carried in every token. `project` is the token's
/// project (in the Block Storage URL); `None` leaves Keystone's template
/// `%(project_id)s` there (Identity's endpoint views).
pub fn catalog(base: &str, project: Option<&str>) -> Value {
    let project = project.unwrap_or("%(project_id)s");
    let entry = |s: &Service, ty: &str, id: String| {
        let url = format!("{base}{}", endpoint_path(s, project));
        let endpoints: Vec<Value> = ["public", "internal", "admin"]
            .iter()
            .map(|iface| {
                json!({
                    "id": format!("{id}-{iface}"),
                    "interface": iface,
                    "region": "RegionOne",
                    "region_id": "RegionOne",
                    "url": url,
                })
            })
            .collect();
        json!({ "id": id, "type": ty, "name": s.name, "endpoints": endpoints })
    };
    let mut out = Vec::new();
    for s in &SERVICES {
        out.push(entry(s, s.catalog_type, s.name.to_string()));
        for ty in s.alias_types {
            out.push(entry(s, ty, format!("{}-{ty}", s.name)));
        }
    }
    Value::Array(out)
}
