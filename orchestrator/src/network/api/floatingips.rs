//! `/v2.0/floatingips`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::common::*;
use crate::http::error::ApiResult;
use crate::http::extract::ProjectAuth;
use crate::http::AppState;
use crate::network::{l3, service};

pub(crate) async fn list_fips(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let items = l3::list_fips(&conn, &ctx)?
        .iter()
        .map(|f| l3::fip_json(&conn, f))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(list_answer("floatingips", items, &q))
}

pub(crate) async fn show_fip(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let f = l3::visible_fip(&conn, &ctx, &id)?;
    Ok(one("floatingip", l3::fip_json(&conn, &f)?))
}

pub(crate) async fn create_fip(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let m = service::body_object(json_body(&body)?, "floatingip", l3::FIP_FIELDS)?;
    let f = l3::create_fip(&st.db.lock(), &cx(&st, &ctx), &m)?;
    st.network.sync_logged().await;
    let v = l3::fip_json(&st.db.lock(), &f)?;
    Ok(created("floatingip", v))
}

pub(crate) async fn update_fip(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = service::body_object(json_body(&body)?, "floatingip", l3::FIP_FIELDS)?;
    let f = l3::update_fip(&st.db.lock(), &cx(&st, &ctx), &id, &m)?;
    st.network.sync_logged().await;
    let v = l3::fip_json(&st.db.lock(), &f)?;
    Ok(one("floatingip", v))
}

pub(crate) async fn delete_fip(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    l3::delete_fip(&st.db.lock(), &cx(&st, &ctx), &id)?;
    st.network.sync_logged().await;
    Ok(StatusCode::NO_CONTENT)
}
