//! `/v2.0/networks`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::common::*;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ProjectAuth;
use crate::http::AppState;
use crate::network::service;

pub(crate) async fn list_networks(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let items = service::list_networks(&conn, &ctx)?
        .into_iter()
        .map(|(n, subnets)| n.to_json(&subnets, ctx.is_admin()))
        .collect();
    Ok(list_answer("networks", items, &q))
}

pub(crate) async fn show_network(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let n = service::visible_network(&conn, &ctx, &id)?;
    let subnets = service::subnet_ids(&conn, &id)?;
    Ok(one("network", n.to_json(&subnets, ctx.is_admin())))
}

pub(crate) async fn create_network(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let m = service::body_object(json_body(&body)?, "network", service::network_fields())?;
    let cx = cx(&st, &ctx);
    let mut net = service::prepare_network(&st.db.lock(), &cx, &m)?;
    let segment = service::segment_of(&net);
    let host = std::sync::Arc::clone(&st.network.host);
    tokio::task::spawn_blocking(move || host.check_segment(&segment))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            crate::host::net::NetHostError::Unsupported(msg) => ApiError::bad_request(msg),
            other => ApiError::internal(other),
        })?;
    service::store_network(&st.db.lock(), &cx, &mut net)?;
    Ok(created("network", net.to_json(&[], ctx.is_admin())))
}

pub(crate) async fn update_network(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = service::body_object(json_body(&body)?, "network", service::network_fields())?;
    let v = {
        let conn = st.db.lock();
        let n = service::update_network(&conn, &cx(&st, &ctx), &id, &m)?;
        n.to_json(&service::subnet_ids(&conn, &id)?, ctx.is_admin())
    };
    st.network.sync_logged().await;
    Ok(one("network", v))
}

pub(crate) async fn delete_network(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    service::delete_network(&st.db.lock(), &cx(&st, &ctx), &id)?;
    st.network.sync_logged().await;
    Ok(StatusCode::NO_CONTENT)
}
