//! `/v2.0/subnets`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::common::*;
use crate::http::error::ApiResult;
use crate::http::extract::ProjectAuth;
use crate::http::AppState;
use crate::network::service;

pub(crate) async fn list_subnets(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let items = service::list_subnets(&conn, &ctx)?
        .iter()
        .map(|s| s.to_json())
        .collect();
    Ok(list_answer("subnets", items, &q))
}

pub(crate) async fn show_subnet(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = service::visible_subnet(&st.db.lock(), &ctx, &id)?;
    Ok(one("subnet", s.to_json()))
}

pub(crate) async fn create_subnet(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let m = service::body_object(json_body(&body)?, "subnet", service::subnet_fields())?;
    let s = service::create_subnet(&st.db.lock(), &cx(&st, &ctx), &m)?;
    st.network.sync_logged().await;
    Ok(created("subnet", s.to_json()))
}

pub(crate) async fn update_subnet(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = service::body_object(json_body(&body)?, "subnet", service::subnet_fields())?;
    let s = service::update_subnet(&st.db.lock(), &cx(&st, &ctx), &id, &m)?;
    st.network.sync_logged().await;
    Ok(one("subnet", s.to_json()))
}

pub(crate) async fn delete_subnet(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    service::delete_subnet(&st.db.lock(), &cx(&st, &ctx), &id)?;
    st.network.sync_logged().await;
    Ok(StatusCode::NO_CONTENT)
}
