//! Identity v3's thin handlers, one file per resource; management calls
//! need the `admin` role ([`crate::http::policy`]).

pub mod catalog;
pub mod domains;
pub mod projects;
pub mod roles;
#[cfg(test)]
mod tests;
pub mod tokens;
pub mod users;

use axum::routing::{get, put};
use axum::Router;

use crate::http::versions;
use crate::http::AppState;
use domains::*;
use projects::*;
use roles::*;
use tokens::*;
use users::*;

/// The identity routes, relative to `/identity`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions::identity_versions))
        .route("/v3", get(versions::identity_v3))
        .route(
            "/v3/auth/tokens",
            get(check_token)
                .head(check_token)
                .post(issue_token)
                .delete(revoke_token),
        )
        .route("/v3/auth/projects", get(auth_projects))
        .route("/v3/auth/catalog", get(auth_catalog))
        .route("/v3/domains", get(list_domains))
        .route("/v3/domains/{id}", get(show_domain))
        .route("/v3/projects", get(list_projects).post(create_project))
        .route(
            "/v3/projects/{id}",
            get(show_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route("/v3/users", get(list_users).post(create_user))
        .route(
            "/v3/users/{id}",
            get(show_user).patch(update_user).delete(delete_user),
        )
        .route("/v3/users/{id}/projects", get(user_projects))
        .route("/v3/roles", get(list_roles).post(create_role))
        .route("/v3/roles/{id}", get(show_role).delete(delete_role))
        .route("/v3/role_assignments", get(list_assignments))
        .route(
            "/v3/projects/{p}/users/{u}/roles",
            get(list_user_project_roles),
        )
        .route(
            "/v3/projects/{p}/users/{u}/roles/{r}",
            put(grant).head(check_grant).get(check_grant).delete(revoke),
        )
        .merge(catalog::router())
}
