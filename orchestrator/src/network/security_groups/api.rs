//! The security group handlers.

use axum::Router;

use crate::http::AppState;

/// `/v2.0/security-groups` and `/v2.0/security-group-rules`, relative to
/// `/network`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
