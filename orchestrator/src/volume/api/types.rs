//! `/v3/{project}/types`: volume types (admins create and change them;
//! everyone lists the public ones) and their extra specs.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{self, check_project, require_admin};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::AppState;
use crate::volume::model::{VolumeType, DEFAULT_TYPE};
use crate::volume::service::visible_type;
use crate::volume::store;

/// `POST /types` body.
#[derive(Deserialize)]
pub(super) struct CreateBody {
    volume_type: TypeFields,
}

#[derive(Deserialize)]
struct TypeFields {
    name: Option<String>,
    description: Option<String>,
    #[serde(rename = "os-volume-type-access:is_public")]
    access_is_public: Option<bool>,
    is_public: Option<bool>,
    extra_specs: Option<BTreeMap<String, String>>,
}

fn check_specs(specs: &BTreeMap<String, String>) -> ApiResult<()> {
    common::check_metadata(specs)
}

/// `POST /v3/{project}/types` (admin).
pub(super) async fn create_type(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<CreateBody>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:types_manage")?;
    let f = body.volume_type;
    let name = f
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("Invalid input received: name is required."))?;
    common::check_text("name", &Some(name.clone()))?;
    common::check_text("description", &f.description)?;
    let extra_specs = f.extra_specs.unwrap_or_default();
    check_specs(&extra_specs)?;
    let conn = state.db.lock();
    if store::find_type(&conn, &name)?.is_some() {
        return Err(ApiError::conflict(format!(
            "Volume Type {name} already exists."
        )));
    }
    let t = VolumeType {
        id: crate::util::new_id(),
        name,
        description: f.description.unwrap_or_default(),
        is_public: f.access_is_public.or(f.is_public).unwrap_or(true),
        extra_specs,
    };
    store::insert_type(&conn, &t)?;
    Ok(Json(json!({ "volume_type": t.to_json(true) })))
}

/// `GET /v3/{project}/types`: the public ones (all for an admin).
pub(super) async fn list_types(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    let types = store::list_types(&state.db.lock(), ctx.is_admin())?;
    let shown: Vec<Value> = types.iter().map(|t| t.to_json(ctx.is_admin())).collect();
    Ok(Json(json!({ "volume_types": shown })))
}

/// `GET /v3/{project}/types/{id}` (`default` is the default type).
pub(super) async fn show_type(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    let id = if id == "default" {
        DEFAULT_TYPE.to_string()
    } else {
        id
    };
    let t = visible_type(&state.db.lock(), ctx.is_admin(), &id)?;
    Ok(Json(json!({ "volume_type": t.to_json(ctx.is_admin()) })))
}

/// `PUT /types/{id}` body.
#[derive(Deserialize)]
pub(super) struct UpdateBody {
    volume_type: TypeFields,
}

/// `PUT /v3/{project}/types/{id}` (admin): name, description, visibility.
pub(super) async fn update_type(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:types_manage")?;
    let f = body.volume_type;
    common::check_text("name", &f.name)?;
    common::check_text("description", &f.description)?;
    let conn = state.db.lock();
    let mut t = visible_type(&conn, true, &id)?;
    if let Some(n) = f.name.filter(|n| !n.trim().is_empty()) {
        if t.name == DEFAULT_TYPE && n != DEFAULT_TYPE {
            return Err(ApiError::bad_request(
                "Invalid input received: the default volume type cannot be renamed.",
            ));
        }
        t.name = n;
    }
    if let Some(d) = f.description {
        t.description = d;
    }
    if let Some(p) = f.access_is_public.or(f.is_public) {
        t.is_public = p;
    }
    store::update_type(&conn, &t)?;
    Ok(Json(json!({ "volume_type": t.to_json(true) })))
}

/// `DELETE /v3/{project}/types/{id}` (admin): 400 while volumes use it.
pub(super) async fn delete_type(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:types_manage")?;
    let conn = state.db.lock();
    let t = visible_type(&conn, true, &id)?;
    if t.name == DEFAULT_TYPE {
        return Err(ApiError::bad_request(
            "Invalid volume type: Default volume type can not be deleted.",
        ));
    }
    if store::type_in_use(&conn, &t.id)? {
        return Err(ApiError::bad_request(format!(
            "Invalid volume type: Target volume type {} is still in use.",
            t.id
        )));
    }
    store::delete_type(&conn, &t.id)?;
    Ok(StatusCode::ACCEPTED)
}

/// `{"extra_specs": {...}}`.
#[derive(Deserialize)]
pub(super) struct SpecsBody {
    extra_specs: BTreeMap<String, String>,
}

/// `GET /v3/{project}/types/{id}/extra_specs` (admin).
pub(super) async fn show_specs(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:types_extra_specs:index")?;
    let t = visible_type(&state.db.lock(), true, &id)?;
    Ok(Json(json!({ "extra_specs": t.extra_specs })))
}

/// `POST /v3/{project}/types/{id}/extra_specs` (admin): merges.
pub(super) async fn set_specs(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<SpecsBody>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:types_extra_specs:create")?;
    check_specs(&body.extra_specs)?;
    let conn = state.db.lock();
    let mut t = visible_type(&conn, true, &id)?;
    if body.extra_specs.contains_key("volume_backend_name") && store::type_in_use(&conn, &t.id)? {
        return Err(ApiError::bad_request(format!(
            "Invalid volume type: Target volume type {} is still in use; its backend cannot change.",
            t.id
        )));
    }
    t.extra_specs.extend(body.extra_specs.clone());
    store::update_type(&conn, &t)?;
    Ok(Json(json!({ "extra_specs": body.extra_specs })))
}

/// `DELETE /v3/{project}/types/{id}/extra_specs/{key}` (admin).
pub(super) async fn delete_spec(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id, key)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:types_extra_specs:delete")?;
    let conn = state.db.lock();
    let mut t = visible_type(&conn, true, &id)?;
    if t.extra_specs.remove(&key).is_none() {
        return Err(ApiError::not_found(format!(
            "Volume Type {id} has no extra specs with key {key}."
        )));
    }
    store::update_type(&conn, &t)?;
    Ok(StatusCode::ACCEPTED)
}

/// `GET /v3/{project}/types/{id}/os-volume-type-access` (admin): who may
/// use a private type. Nubo keeps no access lists: private types are for
/// admins only, so the list is empty.
pub(super) async fn type_access(
    State(state): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&ctx, &project)?;
    require_admin(&ctx, "volume_extension:volume_type_access")?;
    let t = visible_type(&state.db.lock(), true, &id)?;
    if t.is_public {
        return Err(ApiError::not_found(format!(
            "Volume type access not found for {id}: the type is public."
        )));
    }
    Ok(Json(json!({ "volume_type_access": [] })))
}
