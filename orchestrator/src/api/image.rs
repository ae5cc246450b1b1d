//! Image v2 (Glance subset). Being written.

use axum::routing::get;
use axum::Router;

use super::discovery;
use super::AppState;

/// The image routes, relative to `/image`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(discovery::image_versions))
        .route("/versions", get(discovery::image_versions))
}
