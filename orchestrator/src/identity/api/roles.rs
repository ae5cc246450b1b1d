//! `/v3/roles`, `/v3/role_assignments` and grants of a role to a user on a
//! project.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, BaseUrl, JsonBody};
use crate::http::policy::{is_self_or_admin, require_admin};
use crate::http::AppState;
use crate::identity::model::*;
use crate::identity::service::{self, unique_violation, valid_name};
use crate::identity::store::{self};
use crate::identity::token;
use crate::util::new_hex_id;

pub(super) async fn list_roles(
    State(st): State<AppState>,
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let roles: Vec<Value> = store::roles(&conn)?
        .into_iter()
        .filter(|(_, n)| q.get("name").is_none_or(|w| w == n))
        .map(|(id, n)| role_json(&base, &id, &n))
        .collect();
    Ok(Json(
        json!({ "roles": roles, "links": links(&base, "roles") }),
    ))
}

#[derive(Deserialize)]
pub(super) struct RoleReq {
    role: RoleFields,
}

#[derive(Deserialize)]
struct RoleFields {
    name: String,
}

pub(super) async fn create_role(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    JsonBody(req): JsonBody<RoleReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&ctx)?;
    valid_name("role", &req.role.name)?;
    let conn = st.db.lock();
    let id = new_hex_id();
    store::insert_role(&conn, &id, &req.role.name).map_err(|e| {
        unique_violation(e, format!("a role named {} already exists", req.role.name))
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "role": role_json(&base, &id, &req.role.name) })),
    ))
}

pub(super) async fn show_role(
    State(st): State<AppState>,
    Auth(_): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let name = service::role(&conn, &id)?;
    Ok(Json(json!({ "role": role_json(&base, &id, &name) })))
}

pub(super) async fn delete_role(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    let name = service::role(&conn, &id)?;
    if ROLES.contains(&name.as_str()) {
        return Err(ApiError::forbidden(format!(
            "the built-in role {name} cannot be deleted"
        )));
    }
    token::revoke_role(&conn, &id)?;
    store::delete_role(&conn, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- assignments

pub(super) async fn grant(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    Path((p, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    service::check_triple(&conn, &p, &u, &r)?;
    store::grant(&conn, &u, &p, &r)?;
    tracing::info!(user = %u, project = %p, role = %r, "role granted");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn check_grant(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    Path((p, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    if !is_self_or_admin(&ctx, &u) {
        return Err(ApiError::forbidden("admin required"));
    }
    let conn = st.db.lock();
    service::check_triple(&conn, &p, &u, &r)?;
    if !store::has_grant(&conn, &u, &p, &r)? {
        return Err(ApiError::not_found("no such role assignment"));
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn revoke(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    Path((p, u, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    service::check_triple(&conn, &p, &u, &r)?;
    if !store::revoke_grant(&conn, &u, &p, &r)? {
        return Err(ApiError::not_found("no such role assignment"));
    }
    token::revoke_user_on_project(&conn, &u, &p)?;
    tracing::info!(user = %u, project = %p, role = %r, "role assignment removed");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_user_project_roles(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path((p, u)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if !is_self_or_admin(&ctx, &u) {
        return Err(ApiError::forbidden("admin required"));
    }
    let conn = st.db.lock();
    service::project(&conn, &p)?;
    service::user(&conn, &u)?;
    let roles: Vec<Value> = store::roles_on(&conn, &u, &p)?
        .into_iter()
        .map(|(id, n)| role_json(&base, &id, &n))
        .collect();
    Ok(Json(
        json!({ "roles": roles, "links": links(&base, &format!("projects/{p}/users/{u}/roles")) }),
    ))
}

pub(super) async fn list_assignments(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let include_names = q
        .get("include_names")
        .is_some_and(|v| v != "0" && v != "false");
    let mut out = Vec::new();
    for a in store::assignments(&conn)? {
        let (u, p, r) = (a.user_id, a.project_id, a.role_id);
        let (rname, uname, pname) = (a.role_name, a.user_name, a.project_name);
        if !is_self_or_admin(&ctx, &u) {
            continue;
        }
        if q.get("user.id").is_some_and(|w| *w != u)
            || q.get("scope.project.id").is_some_and(|w| *w != p)
            || q.get("role.id").is_some_and(|w| *w != r)
        {
            continue;
        }
        let mut a = json!({
            "user": { "id": u }, "scope": { "project": { "id": p } }, "role": { "id": r },
            "links": { "assignment": format!("{base}/identity/v3/projects/{p}/users/{u}/roles/{r}") }
        });
        if include_names {
            a["user"]["name"] = json!(uname);
            a["scope"]["project"]["name"] = json!(pname);
            a["role"]["name"] = json!(rname);
        }
        out.push(a);
    }
    Ok(Json(
        json!({ "role_assignments": out, "links": links(&base, "role_assignments") }),
    ))
}
