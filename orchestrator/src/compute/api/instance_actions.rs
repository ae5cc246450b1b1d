//! Compute v2.1 os-instance-actions (`openstack server event list/show`):
//! the actions asked of a server, newest first, and each one's compute event
//! with its result. Events are shown to admins, as Nova's default policy
//! does; the failure detail goes in the event's `traceback`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::compute::model::Action;
use crate::compute::service::visible_server;
use crate::compute::store;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ProjectAuth;
use crate::http::AppState;

/// The routes, relative to `/compute` (merged into the compute router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2.1/servers/{id}/os-instance-actions", get(list_actions))
        .route(
            "/v2.1/servers/{id}/os-instance-actions/{request_id}",
            get(show_action),
        )
}

fn action_json(a: &Action) -> Value {
    json!({
        "action": a.action,
        "instance_uuid": a.server_id,
        "message": if a.result.as_deref() == Some("Error") { Some("Error") } else { None },
        "project_id": a.project_id,
        "request_id": a.request_id,
        "start_time": a.start_time,
        "user_id": a.user_id,
    })
}

async fn list_actions(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    visible_server(&conn, &ctx, &id)?;
    let list: Vec<Value> = store::list_actions(&conn, &id)?
        .iter()
        .map(action_json)
        .collect();
    Ok(Json(json!({ "instanceActions": list })))
}

async fn show_action(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, request_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let conn = st.db.lock();
    visible_server(&conn, &ctx, &id)?;
    let a = store::list_actions(&conn, &id)?
        .into_iter()
        .find(|a| a.request_id == request_id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Action for request_id {request_id} on instance {id} not found"
            ))
        })?;
    let mut v = action_json(&a);
    if ctx.is_admin() {
        v["events"] = json!([{
            "event": a.event_name(),
            "start_time": a.start_time,
            "finish_time": a.finish_time,
            "result": a.result,
            "traceback": a.detail,
        }]);
    }
    Ok(Json(json!({ "instanceAction": v })))
}
