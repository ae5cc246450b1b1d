//! `/v3/{project}/snapshots`: create, list (and detail), show, update, delete.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{self, check_project, require_writer};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{BaseUrl, JsonBody, ProjectAuth};
use crate::http::AppState;
use crate::volume::service::{visible_snapshot, visible_volume};
use crate::volume::store;

/// `POST /snapshots` body.
#[derive(Deserialize)]
pub(super) struct CreateBody {
    snapshot: CreateFields,
}

#[derive(Deserialize)]
struct CreateFields {
    volume_id: String,
    name: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    force: Option<Value>,
    metadata: Option<BTreeMap<String, String>>,
}

fn truthy(v: &Option<Value>) -> ApiResult<bool> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ApiError::bad_request(format!(
                "Invalid input received: force must be a boolean, not '{s}'."
            ))),
        },
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid input received: force must be a boolean, not {other}."
        ))),
    }
}

/// `POST /v3/{project}/snapshots`: 202 with the snapshot `creating`.
pub(super) async fn create_snapshot(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    check_project(&ctx, &project)?;
    require_writer(&ctx)?;
    let f = body.snapshot;
    let name = f.name.or(f.display_name);
    common::check_text("name", &name)?;
    common::check_text("description", &f.description)?;
    let metadata = f.metadata.unwrap_or_default();
    common::check_metadata(&metadata)?;
    let force = truthy(&f.force)?;
    let vol = visible_volume(&state.db.lock(), &ctx, &f.volume_id)?;
    let (snap, _task) =
        state
            .volume
            .create_snapshot(&vol, &ctx.user_id, name, f.description, metadata, force)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "snapshot": snap.to_json(ctx.is_admin()) })),
    ))
}

async fn list(
    state: &AppState,
    ctx: &crate::identity::AuthContext,
    base: &str,
    project: &str,
    q: &HashMap<String, String>,
    detail: bool,
) -> ApiResult<Json<Value>> {
    check_project(ctx, project)?;
    let limit = common::limit_param(q)?;
    let scope = if ctx.is_admin() && common::all_tenants(q) {
        q.get("project_id").cloned()
    } else {
        Some(project.to_string())
    };
    let snaps = store::list_snapshots(
        &state.db.lock(),
        scope.as_deref(),
        q.get("name").map(String::as_str),
        q.get("status").map(String::as_str),
        q.get("marker").map(String::as_str),
        Some(limit),
    )?
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "Marker {} could not be found.",
            q.get("marker").cloned().unwrap_or_default()
        ))
    })?;
    let snaps: Vec<_> = match q.get("volume_id") {
        Some(v) => snaps.into_iter().filter(|s| &s.volume_id == v).collect(),
        None => snaps,
    };
    let shown: Vec<Value> = snaps.iter().map(|s| s.to_json(ctx.is_admin())).collect();
    let path = format!(
        "/volume/v3/{project}/snapshots{}",
        if detail { "/detail" } else { "" }
    );
    let mut out = json!({ "snapshots": shown });
    if let Some(l) = common::next_links(
        base,
        &path,
        q,
        limit,
        snaps.len(),
        snaps.last().map(|s| s.id.as_str()),
    ) {
        out["snapshots_links"] = l;
    }
    Ok(Json(out))
}

/// `GET /v3/{project}/snapshots`.
pub(super) async fn list_snapshots(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&state, &ctx, &base, &project, &q, false).await
}

/// `GET /v3/{project}/snapshots/detail`.
pub(super) async fn list_snapshots_detail(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&state, &ctx, &base, &project, &q, true).await
}

/// `GET /v3/{project}/snapshots/{id}`.
pub(super) async fn show_snapshot(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    let snap = visible_snapshot(&state.db.lock(), &ctx, &id)?;
    Ok(Json(json!({ "snapshot": snap.to_json(ctx.is_admin()) })))
}

/// `PUT /snapshots/{id}` body.
#[derive(Deserialize)]
pub(super) struct UpdateBody {
    snapshot: UpdateFields,
}

#[derive(Deserialize)]
struct UpdateFields {
    name: Option<String>,
    description: Option<String>,
}

/// `PUT /v3/{project}/snapshots/{id}`.
pub(super) async fn update_snapshot(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    require_writer(&ctx)?;
    common::check_text("name", &body.snapshot.name)?;
    common::check_text("description", &body.snapshot.description)?;
    let conn = state.db.lock();
    let mut snap = visible_snapshot(&conn, &ctx, &id)?;
    if body.snapshot.name.is_some() {
        snap.name = body.snapshot.name;
    }
    if body.snapshot.description.is_some() {
        snap.description = body.snapshot.description;
    }
    store::update_snapshot(&conn, &snap)?;
    Ok(Json(json!({ "snapshot": snap.to_json(ctx.is_admin()) })))
}

/// `DELETE /v3/{project}/snapshots/{id}`: 202, `deleting`.
pub(super) async fn delete_snapshot(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_project(&ctx, &project)?;
    require_writer(&ctx)?;
    let snap = visible_snapshot(&state.db.lock(), &ctx, &id)?;
    state.volume.delete_snapshot(&snap)?;
    Ok(StatusCode::ACCEPTED)
}
