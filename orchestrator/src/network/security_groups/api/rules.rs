//! `/v2.0/security-group-rules`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::common::shape;
use crate::http::error::ApiResult;
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::AppState;
use crate::network::security_groups::{service, validate};

/// Fields a rule list may be filtered on.
const FILTERS: [&str; 14] = [
    "id",
    "security_group_id",
    "direction",
    "ethertype",
    "protocol",
    "port_range_min",
    "port_range_max",
    "remote_ip_prefix",
    "remote_group_id",
    "description",
    "project_id",
    "tenant_id",
    "revision_number",
    "belongs_to_default_sg",
];

pub(crate) async fn list_rules(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let items = service::list_rules(&st.db.lock(), &ctx)?;
    Ok(Json(
        json!({ "security_group_rules": shape(items, &q, &FILTERS) }),
    ))
}

pub(crate) async fn show_rule(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let rule = service::visible_rule(&st.db.lock(), &ctx, &id)?;
    let body = shape(vec![rule.to_json()], &q, &[])
        .pop()
        .unwrap_or(Value::Null);
    Ok(Json(json!({ "security_group_rule": body })))
}

pub(crate) async fn create_rule(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    service::require_writer(&ctx, "create_security_group_rule")?;
    let req = validate::rule_request(&body)?;
    let rule = service::create_rule(&st.db.lock(), &ctx, &req)?;
    // The ports of the rule's group get it now.
    st.network.sync_logged().await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "security_group_rule": rule })),
    ))
}

pub(crate) async fn delete_rule(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    service::delete_rule(&st.db.lock(), &ctx, &id)?;
    st.network.sync_logged().await;
    Ok(StatusCode::NO_CONTENT)
}
