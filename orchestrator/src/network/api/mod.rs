//! Networking v2.0's thin handlers, one file per resource.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::http::extract::BaseUrl;
use crate::http::AppState;

/// `GET /network/`: Neutron's version list (v2.0 only, no microversions).
async fn versions(BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({ "versions": [{
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{ "rel": "self", "href": format!("{base}/network/v2.0/") }],
    }]}))
}

/// The network routes, relative to `/network`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions))
        .merge(crate::network::security_groups::api::routes())
}
