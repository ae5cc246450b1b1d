//! The whole API's router: one nest per entry of [`SERVICES`], each with its
//! service's error style, plus request ids and the body limit.

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tracing::Instrument;

use super::catalog::{self, ServiceKind, SERVICES};
use super::error::{restyle, ErrorStyle};
use super::{AppState, RequestId, MAX_JSON_BODY};

/// A service's routes, relative to its prefix.
fn routes(kind: ServiceKind) -> Router<AppState> {
    match kind {
        ServiceKind::Identity => crate::identity::api::router(),
        ServiceKind::Compute => crate::compute::api::router(),
        ServiceKind::Image => crate::image::api::router(),
        ServiceKind::Network => crate::network::api::router(),
        ServiceKind::Volume => crate::volume::api::router(),
    }
}

fn styled(router: Router<AppState>, style: ErrorStyle) -> Router<AppState> {
    router.layer(middleware::map_response(move |resp: Response| async move {
        restyle(style, resp)
    }))
}

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
    let mut app = Router::new().route("/", get(catalog::root));
    for s in &SERVICES {
        app = app.nest(s.prefix, styled(routes(s.kind), s.style));
    }
    app.layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}
