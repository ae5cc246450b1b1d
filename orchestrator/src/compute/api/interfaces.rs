//! `/v2.1/servers/{id}/os-interface`: a server's ports, from the
//! Networking service. Attaching and detaching need hot-plug, which
//! `nubo-vmm` does not have: 409.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::compute::service::visible_server;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ProjectAuth;
use crate::http::AppState;
use crate::network::service::server_interfaces;

async fn list_interfaces(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let s = visible_server(&conn, &ctx, &id)?;
    Ok(Json(
        json!({ "interfaceAttachments": server_interfaces(&conn, &s.id)? }),
    ))
}

async fn show_interface(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, port_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    let s = visible_server(&conn, &ctx, &id)?;
    server_interfaces(&conn, &s.id)?
        .into_iter()
        .find(|i| i["port_id"] == port_id.as_str())
        .map(|i| Json(json!({ "interfaceAttachment": i })))
        .ok_or_else(|| {
            ApiError::not_found(format!("Port {port_id} is not attached to instance {id}."))
        })
}

/// Why attach and detach are refused.
const NO_HOT_PLUG: &str = "Hot-plugging a network interface is not supported yet: nubo-vmm \
    cannot add or remove a NIC while the guest runs, and a stopped server's NICs are fixed \
    when it is created too. Create the server with the ports it needs (--nic / --port), or \
    create a new server.";

async fn change_interface(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible_server(&st.db.lock(), &ctx, &id)?;
    Err(ApiError::conflict(NO_HOT_PLUG))
}

async fn detach_interface(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, _port)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    visible_server(&st.db.lock(), &ctx, &id)?;
    Err(ApiError::conflict(NO_HOT_PLUG))
}

/// The os-interface routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v2.1/servers/{id}/os-interface",
            get(list_interfaces).post(change_interface),
        )
        .route(
            "/v2.1/servers/{id}/os-interface/{port_id}",
            get(show_interface).delete(detach_interface),
        )
}
