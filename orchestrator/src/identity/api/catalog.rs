//! Identity v3, the service catalog as resources: services, endpoints and
//! regions (`openstack service list`, `endpoint list`, `region list`). They
//! are read-only views of the catalog every token carries
//! ([`catalog::catalog`]); this daemon serves one fixed set.

use axum::extract::{Path, Query};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::catalog;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, BaseUrl};
use crate::http::policy::require_admin;
use crate::http::AppState;
use crate::identity::model::links;

/// The region every endpoint is in.
const REGION: &str = "RegionOne";

/// The catalog routes, relative to `/identity` (merged into its router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v3/services", get(list_services))
        .route("/v3/services/{id}", get(show_service))
        .route("/v3/endpoints", get(list_endpoints))
        .route("/v3/endpoints/{id}", get(show_endpoint))
        .route("/v3/regions", get(list_regions))
        .route("/v3/regions/{id}", get(show_region))
}

fn catalog_entries(base: &str) -> Vec<Value> {
    match catalog::catalog(base, None) {
        Value::Array(entries) => entries,
        _ => Vec::new(),
    }
}

fn service_json(base: &str, entry: &Value) -> Value {
    let id = entry["id"].as_str().unwrap_or_default();
    json!({
        "id": id,
        "name": entry["name"],
        "type": entry["type"],
        "enabled": true,
        "description": "",
        "links": { "self": format!("{base}/identity/v3/services/{id}") },
    })
}

/// Every endpoint with its service id, as Keystone lists them.
fn endpoints(base: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in catalog_entries(base) {
        let service_id = entry["id"].clone();
        for e in entry["endpoints"].as_array().into_iter().flatten() {
            let id = e["id"].as_str().unwrap_or_default();
            out.push(json!({
                "id": id,
                "service_id": service_id,
                "interface": e["interface"],
                "region": e["region"],
                "region_id": e["region_id"],
                "url": e["url"],
                "enabled": true,
                "links": { "self": format!("{base}/identity/v3/endpoints/{id}") },
            }));
        }
    }
    out
}

/// Keystone's list filters for services and endpoints.
#[derive(Debug, Default, Deserialize)]
struct CatalogQuery {
    #[serde(rename = "type")]
    ty: Option<String>,
    name: Option<String>,
    service_id: Option<String>,
    interface: Option<String>,
    region_id: Option<String>,
}

fn keep(v: &Value, key: &str, want: &Option<String>) -> bool {
    want.as_deref().is_none_or(|w| v[key].as_str() == Some(w))
}

async fn list_services(
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<CatalogQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx)?;
    let services: Vec<Value> = catalog_entries(&base)
        .iter()
        .map(|e| service_json(&base, e))
        .filter(|s| keep(s, "type", &q.ty) && keep(s, "name", &q.name))
        .collect();
    Ok(Json(
        json!({ "services": services, "links": links(&base, "services") }),
    ))
}

async fn show_service(
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx)?;
    catalog_entries(&base)
        .iter()
        .find(|e| e["id"].as_str() == Some(id.as_str()))
        .map(|e| Json(json!({ "service": service_json(&base, e) })))
        .ok_or_else(|| ApiError::not_found(format!("Could not find service: {id}.")))
}

async fn list_endpoints(
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<CatalogQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx)?;
    let list: Vec<Value> = endpoints(&base)
        .into_iter()
        .filter(|e| {
            keep(e, "service_id", &q.service_id)
                && keep(e, "interface", &q.interface)
                && keep(e, "region_id", &q.region_id)
        })
        .collect();
    Ok(Json(
        json!({ "endpoints": list, "links": links(&base, "endpoints") }),
    ))
}

async fn show_endpoint(
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx)?;
    endpoints(&base)
        .into_iter()
        .find(|e| e["id"].as_str() == Some(id.as_str()))
        .map(|e| Json(json!({ "endpoint": e })))
        .ok_or_else(|| ApiError::not_found(format!("Could not find endpoint: {id}.")))
}

fn region_json(base: &str) -> Value {
    json!({
        "id": REGION,
        "description": "",
        "parent_region_id": null,
        "links": { "self": format!("{base}/identity/v3/regions/{REGION}") },
    })
}

async fn list_regions(Auth(_): Auth, BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({ "regions": [region_json(&base)], "links": links(&base, "regions") }))
}

async fn show_region(
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if id == REGION {
        Ok(Json(json!({ "region": region_json(&base) })))
    } else {
        Err(ApiError::not_found(format!("Could not find region: {id}.")))
    }
}
