//! `/v3/users`.

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
use crate::identity::store::{self, Projects};
use crate::identity::{password, token};
use crate::util::new_hex_id;

pub(super) async fn list_users(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let only = (!ctx.is_admin()).then_some(ctx.user_id.as_str());
    let mut users: Vec<Value> = store::users(&conn, only)?
        .iter()
        .map(|u| u.to_json(&base))
        .collect();
    for key in ["name", "domain_id"] {
        if let Some(want) = q.get(key) {
            users.retain(|u| u[key].as_str() == Some(want.as_str()));
        }
    }
    Ok(Json(
        json!({ "users": users, "links": links(&base, "users") }),
    ))
}

#[derive(Deserialize)]
pub(super) struct UserReq {
    user: UserFields,
}

#[derive(Deserialize)]
struct UserFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain_id: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    default_project_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

pub(super) async fn create_user(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    JsonBody(req): JsonBody<UserReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&ctx)?;
    let u = req.user;
    let name = u
        .name
        .ok_or_else(|| ApiError::bad_request("user name is required"))?;
    valid_name("user", &name)?;
    let hash = match &u.password {
        Some(p) => Some(password::hash(p).map_err(ApiError::internal)?),
        None => None,
    };
    let conn = st.db.lock();
    let domain = u.domain_id.unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_string());
    if store::find_domain(&conn, &domain)?.is_none() {
        return Err(ApiError::bad_request(format!(
            "domain {domain} does not exist"
        )));
    }
    if let Some(p) = &u.default_project_id {
        service::project(&conn, p)
            .map_err(|_| ApiError::bad_request(format!("project {p} does not exist")))?;
    }
    let user = User {
        id: new_hex_id(),
        name,
        domain_id: domain,
        default_project_id: u.default_project_id,
        email: u.email,
        description: u.description.unwrap_or_default(),
        enabled: u.enabled.unwrap_or(true),
    };
    store::insert_user(&conn, &user, hash.as_deref()).map_err(|e| {
        unique_violation(
            e,
            format!(
                "a user named {} already exists in domain {}",
                user.name, user.domain_id
            ),
        )
    })?;
    tracing::info!(user = %user.id, name = ?user.name, "user created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user": service::user(&conn, &user.id)?.to_json(&base) })),
    ))
}

pub(super) async fn show_user(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !is_self_or_admin(&ctx, &id) {
        return Err(ApiError::not_found(format!("could not find user: {id}")));
    }
    let conn = st.db.lock();
    Ok(Json(
        json!({ "user": service::user(&conn, &id)?.to_json(&base) }),
    ))
}

pub(super) async fn update_user(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UserReq>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx)?;
    let u = req.user;
    let hash = match &u.password {
        Some(p) => Some(password::hash(p).map_err(ApiError::internal)?),
        None => None,
    };
    let conn = st.db.lock();
    service::user(&conn, &id)?;
    if let Some(name) = &u.name {
        valid_name("user", name)?;
    }
    let changes = UserChanges {
        name: u.name.as_deref(),
        password_hash: hash.as_deref(),
        default_project_id: u.default_project_id.as_deref(),
        email: u.email.as_deref(),
        description: u.description.as_deref(),
        enabled: u.enabled,
    };
    store::update_user(&conn, &id, &changes).map_err(|e| {
        let name = u.name.as_deref().unwrap_or_default();
        unique_violation(e, format!("a user named {name} already exists"))
    })?;
    if hash.is_some() || u.enabled == Some(false) {
        token::revoke_user(&conn, &id)?;
    }
    Ok(Json(
        json!({ "user": service::user(&conn, &id)?.to_json(&base) }),
    ))
}

pub(super) async fn delete_user(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    if id == ctx.user_id {
        return Err(ApiError::forbidden("you cannot delete yourself"));
    }
    let conn = st.db.lock();
    service::user(&conn, &id)?;
    store::delete_user(&conn, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn user_projects(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !is_self_or_admin(&ctx, &id) {
        return Err(ApiError::forbidden("you may only list your own projects"));
    }
    let conn = st.db.lock();
    let projects: Vec<Value> = store::projects(&conn, Projects::OfUser(&id))?
        .iter()
        .map(|p| p.to_json(&base))
        .collect();
    Ok(Json(
        json!({ "projects": projects, "links": links(&base, &format!("users/{id}/projects")) }),
    ))
}
