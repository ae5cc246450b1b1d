//! `/v2/images` and `/v2/images/{id}`: create, show, delete, patch and tags.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::AppState;
use crate::image::files::StoreError;
use crate::image::model::*;
use crate::image::service::*;
use crate::image::store;
use crate::util::now_iso;

// ---------------------------------------------------------------- create

pub(crate) fn normalize_id(v: &Value) -> ApiResult<String> {
    let s = v
        .as_str()
        .ok_or_else(|| bad_value("id", &format!("{v} is not of type 'string'")))?;
    uuid::Uuid::try_parse(s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| bad_value("id", &format!("{s:?} is not a valid UUID")))
}

pub(crate) async fn create_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Response> {
    check_can_write(&ctx)?;
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object.",
        ));
    };
    let now = now_iso();
    let mut img = Image {
        id: crate::util::new_id(),
        name: None,
        owner: ctx.project_id.clone(),
        status: "queued".into(),
        visibility: "shared".into(),
        protected: false,
        os_hidden: false,
        disk_format: None,
        container_format: None,
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        min_disk: 0,
        min_ram: 0,
        properties: Map::new(),
        tags: Vec::new(),
        created_at: now.clone(),
        updated_at: now,
    };
    for (key, v) in &body {
        match classify(key) {
            Attr::Core => set_core(&mut img, &ctx, key, v, true)?,
            Attr::ReadOnly if key == "id" => img.id = normalize_id(v)?,
            Attr::ReadOnly => return Err(read_only(key)),
            Attr::Reserved => return Err(reserved(key)),
            Attr::Extra => set_extra(&mut img, key, v)?,
        }
    }
    {
        let conn = st.db.lock();
        if store::load(&conn, &img.id)?.is_some() {
            return Err(ApiError::conflict(format!(
                "An image with identifier {} already exists",
                img.id
            )));
        }
        store::insert(&conn, &img)?;
    }
    let mut resp = (StatusCode::CREATED, Json(render(&img))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/images/{}", img.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

// ---------------------------------------------------------------- show, delete

pub(crate) async fn show_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let img = load_visible(&st.db.lock(), &ctx, &id)?;
    Ok(Json(render(&img)))
}

pub(crate) async fn delete_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    {
        let conn = st.db.lock();
        let img = load_writable(&conn, &ctx, &id)?;
        if img.protected {
            return Err(ApiError::forbidden(format!(
                "Image {id} is protected and cannot be deleted."
            )));
        }
        store::delete(&conn, &id)?;
    }
    // Servers booted from the image (or from its kernel or ramdisk) keep
    // using its file: it stays until the last of them is deleted.
    let used = {
        let (db, compute) = (st.db.clone(), st.compute.clone());
        tokio::task::spawn_blocking(move || {
            crate::compute::image_use::images_in_use(&db, compute.vmm.as_ref(), &compute.images)
        })
        .await
        .map_err(ApiError::internal)?
    };
    if crate::compute::image_use::is_used(&used, &id) {
        tracing::info!(image = %id, "image deleted; its file stays while servers use it");
        return Ok(StatusCode::NO_CONTENT);
    }
    // The row is gone first: an upload still running then fails to activate
    // and removes what it wrote; this removes its partial file meanwhile.
    match st.images.remove(&id) {
        Ok(()) | Err(StoreError::InvalidId(_)) => {}
        Err(e) => tracing::warn!(image = %id, error = %e, "cannot remove image data"),
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn patch_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !PATCH_TYPES.contains(&ctype.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Unsupported Content-Type '{ctype}': use one of {}",
                PATCH_TYPES.join(", ")
            ),
        ));
    }
    let Value::Array(ops) = body else {
        return Err(ApiError::bad_request(
            "Request body must be a JSON array of operation objects.",
        ));
    };
    let conn = st.db.lock();
    let mut img = load_writable(&conn, &ctx, &id)?;
    for op in &ops {
        apply_op(&mut img, &ctx, op)?;
    }
    img.updated_at = now_iso();
    if !store::save_meta(&conn, &img)? {
        return Err(not_found(&id));
    }
    // Status and data fields may have changed meanwhile (an upload ending).
    let img = store::load(&conn, &id)?.ok_or_else(|| not_found(&id))?;
    Ok(Json(render(&img)))
}

// ---------------------------------------------------------------- tags

pub(crate) async fn add_tag(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_tag(&tag)?;
    let conn = st.db.lock();
    let mut img = load_writable(&conn, &ctx, &id)?;
    if !img.tags.contains(&tag) {
        img.tags.push(tag);
        if img.tags.len() > MAX_TAGS {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Maximum number of tags exceeded: at most {MAX_TAGS}"),
            ));
        }
        img.updated_at = now_iso();
        store::save_meta(&conn, &img)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn remove_tag(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let conn = st.db.lock();
    let mut img = load_writable(&conn, &ctx, &id)?;
    let before = img.tags.len();
    img.tags.retain(|t| *t != tag);
    if img.tags.len() == before {
        return Err(ApiError::not_found(format!("Tag {tag} not found.")));
    }
    img.updated_at = now_iso();
    store::save_meta(&conn, &img)?;
    Ok(StatusCode::NO_CONTENT)
}
