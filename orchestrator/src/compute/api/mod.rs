//! Compute v2.1's thin handlers (a Nova subset), one file per resource.
//! Microversion 2.1 shapes only (we advertise max 2.1).

pub mod common;
pub mod flavor_access;
pub mod flavors;
pub mod hosts;
pub mod instance_actions;
pub mod interfaces;
pub mod quotas;
pub mod server_actions;
pub mod servers;
#[cfg(test)]
mod tests;
pub mod volume_attachments;
#[cfg(test)]
mod volume_tests;

use axum::routing::{get, post};
use axum::Router;

use crate::http::versions;
use crate::http::AppState;
use common::version_headers;
use flavors::*;
use quotas::*;
use server_actions::*;
use servers::*;

/// The compute routes, relative to `/compute`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions::compute_versions))
        .route("/v2.1", get(versions::compute_v21))
        .route("/v2.1/flavors", get(list_flavors_brief).post(create_flavor))
        .route("/v2.1/flavors/detail", get(list_flavors_detail))
        .route("/v2.1/flavors/{id}", get(show_flavor).delete(delete_flavor))
        .route("/v2.1/flavors/{id}/os-extra_specs", get(flavor_extra_specs))
        .route("/v2.1/servers", get(list_servers_brief).post(create_server))
        .route("/v2.1/servers/detail", get(list_servers_detail))
        .route("/v2.1/servers/{id}", get(show_server).delete(delete_server))
        .route("/v2.1/servers/{id}/action", post(server_action))
        .route("/v2.1/limits", get(limits))
        .route(
            "/v2.1/os-quota-sets/{project}",
            get(show_quota).put(update_quota),
        )
        .route(
            "/v2.1/os-quota-sets/{project}/detail",
            get(show_quota_detail),
        )
        .route(
            "/v2.1/os-quota-sets/{project}/defaults",
            get(show_quota_defaults),
        )
        .merge(hosts::router())
        .merge(interfaces::router())
        .merge(flavor_access::router())
        .merge(instance_actions::router())
        .merge(volume_attachments::router())
        .layer(axum::middleware::map_response(version_headers))
}
