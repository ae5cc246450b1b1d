//! `/v3/{project}/volumes`: create, list (summary and detail), show,
//! update, delete, metadata and actions.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{self, check_project, require_admin, require_writer};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{BaseUrl, JsonBody, ProjectAuth};
use crate::http::AppState;
use crate::volume::model::{Volume, VolumeView};
use crate::volume::service::{visible_volume, Caller, CreateVolume};
use crate::volume::store::{self, VolumeFilter};

/// A volume as the caller sees it.
pub(super) fn view(
    state: &AppState,
    base: &str,
    admin: bool,
    v: &Volume,
    detail: bool,
) -> ApiResult<Value> {
    let conn = state.db.lock();
    let type_name = store::find_type(&conn, &v.volume_type_id)?
        .map(|t| t.name)
        .unwrap_or_default();
    let attachments = store::attachment_views(&conn, &v.id)?;
    let view = VolumeView {
        volume: v,
        type_name: &type_name,
        attachments: &attachments,
        admin,
        base,
        host: crate::compute::host_name(),
    };
    Ok(if detail {
        view.detail()
    } else {
        view.summary()
    })
}

fn size_of(v: &Option<Value>) -> ApiResult<Option<i64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| bad_size(v)),
        Some(Value::String(s)) => s.trim().parse::<i64>().map(Some).map_err(|_| bad_size(v)),
        Some(_) => Err(bad_size(v)),
    }
}

fn bad_size(v: &Option<Value>) -> ApiError {
    let shown = v.as_ref().map(Value::to_string).unwrap_or_default();
    ApiError::bad_request(format!(
        "Invalid input received: Volume size '{shown}' must be an integer and greater than 0."
    ))
}

/// `POST /volumes` body.
#[derive(Deserialize)]
pub(super) struct CreateBody {
    volume: CreateFields,
}

#[derive(Deserialize)]
struct CreateFields {
    size: Option<Value>,
    name: Option<String>,
    description: Option<String>,
    volume_type: Option<String>,
    availability_zone: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "imageRef")]
    image_ref: Option<String>,
    snapshot_id: Option<String>,
    source_volid: Option<String>,
    backup_id: Option<String>,
    consistencygroup_id: Option<String>,
}

/// `POST /v3/{project}/volumes`: 202 with the volume `creating`.
pub(super) async fn create_volume(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    check_project(&ctx, &project)?;
    require_writer(&ctx)?;
    let f = body.volume;
    common::check_text("name", &f.name)?;
    common::check_text("description", &f.description)?;
    let metadata = f.metadata.unwrap_or_default();
    common::check_metadata(&metadata)?;
    if let Some(az) = f.availability_zone.as_deref().filter(|z| *z != "nova") {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: Availability zone '{az}' is invalid."
        )));
    }
    if f.backup_id.is_some() || f.consistencygroup_id.is_some() {
        return Err(ApiError::bad_request(
            "Invalid input received: backups and consistency groups are not supported.",
        ));
    }
    let req = CreateVolume {
        size: size_of(&f.size)?,
        name: f.name,
        description: f.description,
        volume_type: f.volume_type,
        metadata,
        image_id: f.image_ref.filter(|s| !s.is_empty()),
        snapshot_id: f.snapshot_id.filter(|s| !s.is_empty()),
        source_volid: f.source_volid.filter(|s| !s.is_empty()),
    };
    let caller = Caller {
        project_id: &ctx.project_id,
        user_id: &ctx.user_id,
        ctx: Some(&ctx),
    };
    let (vol, _task) = state.volume.create_volume(&caller, &req)?;
    let shown = view(&state, &base, ctx.is_admin(), &vol, true)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "volume": shown }))))
}

