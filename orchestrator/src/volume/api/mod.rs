//! Block Storage v3's thin handlers, one file per resource, and the
//! version documents.

pub mod common;
pub mod quotas;
pub mod snapshots;
#[cfg(test)]
mod tests;
pub mod types;
pub mod volumes;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::http::extract::BaseUrl;
use crate::http::AppState;

/// Cinder's v3 version entry.
fn version(base: &str) -> Value {
    json!({
        "id": "v3.0",
        "status": "CURRENT",
        "version": common::version_str(common::MAX_VERSION),
        "min_version": common::version_str(common::MIN_VERSION),
        "updated": "2023-08-31T00:00:00Z",
        "links": [
            { "rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/" },
            { "rel": "self", "href": format!("{base}/volume/v3/") },
        ],
        "media-types": [{
            "base": "application/json",
            "type": "application/vnd.openstack.volume+json;version=3"
        }],
    })
}

/// `GET /volume/`: 300 with the one version, as Cinder answers.
async fn versions(BaseUrl(base): BaseUrl) -> impl IntoResponse {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({ "versions": [version(&base)] })),
    )
}

/// `GET /volume/v3/` (and `/volume/v3/{project}`): the v3 document.
async fn v3(BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({ "versions": [version(&base)] }))
}

/// The Block Storage routes, relative to `/volume`.
pub fn router() -> Router<AppState> {
    use quotas::*;
    use snapshots::*;
    use types::*;
    use volumes::*;
    Router::new()
        .route("/", get(versions))
        .route("/v3", get(v3))
        .route("/v3/{project}", get(v3))
        .route(
            "/v3/{project}/volumes",
            get(list_volumes).post(create_volume),
        )
        .route("/v3/{project}/volumes/detail", get(list_volumes_detail))
        .route(
            "/v3/{project}/volumes/{id}",
            get(show_volume).put(update_volume).delete(delete_volume),
        )
        .route("/v3/{project}/volumes/{id}/action", post(volume_action))
        .route(
            "/v3/{project}/volumes/{id}/metadata",
            get(show_metadata)
                .post(merge_metadata)
                .put(replace_metadata),
        )
        .route(
            "/v3/{project}/volumes/{id}/metadata/{key}",
            delete(delete_metadata_key),
        )
        .route(
            "/v3/{project}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route("/v3/{project}/snapshots/detail", get(list_snapshots_detail))
        .route(
            "/v3/{project}/snapshots/{id}",
            get(show_snapshot)
                .put(update_snapshot)
                .delete(delete_snapshot),
        )
        .route("/v3/{project}/types", get(list_types).post(create_type))
        .route(
            "/v3/{project}/types/{id}",
            get(show_type).put(update_type).delete(delete_type),
        )
        .route(
            "/v3/{project}/types/{id}/extra_specs",
            get(show_specs).post(set_specs),
        )
        .route(
            "/v3/{project}/types/{id}/os-volume-type-access",
            get(type_access),
        )
        .route(
            "/v3/{project}/types/{id}/extra_specs/{key}",
            delete(delete_spec),
        )
        .route(
            "/v3/{project}/os-quota-sets/{target}",
            get(show_quota).put(update_quota).delete(delete_quota),
        )
        .route(
            "/v3/{project}/os-quota-sets/{target}/defaults",
            get(show_defaults),
        )
        .route("/v3/{project}/limits", get(limits))
        .route("/v3/{project}/messages", get(list_messages))
        .route("/v3/{project}/messages/{id}", get(show_message))
        .layer(axum::middleware::from_fn(common::version_layer))
}
