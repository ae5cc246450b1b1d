//! `/v2.0/ports`.

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

pub(crate) async fn list_ports(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let items = service::list_ports(&conn, &ctx)?
        .iter()
        .map(|p| p.to_json())
        .collect();
    Ok(list_answer("ports", items, &q))
}

pub(crate) async fn show_port(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = service::visible_port(&st.db.lock(), &ctx, &id)?;
    Ok(one("port", p.to_json()))
}

pub(crate) async fn create_port(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let m = service::body_object(json_body(&body)?, "port", service::port_fields())?;
    let p = service::create_port(&st.db.lock(), &cx(&st, &ctx), &m)?;
    st.network.sync_logged().await;
    let p = service::visible_port(&st.db.lock(), &ctx, &p.std.id)?;
    Ok(created("port", p.to_json()))
}

pub(crate) async fn update_port(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = service::body_object(json_body(&body)?, "port", service::port_fields())?;
    service::update_port(&st.db.lock(), &cx(&st, &ctx), &id, &m)?;
    st.network.sync_logged().await;
    let p = service::visible_port(&st.db.lock(), &ctx, &id)?;
    Ok(one("port", p.to_json()))
}

pub(crate) async fn delete_port(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    service::delete_port(&st.db.lock(), &cx(&st, &ctx), &id)?;
    st.network.sync_logged().await;
    Ok(StatusCode::NO_CONTENT)
}
