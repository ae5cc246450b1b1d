//! The HTTP API: one port, each OpenStack service under its own prefix
//! (`/identity`, `/image`, `/compute`), all listed in the token's catalog.

pub mod compute;
pub mod compute_host;
pub mod discovery;
pub mod error;
pub mod extract;
pub mod flavor_access;
pub mod identity;
pub mod identity_catalog;
pub mod image;
pub mod instance_actions;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tracing::Instrument;

use crate::compute::Compute;
use crate::config::Config;
use crate::db::Db;
use crate::image_store::ImageStore;
use error::{restyle, ErrorStyle};

/// Largest JSON request body (uploads have their own limit).
pub const MAX_JSON_BODY: usize = 1 << 20;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The state database.
    pub db: Db,
    /// The daemon's configuration.
    pub cfg: Arc<Config>,
    /// Image files.
    pub images: Arc<ImageStore>,
    /// The compute service.
    pub compute: Arc<Compute>,
}

fn styled(router: Router<AppState>, style: ErrorStyle) -> Router<AppState> {
    router.layer(middleware::map_response(move |resp: Response| async move {
        restyle(style, resp)
    }))
}

/// The request's id (`x-openstack-request-id`), for handlers that record it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives each request an id (`x-openstack-request-id`, also a [`RequestId`]
/// extension) and a tracing span.
async fn request_span(mut req: Request, next: Next) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), "answered"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-openstack-request-id", v);
    }
    resp
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(discovery::root))
        .nest(
            "/identity",
            styled(identity::router(), ErrorStyle::Identity),
        )
        .nest("/image", styled(image::router(), ErrorStyle::Image))
        .nest("/compute", styled(compute::router(), ErrorStyle::Compute))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// Drops one trailing slash (`/compute/v2.1/` → `/compute/v2.1`), so both
/// spellings the clients use reach the same route. Applied before routing.
pub fn strip_trailing_slash(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let new = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(uri) = new.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    req
}