async fn list(
    state: &AppState,
    ctx: &crate::identity::AuthContext,
    base: &str,
    project: &str,
    q: &HashMap<String, String>,
    detail: bool,
) -> ApiResult<Json<Value>> {
    check_project(ctx, project)?;
    let limit = common::limit_param(q)?;
    let mut filter = VolumeFilter {
        project_id: Some(project.to_string()),
        name: q.get("name").cloned(),
        status: q.get("status").cloned(),
        marker: q.get("marker").cloned(),
        limit: Some(limit),
    };
    if ctx.is_admin() && common::all_tenants(q) {
        filter.project_id = q.get("project_id").cloned();
    }
    let vols = store::list_volumes(&state.db.lock(), &filter)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "Marker {} could not be found.",
            q.get("marker").cloned().unwrap_or_default()
        ))
    })?;
    let shown = vols
        .iter()
        .map(|v| view(state, base, ctx.is_admin(), v, detail))
        .collect::<ApiResult<Vec<_>>>()?;
    let path = format!(
        "/volume/v3/{project}/volumes{}",
        if detail { "/detail" } else { "" }
    );
    let mut out = json!({ "volumes": shown });
    if let Some(links) = common::next_links(
        base,
        &path,
        q,
        limit,
        vols.len(),
        vols.last().map(|v| v.id.as_str()),
    ) {
        out["volumes_links"] = links;
    }
    Ok(Json(out))
}

/// `GET /v3/{project}/volumes`.
pub(super) async fn list_volumes(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&state, &ctx, &base, &project, &q, false).await
}

/// `GET /v3/{project}/volumes/detail`.
pub(super) async fn list_volumes_detail(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&state, &ctx, &base, &project, &q, true).await
}

/// `GET /v3/{project}/volumes/{id}`.
pub(super) async fn show_volume(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    let vol = visible_volume(&state.db.lock(), &ctx, &id)?;
    Ok(Json(
        json!({ "volume": view(&state, &base, ctx.is_admin(), &vol, true)? }),
    ))
}

/// `PUT /volumes/{id}` body.
#[derive(Deserialize)]
pub(super) struct UpdateBody {
    volume: UpdateFields,
}

#[derive(Deserialize)]
struct UpdateFields {
    name: Option<String>,
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

/// `PUT /v3/{project}/volumes/{id}`: name, description, metadata.
pub(super) async fn update_volume(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    BaseUrl(base): BaseUrl,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    require_writer(&ctx)?;
    let f = body.volume;
    common::check_text("name", &f.name)?;
    common::check_text("description", &f.description)?;
    let vol = {
        let conn = state.db.lock();
        let mut vol = visible_volume(&conn, &ctx, &id)?;
        if f.name.is_some() {
            vol.name = f.name;
        }
        if f.description.is_some() {
            vol.description = f.description;
        }
        if let Some(m) = f.metadata {
            common::check_metadata(&m)?;
            vol.metadata = m;
        }
        store::update_volume(&conn, &vol)?;
        vol
    };
    Ok(Json(
        json!({ "volume": view(&state, &base, ctx.is_admin(), &vol, true)? }),
    ))
}

/// `DELETE /v3/{project}/volumes/{id}`: 202, the volume `deleting`.
pub(super) async fn delete_volume(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    check_project(&ctx, &project)?;
    require_writer(&ctx)?;
    let force = q.get("force").is_some_and(|v| v == "true" || v == "True");
    if force {
        require_admin(&ctx, "volume:force_delete")?;
    }
    let vol = visible_volume(&state.db.lock(), &ctx, &id)?;
    state.volume.delete_volume(&vol, force)?;
    Ok(StatusCode::ACCEPTED)
}

/// `{"metadata": {...}}`.
#[derive(Deserialize)]
pub(super) struct MetadataBody {
    metadata: BTreeMap<String, String>,
}

async fn write_metadata(
    state: &AppState,
    ctx: &crate::identity::AuthContext,
    project: &str,
    id: &str,
    new: BTreeMap<String, String>,
    replace: bool,
) -> ApiResult<Json<Value>> {
    check_project(ctx, project)?;
    require_writer(ctx)?;
    common::check_metadata(&new)?;
    let conn = state.db.lock();
    let mut vol = visible_volume(&conn, ctx, id)?;
    if replace {
        vol.metadata = new;
    } else {
        vol.metadata.extend(new);
    }
    store::update_volume(&conn, &vol)?;
    Ok(Json(json!({ "metadata": vol.metadata })))
}

/// `GET /v3/{project}/volumes/{id}/metadata`.
pub(super) async fn show_metadata(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    let vol = visible_volume(&state.db.lock(), &ctx, &id)?;
    Ok(Json(json!({ "metadata": vol.metadata })))
}

/// `POST /v3/{project}/volumes/{id}/metadata`: merges.
pub(super) async fn merge_metadata(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<MetadataBody>,
) -> ApiResult<Json<Value>> {
    write_metadata(&state, &ctx, &project, &id, body.metadata, false).await
}

/// `PUT /v3/{project}/volumes/{id}/metadata`: replaces.
pub(super) async fn replace_metadata(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<MetadataBody>,
) -> ApiResult<Json<Value>> {
    write_metadata(&state, &ctx, &project, &id, body.metadata, true).await
}

/// `DELETE /v3/{project}/volumes/{id}/metadata/{key}`.
pub(super) async fn delete_metadata_key(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id, key)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    check_project(&ctx, &project)?;
    require_writer(&ctx)?;
    let conn = state.db.lock();
    let mut vol = visible_volume(&conn, &ctx, &id)?;
    if vol.metadata.remove(&key).is_none() {
        return Err(ApiError::not_found(format!(
            "Volume {id} has no metadata with key {key}."
        )));
    }
    store::update_volume(&conn, &vol)?;
    Ok(StatusCode::OK)
}

