//! `/v3/projects`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, BaseUrl, JsonBody};
use crate::http::policy::{owns_or_admin, require_admin};
use crate::http::AppState;
use crate::identity::model::*;
use crate::identity::service::{self, unique_violation, valid_name};
use crate::identity::store::{self, Projects};
use crate::identity::token;
use crate::util::new_hex_id;

pub(super) async fn list_projects(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let which = if ctx.is_admin() {
        Projects::All
    } else {
        Projects::OfUser(&ctx.user_id)
    };
    let mut projects: Vec<Value> = store::projects(&conn, which)?
        .iter()
        .map(|p| p.to_json(&base))
        .collect();
    for key in ["name", "domain_id", "enabled"] {
        if let Some(want) = q.get(key) {
            projects.retain(|p| match &p[key] {
                Value::String(s) => s == want,
                Value::Bool(b) => b.to_string() == want.to_ascii_lowercase(),
                _ => false,
            });
        }
    }
    Ok(Json(
        json!({ "projects": projects, "links": links(&base, "projects") }),
    ))
}

#[derive(Deserialize)]
pub(super) struct ProjectReq {
    project: ProjectFields,
}

#[derive(Deserialize)]
struct ProjectFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

pub(super) async fn create_project(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    JsonBody(req): JsonBody<ProjectReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&ctx)?;
    let p = req.project;
    let name = p
        .name
        .ok_or_else(|| ApiError::bad_request("project name is required"))?;
    valid_name("project", &name)?;
    let conn = st.db.lock();
    let domain = p.domain_id.unwrap_or_else(|| DEFAULT_DOMAIN_ID.to_string());
    if store::find_domain(&conn, &domain)?.is_none() {
        return Err(ApiError::bad_request(format!(
            "domain {domain} does not exist"
        )));
    }
    let project = Project {
        id: new_hex_id(),
        name,
        domain_id: domain,
        description: p.description.unwrap_or_default(),
        enabled: p.enabled.unwrap_or(true),
    };
    store::insert_project(&conn, &project).map_err(|e| {
        unique_violation(
            e,
            format!(
                "a project named {} already exists in domain {}",
                project.name, project.domain_id
            ),
        )
    })?;
    tracing::info!(project = %project.id, name = ?project.name, "project created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "project": service::project(&conn, &project.id)?.to_json(&base) })),
    ))
}

pub(super) async fn show_project(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    if !owns_or_admin(&ctx, &id) {
        return Err(ApiError::not_found(format!("could not find project: {id}")));
    }
    Ok(Json(
        json!({ "project": service::project(&conn, &id)?.to_json(&base) }),
    ))
}

pub(super) async fn update_project(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    BaseUrl(base): BaseUrl,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ProjectReq>,
) -> ApiResult<Json<Value>> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    service::project(&conn, &id)?;
    let p = req.project;
    if let Some(name) = &p.name {
        valid_name("project", name)?;
    }
    let changes = ProjectChanges {
        name: p.name.as_deref(),
        description: p.description.as_deref(),
        enabled: p.enabled,
    };
    store::update_project(&conn, &id, &changes).map_err(|e| {
        let name = p.name.as_deref().unwrap_or_default();
        unique_violation(e, format!("a project named {name} already exists"))
    })?;
    if p.enabled == Some(false) {
        token::revoke_project(&conn, &id)?;
    }
    Ok(Json(
        json!({ "project": service::project(&conn, &id)?.to_json(&base) }),
    ))
}

pub(super) async fn delete_project(
    State(st): State<AppState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_admin(&ctx)?;
    let conn = st.db.lock();
    service::project(&conn, &id)?;
    if id == ctx.project_id {
        return Err(ApiError::forbidden(
            "you cannot delete the project your token is scoped to",
        ));
    }
    service::check_project_unused(&conn, &id)?;
    token::revoke_project(&conn, &id)?;
    // Its lazily made default security group goes with it (no port uses it:
    // the project has none left).
    crate::network::security_groups::service::remove_default_group(&conn, &id)?;
    store::delete_project(&conn, &id)?;
    Ok(StatusCode::NO_CONTENT)
}
