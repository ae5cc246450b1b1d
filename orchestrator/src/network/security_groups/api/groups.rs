//! `/v2.0/security-groups`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::common::shape;
use crate::http::error::ApiResult;
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::AppState;
use crate::network::security_groups::{service, validate};

/// Fields a group list may be filtered on.
const FILTERS: [&str; 6] = [
    "id",
    "name",
    "description",
    "project_id",
    "tenant_id",
    "revision_number",
];

pub(crate) async fn list_groups(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let project = q
        .iter()
        .find(|(k, _)| k == "project_id" || k == "tenant_id")
        .map(|(_, v)| v.as_str());
    let items = service::list_groups(&st.db.lock(), &ctx, project)?;
    Ok(Json(
        json!({ "security_groups": shape(items, &q, &FILTERS) }),
    ))
}

pub(crate) async fn show_group(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let g = service::visible_group(&conn, &ctx, &id)?;
    let body = service::group_json(&conn, &g)?;
    let body = shape(vec![body], &q, &[]).pop().unwrap_or(Value::Null);
    Ok(Json(json!({ "security_group": body })))
}

pub(crate) async fn create_group(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    service::require_writer(&ctx, "create_security_group")?;
    let req = validate::group_request(&body, true)?;
    let group = service::create_group(&st.db.lock(), &ctx, &req)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "security_group": group })),
    ))
}

pub(crate) async fn update_group(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let req = validate::group_request(&body, false)?;
    let group = service::update_group(&st.db.lock(), &ctx, &id, &req)?;
    Ok(Json(json!({ "security_group": group })))
}

pub(crate) async fn delete_group(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    service::delete_group(&st.db.lock(), &ctx, &id)?;
    // Rules of other groups that named it went too.
    st.network.sync_logged().await;
    Ok(StatusCode::NO_CONTENT)
}
