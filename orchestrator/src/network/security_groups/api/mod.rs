//! The security group handlers: one file per resource; the rules are in
//! [`super::service`].

mod common;
mod groups;
mod rules;

use axum::routing::get;
use axum::Router;

use crate::http::AppState;

/// `/v2.0/security-groups` and `/v2.0/security-group-rules`, relative to
/// `/network`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v2.0/security-groups",
            get(groups::list_groups).post(groups::create_group),
        )
        .route(
            "/v2.0/security-groups/{id}",
            get(groups::show_group)
                .put(groups::update_group)
                .delete(groups::delete_group),
        )
        .route(
            "/v2.0/security-group-rules",
            get(rules::list_rules).post(rules::create_rule),
        )
        .route(
            "/v2.0/security-group-rules/{id}",
            get(rules::show_rule).delete(rules::delete_rule),
        )
}
