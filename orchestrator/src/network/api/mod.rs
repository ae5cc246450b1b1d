//! Networking v2.0's thin handlers, one file per resource.

pub mod common;
pub mod extensions;
pub mod floatingips;
pub mod networks;
pub mod ports;
pub mod quotas;
pub mod routers;
pub mod subnets;
#[cfg(test)]
mod tests;

use axum::routing::{get, put};
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
    use floatingips::*;
    use networks::*;
    use ports::*;
    use routers::*;
    use subnets::*;
    Router::new()
        .route("/", get(versions))
        .route("/v2.0", get(extensions::resources))
        .route("/v2.0/extensions", get(extensions::list_extensions))
        .route("/v2.0/extensions/{alias}", get(extensions::show_extension))
        .route("/v2.0/networks", get(list_networks).post(create_network))
        .route(
            "/v2.0/networks/{id}",
            get(show_network).put(update_network).delete(delete_network),
        )
        .route("/v2.0/subnets", get(list_subnets).post(create_subnet))
        .route(
            "/v2.0/subnets/{id}",
            get(show_subnet).put(update_subnet).delete(delete_subnet),
        )
        .route("/v2.0/ports", get(list_ports).post(create_port))
        .route(
            "/v2.0/ports/{id}",
            get(show_port).put(update_port).delete(delete_port),
        )
        .route("/v2.0/routers", get(list_routers).post(create_router))
        .route(
            "/v2.0/routers/{id}",
            get(show_router).put(update_router).delete(delete_router),
        )
        .route("/v2.0/routers/{id}/{action}", put(router_interface))
        .route("/v2.0/floatingips", get(list_fips).post(create_fip))
        .route(
            "/v2.0/floatingips/{id}",
            get(show_fip).put(update_fip).delete(delete_fip),
        )
        .route("/v2.0/quotas", get(quotas::list_quotas))
        .route(
            "/v2.0/quotas/{project}",
            get(quotas::show_quota)
                .put(quotas::update_quota)
                .delete(quotas::delete_quota),
        )
        .route("/v2.0/quotas/{project}/{what}", get(quotas::show_quota_sub))
        .merge(crate::network::security_groups::api::routes())
}
