//! `/v2.0/routers` and their interfaces.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::common::*;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ProjectAuth;
use crate::http::AppState;
use crate::network::{l3, service};

pub(crate) async fn list_routers(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let items = l3::list_routers(&conn, &ctx)?
        .iter()
        .map(|r| l3::router_json(&conn, r))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(list_answer("routers", items, &q))
}

pub(crate) async fn show_router(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let r = l3::visible_router(&conn, &ctx, &id)?;
    Ok(one("router", l3::router_json(&conn, &r)?))
}

pub(crate) async fn create_router(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let m = service::body_object(json_body(&body)?, "router", l3::ROUTER_FIELDS)?;
    let r = l3::create_router(&st.db.lock(), &cx(&st, &ctx), &m)?;
    st.network.sync_logged().await;
    let v = l3::router_json(&st.db.lock(), &r)?;
    Ok(created("router", v))
}

pub(crate) async fn update_router(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = service::body_object(json_body(&body)?, "router", l3::ROUTER_FIELDS)?;
    let r = l3::update_router(&st.db.lock(), &cx(&st, &ctx), &id, &m)?;
    st.network.sync_logged().await;
    let v = l3::router_json(&st.db.lock(), &r)?;
    Ok(one("router", v))
}

pub(crate) async fn delete_router(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    l3::delete_router(&st.db.lock(), &cx(&st, &ctx), &id)?;
    st.network.sync_logged().await;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /routers/{id}/add_router_interface`, `remove_router_interface`,
/// `add_extraroutes` and `remove_extraroutes`.
pub(crate) async fn router_interface(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = json_body(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "Bad router request: the body must be an object with subnet_id or port_id",
        ));
    }
    let v = match action.as_str() {
        "add_extraroutes" | "remove_extraroutes" => {
            let add = action == "add_extraroutes";
            let conn = st.db.lock();
            let r = l3::change_extraroutes(&conn, &cx(&st, &ctx), &id, &body, add)?;
            json!({ "router": l3::router_json(&conn, &r)? })
        }
        "add_router_interface" => l3::add_interface(&st.db.lock(), &cx(&st, &ctx), &id, &body)?,
        "remove_router_interface" => {
            l3::remove_interface(&st.db.lock(), &cx(&st, &ctx), &id, &body)?
        }
        _ => return Err(ApiError::not_found("the resource could not be found")),
    };
    st.network.sync_logged().await;
    Ok(Json(v))
}
