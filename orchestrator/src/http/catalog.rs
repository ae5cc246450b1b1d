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
    /// The endpoint path clients are given (`/identity/v3`).
    pub endpoint: &'static str,
    /// How its errors are shaped.
    pub style: ErrorStyle,
}

/// Every service, in catalog order.
pub const SERVICES: [Service; 4] = [
    Service {
        kind: ServiceKind::Identity,
        catalog_type: "identity",
        name: "keystone",
        prefix: "/identity",
        endpoint: "/identity/v3",
        style: ErrorStyle::Identity,
    },
    Service {
        kind: ServiceKind::Compute,
        catalog_type: "compute",
        name: "nova",
        prefix: "/compute",
        endpoint: "/compute/v2.1",
        style: ErrorStyle::Compute,
    },
    Service {
        kind: ServiceKind::Image,
        catalog_type: "image",
        name: "glance",
        prefix: "/image",
        endpoint: "/image",
        style: ErrorStyle::Image,
    },
    Service {
        kind: ServiceKind::Network,
        catalog_type: "network",
        name: "neutron",
        prefix: "/network",
        endpoint: "/network",
        style: ErrorStyle::Network,
    },
];

/// `GET /`: where each service lives.
pub async fn root(BaseUrl(base): BaseUrl) -> Json<Value> {
    let services: serde_json::Map<String, Value> = SERVICES
        .iter()
        .map(|s| {
            (
                s.catalog_type.to_string(),
                json!(format!("{base}{}", s.endpoint)),
            )
        })
        .collect();
    Json(json!({ "name": "nubo", "services": services }))
}

/// The service catalog carried in every token.
pub fn catalog(base: &str) -> Value {
    let entry = |s: &Service| {
        let url = format!("{base}{}", s.endpoint);
        let endpoints: Vec<Value> = ["public", "internal", "admin"]
            .iter()
            .map(|iface| {
                json!({
                    "id": format!("{}-{iface}", s.name),
                    "interface": iface,
                    "region": "RegionOne",
                    "region_id": "RegionOne",
                    "url": url,
                })
            })
            .collect();
        json!({ "id": s.name, "type": s.catalog_type, "name": s.name, "endpoints": endpoints })
    };
    Value::Array(SERVICES.iter().map(entry).collect())
}