/// `POST /v3/{project}/volumes/{id}/action`: `os-extend`,
/// `os-reset_status` (admin), `os-set_bootable`, `os-force_delete` (admin),
/// `os-update_readonly_flag` (accepted, nothing to do).
pub(super) async fn volume_action(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    headers: HeaderMap,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<StatusCode> {
    check_project(&ctx, &project)?;
    require_writer(&ctx)?;
    let Some((action, args)) = body.as_object().and_then(|o| o.iter().next()) else {
        return Err(ApiError::bad_request(
            "Invalid input received: no action given.",
        ));
    };
    let vol = visible_volume(&state.db.lock(), &ctx, &id)?;
    match action.as_str() {
        "os-extend" => {
            let new_size = size_of(&args.get("new_size").cloned())?.ok_or_else(|| {
                ApiError::bad_request("Invalid input received: new_size is required.")
            })?;
            let mv = common::microversion(&headers)?;
            state.volume.extend(&vol, new_size, mv)?;
            Ok(StatusCode::ACCEPTED)
        }
        "os-reset_status" => {
            require_admin(&ctx, "volume_extension:volume_admin_actions:reset_status")?;
            if let Some(s) = args.get("status").and_then(Value::as_str) {
                state.volume.reset_status(&vol, s)?;
            }
            Ok(StatusCode::ACCEPTED)
        }
        "os-set_bootable" => {
            let bootable = match args.get("bootable") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
                _ => {
                    return Err(ApiError::bad_request(
                        "Invalid input received: bootable must be a boolean.",
                    ))
                }
            };
            let conn = state.db.lock();
            let mut v = vol;
            v.bootable = bootable;
            store::update_volume(&conn, &v)?;
            Ok(StatusCode::OK)
        }
        "os-force_delete" => {
            require_admin(&ctx, "volume_extension:volume_admin_actions:force_delete")?;
            state.volume.delete_volume(&vol, true)?;
            Ok(StatusCode::ACCEPTED)
        }
        "os-update_readonly_flag" => Ok(StatusCode::ACCEPTED),
        other => Err(ApiError::bad_request(format!(
            "Invalid input received: there is no such action: {other}"
        ))),
    }
}
