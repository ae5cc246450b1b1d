//! `/v2.1/servers/{id}/os-volume_attachments`: a server's volumes (Nova's
//! volume attachments, microversion 2.1 shapes): list, show, attach (hot-
//! plugged into an ACTIVE server, plugged at the next start of a SHUTOFF
//! one) and detach. Swapping a volume (PUT) is not implemented.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{check_microversion, require_writer};
use crate::compute::model::Server;
use crate::compute::service::visible_server;
use crate::compute::volumes;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::AppState;
use crate::identity::AuthContext;
use crate::volume::attachments::Attachment;

/// One attachment as Nova shows it (2.1: the attachment's id is the
/// volume's).
fn attachment_json(a: &Attachment) -> Value {
    json!({
        "id": a.volume_id,
        "serverId": a.server_id,
        "volumeId": a.volume_id,
        "device": a.device,
    })
}

fn server(st: &AppState, ctx: &AuthContext, id: &str) -> ApiResult<Server> {
    visible_server(&st.db.lock(), ctx, id)
}

async fn list_attachments(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = server(&st, &ctx, &id)?;
    let atts = volumes::attachments(&st.compute, &s.id).await?;
    let list: Vec<Value> = atts.iter().map(attachment_json).collect();
    Ok(Json(json!({ "volumeAttachments": list })))
}

async fn show_attachment(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, volume_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let s = server(&st, &ctx, &id)?;
    let atts = volumes::attachments(&st.compute, &s.id).await?;
    atts.iter()
        .find(|a| a.volume_id == volume_id)
        .map(|a| Json(json!({ "volumeAttachment": attachment_json(a) })))
        .ok_or_else(|| volumes::not_attached(&s.id, &volume_id))
}

/// `{"volumeAttachment": {...}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachReq {
    #[serde(rename = "volumeAttachment")]
    attachment: AttachFields,
}

/// The 2.1 fields (`tag` needs 2.49, `delete_on_termination` 2.79).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachFields {
    #[serde(rename = "volumeId")]
    volume_id: String,
    /// Ignored, as Nova's libvirt driver does: the next free name is used.
    #[serde(default)]
    device: Option<String>,
}

async fn attach_volume(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<AttachReq>,
) -> ApiResult<Json<Value>> {
    check_microversion(&headers)?;
    require_writer(&ctx)?;
    let s = server(&st, &ctx, &id)?;
    let f = req.attachment;
    if f.volume_id.trim().is_empty() {
        return Err(ApiError::bad_request(
            "Invalid input for field/attribute volumeId. Value: ''. '' is too short",
        ));
    }
    if let Some(d) = f.device.as_deref().filter(|d| !d.is_empty()) {
        tracing::debug!(server = %s.id, device = d, "the requested device name is ignored");
    }
    let att = volumes::attach(&st.compute, &s, &f.volume_id, false).await?;
    Ok(Json(json!({ "volumeAttachment": attachment_json(&att) })))
}

async fn swap_volume(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, _volume_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    server(&st, &ctx, &id)?;
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "Swapping a server's volume is not implemented: detach it and attach the other one",
    ))
}

async fn detach_volume(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, volume_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    require_writer(&ctx)?;
    let s = server(&st, &ctx, &id)?;
    volumes::detach(&st.compute, &s, &volume_id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// The routes, relative to `/compute`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v2.1/servers/{id}/os-volume_attachments",
            get(list_attachments).post(attach_volume),
        )
        .route(
            "/v2.1/servers/{id}/os-volume_attachments/{volume_id}",
            get(show_attachment).put(swap_volume).delete(detach_volume),
        )
}
