//! Version discovery documents. Served without a token, because keystoneauth
//! reads them before it authenticates.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::extract::BaseUrl;

/// Compute microversion range we implement (no microversion-dependent shapes).
pub const COMPUTE_MIN_VERSION: &str = "2.1";
/// Highest compute microversion we speak.
pub const COMPUTE_MAX_VERSION: &str = "2.1";

const UPDATED: &str = "2026-11-01T00:00:00Z";

fn identity_version(base: &str) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": UPDATED,
        "links": [{ "rel": "self", "href": format!("{base}/identity/v3/") }],
        "media-types": [{
            "base": "application/json",
            "type": "application/vnd.openstack.identity-v3+json"
        }]
    })
}

/// `GET /identity`: 300 Multiple Choices with the one version.
pub async fn identity_versions(BaseUrl(base): BaseUrl) -> impl IntoResponse {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({ "versions": { "values": [identity_version(&base)] } })),
    )
}

/// `GET /identity/v3`.
pub async fn identity_v3(BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({ "version": identity_version(&base) }))
}

fn compute_version(base: &str) -> Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": COMPUTE_MAX_VERSION,
        "min_version": COMPUTE_MIN_VERSION,
        "updated": UPDATED,
        "links": [{ "rel": "self", "href": format!("{base}/compute/v2.1/") }],
        "media-types": [{
            "base": "application/json",
            "type": "application/vnd.openstack.compute+json;version=2.1"
        }]
    })
}

/// `GET /compute`.
pub async fn compute_versions(BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({ "versions": [compute_version(&base)] }))
}

/// `GET /compute/v2.1`.
pub async fn compute_v21(BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({ "version": compute_version(&base) }))
}

/// `GET /image` and `GET /image/versions`.
pub async fn image_versions(BaseUrl(base): BaseUrl) -> impl IntoResponse {
    let v = |id: &str, status: &str| {
        json!({
            "id": id, "status": status,
            "links": [{ "rel": "self", "href": format!("{base}/image/v2/") }]
        })
    };
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({ "versions": [v("v2.9", "CURRENT"), v("v2.0", "SUPPORTED")] })),
    )
}
