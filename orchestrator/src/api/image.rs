//! Image v2 (a Glance subset): create, upload, download, list, show, patch
//! (JSON patch), delete, tags and the image schemas. Bodies are flat (no
//! envelope), as in Glance; extra properties are top-level string keys.
//!
//! Statuses: `queued` (no data) → `saving` (upload running) → `active`, and
//! `killed` when an upload fails (the partial file is removed by the store).
//! Visibility: a non-admin sees its project's images and public and community
//! ones (`shared` images only by their owner: there are no members); admin
//! sees everything. Only the owner project (member role) or an admin changes
//! an image.

use std::cmp::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};
use tokio::io::AsyncReadExt;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{JsonBody, ProjectAuth};
use crate::http::policy;
use crate::http::versions;
use crate::http::AppState;
use crate::identity::AuthContext;
use crate::image_store::{DiskFormat, StoreError, ALLOWED_DISK_FORMATS};
use crate::util::now_iso;

#[cfg(test)]
mod tests;

/// The image routes, relative to `/image`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(versions::image_versions))
        .route("/versions", get(versions::image_versions))
        .route("/v2/images", get(list_images).post(create_image))
        .route(
            "/v2/images/{id}",
            get(show_image).patch(patch_image).delete(delete_image),
        )
        .route(
            "/v2/images/{id}/file",
            put(upload_image)
                .get(download_image)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v2/images/{id}/tags/{tag}",
            put(add_tag).delete(remove_tag),
        )
        .route("/v2/schemas/image", get(image_schema))
        .route("/v2/schemas/images", get(images_schema))
}

/// Container formats we accept (Glance does not check them).
pub const ALLOWED_CONTAINER_FORMATS: &[&str] = &["bare", "ovf", "aki", "ari"];
const VISIBILITIES: &[&str] = &["private", "shared", "community", "public"];
/// Glance's `image_property_quota` and `image_tag_quota`.
const MAX_PROPERTIES: usize = 128;
const MAX_TAGS: usize = 128;
const MAX_INT: i64 = i32::MAX as i64;
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

/// What the compute service needs to know about a bootable image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    /// Image id.
    pub id: String,
    /// Name, if any.
    pub name: Option<String>,
    /// Owner project id.
    pub owner: String,
    /// `queued`, `saving`, `active` or `killed`.
    pub status: String,
    /// `private`, `shared`, `community` or `public`.
    pub visibility: String,
    /// `raw`, `qcow2`, `aki`, `ari` or unset.
    pub disk_format: Option<String>,
    /// Size of the data in bytes, once uploaded.
    pub size: Option<i64>,
    /// Size of the disk the image holds, in bytes, once uploaded.
    pub virtual_size: Option<i64>,
    /// Minimum disk (GiB).
    pub min_disk: i64,
    /// Minimum RAM (MiB).
    pub min_ram: i64,
    /// Extra properties (string values).
    pub properties: Map<String, Value>,
}

/// The image `id` if the caller may see it (see the module documentation),
/// `None` if it does not exist or is not visible.
pub fn lookup_visible(
    conn: &Connection,
    ctx: &AuthContext,
    id: &str,
) -> ApiResult<Option<ImageRow>> {
    Ok(load(conn, id)?
        .filter(|img| visible(ctx, img))
        .map(|img| ImageRow {
            id: img.id,
            name: img.name,
            owner: img.owner,
            status: img.status,
            visibility: img.visibility,
            disk_format: img.disk_format,
            size: img.size,
            virtual_size: img.virtual_size,
            min_disk: img.min_disk,
            min_ram: img.min_ram,
            properties: img.properties,
        }))
}

/// A whole `images` row.
#[derive(Debug, Clone)]
struct Image {
    id: String,
    name: Option<String>,
    owner: String,
    status: String,
    visibility: String,
    protected: bool,
    os_hidden: bool,
    disk_format: Option<String>,
    container_format: Option<String>,
    size: Option<i64>,
    virtual_size: Option<i64>,
    checksum: Option<String>,
    os_hash_algo: Option<String>,
    os_hash_value: Option<String>,
    min_disk: i64,
    min_ram: i64,
    properties: Map<String, Value>,
    tags: Vec<String>,
    created_at: String,
    updated_at: String,
}

const COLUMNS: &str = "id, name, owner, status, visibility, protected, os_hidden, disk_format, \
     container_format, size, virtual_size, checksum, os_hash_algo, os_hash_value, min_disk, \
     min_ram, properties, tags, created_at, updated_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Image> {
    let props: String = r.get(16)?;
    let tags: String = r.get(17)?;
    Ok(Image {
        id: r.get(0)?,
        name: r.get(1)?,
        owner: r.get(2)?,
        status: r.get(3)?,
        visibility: r.get(4)?,
        protected: r.get(5)?,
        os_hidden: r.get(6)?,
        disk_format: r.get(7)?,
        container_format: r.get(8)?,
        size: r.get(9)?,
        virtual_size: r.get(10)?,
        checksum: r.get(11)?,
        os_hash_algo: r.get(12)?,
        os_hash_value: r.get(13)?,
        min_disk: r.get(14)?,
        min_ram: r.get(15)?,
        properties: serde_json::from_str(&props).unwrap_or_default(),
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        created_at: r.get(18)?,
        updated_at: r.get(19)?,
    })
}

fn load(conn: &Connection, id: &str) -> ApiResult<Option<Image>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM images WHERE id = ?1"),
            params![id],
            from_row,
        )
        .optional()?)
}

fn insert(conn: &Connection, img: &Image) -> ApiResult<()> {
    conn.execute(
        &format!(
            "INSERT INTO images ({COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ),
        params![
            img.id,
            img.name,
            img.owner,
            img.status,
            img.visibility,
            img.protected,
            img.os_hidden,
            img.disk_format,
            img.container_format,
            img.size,
            img.virtual_size,
            img.checksum,
            img.os_hash_algo,
            img.os_hash_value,
            img.min_disk,
            img.min_ram,
            Value::Object(img.properties.clone()).to_string(),
            json!(img.tags).to_string(),
            img.created_at,
            img.updated_at,
        ],
    )?;
    Ok(())
}

/// Writes the user-changeable fields of `img` (not status or data fields,
/// which only the upload changes). Returns whether the row still exists.
fn save_meta(conn: &Connection, img: &Image) -> ApiResult<bool> {
    let n = conn.execute(
        "UPDATE images SET name = ?2, owner = ?3, visibility = ?4, protected = ?5, \
         os_hidden = ?6, disk_format = ?7, container_format = ?8, min_disk = ?9, min_ram = ?10, \
         properties = ?11, tags = ?12, updated_at = ?13 WHERE id = ?1",
        params![
            img.id,
            img.name,
            img.owner,
            img.visibility,
            img.protected,
            img.os_hidden,
            img.disk_format,
            img.container_format,
            img.min_disk,
            img.min_ram,
            Value::Object(img.properties.clone()).to_string(),
            json!(img.tags).to_string(),
            img.updated_at,
        ],
    )?;
    Ok(n == 1)
}

fn visible(ctx: &AuthContext, img: &Image) -> bool {
    ctx.may_see_image(&img.owner, &img.visibility)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No image found with ID {id}"))
}

/// The image if the caller may see it, else 404.
fn load_visible(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Image> {
    match load(conn, id)? {
        Some(img) if visible(ctx, &img) => Ok(img),
        _ => Err(not_found(id)),
    }
}

fn check_can_write(ctx: &AuthContext) -> ApiResult<()> {
    policy::require_member(
        ctx,
        "You are not authorized to complete this action: the reader role cannot change images.",
    )
}

/// The image if the caller may change it: 404 when it cannot see it, 403
/// when it can see but does not own it (or only reads).
fn load_writable(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Image> {
    let img = load_visible(conn, ctx, id)?;
    check_can_write(ctx)?;
    if !ctx.is_admin() && img.owner != ctx.project_id {
        return Err(ApiError::forbidden(format!(
            "You are not permitted to modify image {id}: it belongs to another project."
        )));
    }
    Ok(img)
}

/// Glance's image JSON.
fn render(img: &Image) -> Value {
    let mut m = Map::new();
    // Extra properties first, so that core fields always win.
    for (k, v) in &img.properties {
        m.insert(k.clone(), v.clone());
    }
    let core = json!({
        "id": img.id,
        "name": img.name,
        "status": img.status,
        "visibility": img.visibility,
        "protected": img.protected,
        "os_hidden": img.os_hidden,
        "checksum": img.checksum,
        "os_hash_algo": img.os_hash_algo,
        "os_hash_value": img.os_hash_value,
        "owner": img.owner,
        "size": img.size,
        "virtual_size": img.virtual_size,
        "min_ram": img.min_ram,
        "min_disk": img.min_disk,
        "disk_format": img.disk_format,
        "container_format": img.container_format,
        "created_at": img.created_at,
        "updated_at": img.updated_at,
        "tags": img.tags,
        "self": format!("/v2/images/{}", img.id),
        "file": format!("/v2/images/{}/file", img.id),
        "schema": "/v2/schemas/image",
    });
    if let Value::Object(core) = core {
        m.extend(core);
    }
    Value::Object(m)
}

// ---------------------------------------------------------------- attributes

/// How a top-level image key is treated in create and patch.
#[derive(Debug, PartialEq, Eq)]
enum Attr {
    /// A core attribute the user may set.
    Core,
    /// Set by the service only.
    ReadOnly,
    /// Not usable at all.
    Reserved,
    /// An extra (string) property.
    Extra,
}

fn classify(key: &str) -> Attr {
    match key {
        "name" | "visibility" | "protected" | "os_hidden" | "min_disk" | "min_ram" | "tags"
        | "disk_format" | "container_format" | "owner" => Attr::Core,
        "id" | "status" | "size" | "virtual_size" | "checksum" | "os_hash_algo"
        | "os_hash_value" | "created_at" | "updated_at" | "self" | "file" | "schema"
        | "direct_url" | "locations" => Attr::ReadOnly,
        "deleted" | "deleted_at" | "location" | "stores" => Attr::Reserved,
        k if k.starts_with("os_glance") => Attr::Reserved,
        _ => Attr::Extra,
    }
}

fn read_only(key: &str) -> ApiError {
    ApiError::forbidden(format!("Attribute '{key}' is read-only."))
}

fn reserved(key: &str) -> ApiError {
    ApiError::forbidden(format!("Attribute '{key}' is reserved."))
}

fn bad_value(key: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("Invalid value for '{key}': {why}"))
}

fn get_bool(key: &str, v: &Value) -> ApiResult<bool> {
    v.as_bool()
        .ok_or_else(|| bad_value(key, &format!("{v} is not of type 'boolean'")))
}

fn get_int(key: &str, v: &Value) -> ApiResult<i64> {
    match v.as_i64() {
        Some(n) if (0..=MAX_INT).contains(&n) => Ok(n),
        Some(n) => Err(bad_value(
            key,
            &format!("{n} must be between 0 and {MAX_INT}"),
        )),
        None => Err(bad_value(key, &format!("{v} is not of type 'integer'"))),
    }
}

fn get_opt_enum(key: &str, v: &Value, allowed: &[&str]) -> ApiResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if allowed.contains(&s.as_str()) => Ok(Some(s.clone())),
        _ => Err(bad_value(
            key,
            &format!("{v} is not one of {}", allowed.join(", ")),
        )),
    }
}

fn get_tags(v: &Value) -> ApiResult<Vec<String>> {
    let Value::Array(items) = v else {
        return Err(bad_value("tags", &format!("{v} is not of type 'array'")));
    };
    let mut tags: Vec<String> = Vec::new();
    for t in items {
        let Value::String(s) = t else {
            return Err(bad_value("tags", &format!("{t} is not of type 'string'")));
        };
        check_tag(s)?;
        if !tags.contains(s) {
            tags.push(s.clone());
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Maximum number of tags exceeded: at most {MAX_TAGS}"),
        ));
    }
    Ok(tags)
}

fn check_tag(tag: &str) -> ApiResult<()> {
    if tag.is_empty() || tag.chars().count() > 255 {
        return Err(bad_value("tags", "a tag must be 1 to 255 characters"));
    }
    Ok(())
}

/// Sets a core attribute (see [`classify`]) from a JSON value.
fn set_core(
    img: &mut Image,
    ctx: &AuthContext,
    key: &str,
    v: &Value,
    creating: bool,
) -> ApiResult<()> {
    match key {
        "name" => match v {
            Value::Null => img.name = None,
            Value::String(s) if crate::util::has_control_chars(s) => {
                return Err(bad_value(key, "contains control characters"))
            }
            Value::String(s) if s.chars().count() <= 255 => img.name = Some(s.clone()),
            Value::String(_) => return Err(bad_value(key, "longer than 255 characters")),
            _ => return Err(bad_value(key, &format!("{v} is not of type 'string'"))),
        },
        "visibility" => {
            let vis = get_opt_enum(key, v, VISIBILITIES)?.ok_or_else(|| {
                bad_value(
                    key,
                    &format!("null is not one of {}", VISIBILITIES.join(", ")),
                )
            })?;
            if vis == "public" && !ctx.is_admin() && img.visibility != "public" {
                return Err(ApiError::forbidden(
                    "You are not authorized to complete publicize_image action: only an admin can make an image public.",
                ));
            }
            img.visibility = vis;
        }
        "protected" => img.protected = get_bool(key, v)?,
        "os_hidden" => img.os_hidden = get_bool(key, v)?,
        "min_disk" => img.min_disk = get_int(key, v)?,
        "min_ram" => img.min_ram = get_int(key, v)?,
        "tags" => img.tags = get_tags(v)?,
        "disk_format" | "container_format" => {
            if !creating && img.status != "queued" {
                return Err(ApiError::forbidden(format!(
                    "Attribute {key} can be only replaced for a queued image."
                )));
            }
            let allowed = if key == "disk_format" {
                ALLOWED_DISK_FORMATS
            } else {
                ALLOWED_CONTAINER_FORMATS
            };
            let val = get_opt_enum(key, v, allowed)?;
            if key == "disk_format" {
                img.disk_format = val;
            } else {
                img.container_format = val;
            }
        }
        "owner" => {
            let Value::String(owner) = v else {
                return Err(bad_value(key, &format!("{v} is not of type 'string'")));
            };
            if owner.is_empty() || owner.len() > 255 {
                return Err(bad_value(key, "must be 1 to 255 characters"));
            }
            if !ctx.is_admin() && *owner != ctx.project_id {
                return Err(ApiError::forbidden(format!(
                    "You are not permitted to create or change images owned by '{owner}'."
                )));
            }
            img.owner = owner.clone();
        }
        _ => return Err(read_only(key)),
    }
    Ok(())
}

fn set_extra(img: &mut Image, key: &str, v: &Value) -> ApiResult<()> {
    if key.is_empty() || key.chars().count() > 255 {
        return Err(ApiError::bad_request(
            "Property names must be 1 to 255 characters.",
        ));
    }
    let Value::String(s) = v else {
        return Err(ApiError::bad_request(format!(
            "Invalid value for property '{key}': {v} is not of type 'string' (extra properties must be strings)."
        )));
    };
    if s.len() > 65535 {
        return Err(bad_value(key, "longer than 65535 characters"));
    }
    img.properties
        .insert(key.to_string(), Value::String(s.clone()));
    if img.properties.len() > MAX_PROPERTIES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Maximum number of properties exceeded: at most {MAX_PROPERTIES}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- create

fn normalize_id(v: &Value) -> ApiResult<String> {
    let s = v
        .as_str()
        .ok_or_else(|| bad_value("id", &format!("{v} is not of type 'string'")))?;
    uuid::Uuid::try_parse(s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| bad_value("id", &format!("{s:?} is not a valid UUID")))
}

async fn create_image(
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
        if load(&conn, &img.id)?.is_some() {
            return Err(ApiError::conflict(format!(
                "An image with identifier {} already exists",
                img.id
            )));
        }
        insert(&conn, &img)?;
    }
    let mut resp = (StatusCode::CREATED, Json(render(&img))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/images/{}", img.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

// ---------------------------------------------------------------- show, delete

async fn show_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let img = load_visible(&st.db.lock(), &ctx, &id)?;
    Ok(Json(render(&img)))
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::TooLarge { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Image exceeds the storage limit of {limit} bytes."),
        ),
        StoreError::NoSpace => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "Image storage media is full: no space left in the image store.",
        ),
        e @ StoreError::InvalidFormat { .. } => ApiError::bad_request(e.to_string()),
        e @ StoreError::Client(_) => ApiError::bad_request(e.to_string()),
        e @ StoreError::UploadInProgress(_) => ApiError::conflict(e.to_string()),
        StoreError::InvalidId(id) | StoreError::NotFound(id) => not_found(&id),
        e @ StoreError::Io { .. } => ApiError::internal(e),
    }
}

async fn delete_image(
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
        conn.execute("DELETE FROM images WHERE id = ?1", params![id])?;
    }
    // Servers booted from the image (or from its kernel or ramdisk) keep
    // using its file: it stays until the last of them is deleted.
    let used = {
        let (db, compute) = (st.db.clone(), st.compute.clone());
        tokio::task::spawn_blocking(move || {
            crate::compute::image_use::images_in_use(&db, &compute.agent, &compute.images)
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

// ---------------------------------------------------------------- upload, download

fn is_octet_stream(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/octet-stream")
            })
            .unwrap_or(false),
    }
}

fn deleted_during_upload(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        format!(
            "Image {id} could not be found after upload. \
             The image may have been deleted during the upload."
        ),
    )
}

/// Moves an image from `saving` to `killed` (if still saving).
fn kill(conn: &Connection, id: &str) {
    if let Err(e) = conn.execute(
        "UPDATE images SET status = 'killed', updated_at = ?2 WHERE id = ?1 AND status = 'saving'",
        params![id, now_iso()],
    ) {
        tracing::error!(image = %id, error = %e, "cannot mark the image killed");
    }
}

async fn upload_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<StatusCode> {
    if !is_octet_stream(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The image data must be sent as application/octet-stream.",
        ));
    }
    let format: DiskFormat = {
        let conn = st.db.lock();
        let img = load_writable(&conn, &ctx, &id)?;
        if img.status != "queued" {
            return Err(ApiError::conflict(format!(
                "Image {id} has status '{}': data can only be uploaded to a queued image.",
                img.status
            )));
        }
        let (Some(disk), Some(container)) = (&img.disk_format, &img.container_format) else {
            return Err(ApiError::bad_request(
                "Properties disk_format, container_format must be set prior to saving data.",
            ));
        };
        let kernelish = |f: &str| matches!(f, "aki" | "ari" | "ami");
        if (kernelish(disk) || kernelish(container)) && disk != container {
            return Err(ApiError::bad_request(
                "Invalid mix of disk and container formats. When setting a disk or container \
                 format to one of 'aki', 'ari', or 'ami', the container and disk formats must match.",
            ));
        }
        let format = disk
            .parse()
            .map_err(|e| ApiError::bad_request(format!("{e}")))?;
        let n = conn.execute(
            "UPDATE images SET status = 'saving', updated_at = ?2 WHERE id = ?1 AND status = 'queued'",
            params![id, now_iso()],
        )?;
        if n != 1 {
            return Err(ApiError::conflict(format!(
                "Image {id} is no longer queued: another upload started."
            )));
        }
        format
    };
    // The upload runs in its own task, so that it reaches an end state
    // (active or killed) even when the client goes away and this handler's
    // future is dropped.
    let body = req.into_body().into_data_stream();
    let task = tokio::spawn(async move {
        let result = st.images.upload(&id, format, body).await;
        let conn = st.db.lock();
        match result {
            Ok(stored) => {
                let n = conn.execute(
                    "UPDATE images SET status = 'active', size = ?2, virtual_size = ?3, \
                     checksum = ?4, os_hash_algo = 'sha512', os_hash_value = ?5, updated_at = ?6 \
                     WHERE id = ?1 AND status = 'saving'",
                    params![
                        id,
                        stored.size as i64,
                        stored.virtual_size.map(|v| v as i64),
                        stored.md5,
                        stored.sha512,
                        now_iso()
                    ],
                )?;
                if n != 1 {
                    drop(conn);
                    if let Err(e) = st.images.remove(&id) {
                        tracing::warn!(image = %id, error = %e, "cannot remove data of a deleted image");
                    }
                    return Err(deleted_during_upload(&id));
                }
                Ok(StatusCode::NO_CONTENT)
            }
            Err(e) => {
                tracing::info!(image = %id, error = %e, "image upload failed");
                kill(&conn, &id);
                if load(&conn, &id)?.is_none() {
                    return Err(deleted_during_upload(&id));
                }
                Err(store_error(e))
            }
        }
    });
    task.await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("the upload task failed: {e}"))))
}

async fn download_image(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let img = load_visible(&st.db.lock(), &ctx, &id)?;
    if img.status != "active" {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let (file, len) = st
        .images
        .open_for_download(&id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => {
                ApiError::not_found(format!("The data of image {id} is missing."))
            }
            e => store_error(e),
        })?;
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(md5) = img
        .checksum
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert("content-md5", md5);
    }
    Ok(resp)
}

// ---------------------------------------------------------------- patch

const PATCH_TYPES: &[&str] = &[
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
];

/// Decodes a JSON pointer (`/name`, `/a~1b`) or a v2.0 path list (`["name"]`)
/// to its single top-level key.
fn patch_key(path: &Value) -> ApiResult<String> {
    let invalid =
        || ApiError::bad_request(format!("Invalid JSON pointer for this resource: '{path}'"));
    let parts: Vec<String> = match path {
        Value::String(p) => {
            let Some(rest) = p.strip_prefix('/') else {
                return Err(invalid());
            };
            rest.split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect()
        }
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(invalid))
            .collect::<ApiResult<_>>()?,
        _ => return Err(invalid()),
    };
    match parts.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        _ => Err(invalid()),
    }
}

fn apply_op(img: &mut Image, ctx: &AuthContext, op: &Value) -> ApiResult<()> {
    let Value::Object(op) = op else {
        return Err(ApiError::bad_request("Each change must be a JSON object."));
    };
    let (kind, path) = if let Some(Value::String(kind)) = op.get("op") {
        let path = op
            .get("path")
            .ok_or_else(|| ApiError::bad_request("Unable to find 'path' in JSON Schema change"))?;
        (kind.as_str(), path)
    } else if let Some(path) = op.get("add") {
        ("add", path)
    } else if let Some(path) = op.get("replace") {
        ("replace", path)
    } else if let Some(path) = op.get("remove") {
        ("remove", path)
    } else {
        return Err(ApiError::bad_request(
            "Unable to find 'op' in JSON Schema change. It must be one of: add, remove, replace.",
        ));
    };
    if !matches!(kind, "add" | "replace" | "remove") {
        return Err(ApiError::bad_request(format!(
            "Invalid operation: `{kind}`. It must be one of: add, remove, replace."
        )));
    }
    let key = patch_key(path)?;
    let value = if kind == "remove" {
        Value::Null
    } else {
        op.get("value").cloned().ok_or_else(|| {
            ApiError::bad_request(format!(
                "Operation \"{kind}\" requires a member named \"value\"."
            ))
        })?
    };
    match classify(&key) {
        Attr::ReadOnly => Err(read_only(&key)),
        Attr::Reserved => Err(reserved(&key)),
        Attr::Core if kind == "remove" => Err(ApiError::forbidden(format!(
            "Property {key} may not be removed."
        ))),
        Attr::Core => set_core(img, ctx, &key, &value, false),
        Attr::Extra => match kind {
            "remove" => match img.properties.remove(&key) {
                Some(_) => Ok(()),
                None => Err(ApiError::conflict(format!(
                    "Property {key} does not exist."
                ))),
            },
            "replace" if !img.properties.contains_key(&key) => Err(ApiError::conflict(format!(
                "Property {key} does not exist."
            ))),
            _ => set_extra(img, &key, &value),
        },
    }
}

async fn patch_image(
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
    if !save_meta(&conn, &img)? {
        return Err(not_found(&id));
    }
    // Status and data fields may have changed meanwhile (an upload ending).
    let img = load(&conn, &id)?.ok_or_else(|| not_found(&id))?;
    Ok(Json(render(&img)))
}

// ---------------------------------------------------------------- tags

async fn add_tag(
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
        save_meta(&conn, &img)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_tag(
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
    save_meta(&conn, &img)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- list

const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "virtual_size",
    "id",
    "created_at",
    "updated_at",
    "visibility",
    "owner",
    "min_disk",
    "min_ram",
];

fn cmp_key(a: &Image, b: &Image, key: &str) -> Ordering {
    fn s(img: &Image, key: &str) -> Option<String> {
        match key {
            "name" => img.name.clone(),
            "status" => Some(img.status.clone()),
            "container_format" => img.container_format.clone(),
            "disk_format" => img.disk_format.clone(),
            "id" => Some(img.id.clone()),
            "created_at" => Some(img.created_at.clone()),
            "updated_at" => Some(img.updated_at.clone()),
            "visibility" => Some(img.visibility.clone()),
            "owner" => Some(img.owner.clone()),
            _ => None,
        }
    }
    fn n(img: &Image, key: &str) -> Option<i64> {
        match key {
            "size" => img.size,
            "virtual_size" => img.virtual_size,
            "min_disk" => Some(img.min_disk),
            "min_ram" => Some(img.min_ram),
            _ => None,
        }
    }
    match key {
        "size" | "virtual_size" | "min_disk" | "min_ram" => n(a, key).cmp(&n(b, key)),
        _ => s(a, key).cmp(&s(b, key)),
    }
}

fn parse_sort(q: &[(String, String)]) -> ApiResult<Vec<(String, bool)>> {
    let check_key = |k: &str| -> ApiResult<()> {
        if SORT_KEYS.contains(&k) {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "Invalid sort key: {k}. It must be one of the following: {}.",
                SORT_KEYS.join(", ")
            )))
        }
    };
    let check_dir = |d: &str| -> ApiResult<bool> {
        match d {
            "asc" => Ok(false),
            "desc" => Ok(true),
            _ => Err(ApiError::bad_request(format!(
                "Invalid sort direction: {d}. It must be asc or desc."
            ))),
        }
    };
    let sort: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort")
        .map(|(_, v)| v.as_str())
        .collect();
    let keys: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort_key")
        .map(|(_, v)| v.as_str())
        .collect();
    let dirs: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort_dir")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut out = Vec::new();
    if !sort.is_empty() {
        if !keys.is_empty() || !dirs.is_empty() {
            return Err(ApiError::bad_request(
                "The sort parameter cannot be combined with sort_key or sort_dir.",
            ));
        }
        for item in sort.iter().flat_map(|s| s.split(',')) {
            let (k, d) = item.split_once(':').unwrap_or((item, "desc"));
            check_key(k.trim())?;
            out.push((k.trim().to_string(), check_dir(d.trim())?));
        }
    } else {
        if dirs.len() > 1 && dirs.len() != keys.len() {
            return Err(ApiError::bad_request(
                "The number of sort_dir values must be 1 or match the number of sort_key values.",
            ));
        }
        for (i, k) in keys.iter().enumerate() {
            check_key(k)?;
            let d = match dirs.len() {
                0 => "desc",
                1 => dirs[0],
                _ => dirs[i],
            };
            out.push((k.to_string(), check_dir(d)?));
        }
        if keys.is_empty() {
            let desc = match dirs.first() {
                Some(d) => check_dir(d)?,
                None => true,
            };
            out.push(("created_at".to_string(), desc));
        }
    }
    if !out.iter().any(|(k, _)| k == "id") {
        let last_desc = out.last().map(|(_, d)| *d).unwrap_or(true);
        out.push(("id".to_string(), last_desc));
    }
    Ok(out)
}

fn parse_bool_param(key: &str, v: &str) -> ApiResult<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "Invalid value '{v}' for parameter '{key}': expected true or false."
        ))),
    }
}

fn parse_int_param(key: &str, v: &str) -> ApiResult<i64> {
    v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid value '{v}' for parameter '{key}': expected a non-negative integer."
        ))
    })
}

/// `value` or `in:a,b,c` → the accepted values.
fn accepted(v: &str) -> Vec<&str> {
    match v.strip_prefix("in:") {
        Some(list) => list.split(',').collect(),
        None => vec![v],
    }
}

fn matches_opt(field: Option<&str>, want: &str) -> bool {
    let ok = accepted(want);
    field.is_some_and(|f| ok.contains(&f))
}

/// Parameters that never filter.
const IGNORED_PARAMS: &[&str] = &["member_status", "all_tenants", "is_public", "paginate"];

fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One list filter.
type Filter = Box<dyn Fn(&Image) -> bool>;

async fn list_images(
    State(st): State<AppState>,
    ProjectAuth(ctx): ProjectAuth,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let mut limit = DEFAULT_LIMIT;
    let mut marker: Option<String> = None;
    let mut hidden_filter: Option<bool> = Some(false);
    let mut visibility_filter: Option<String> = None;
    let mut checks: Vec<Filter> = Vec::new();
    for (k, v) in &q {
        let v = v.clone();
        match k.as_str() {
            "limit" => {
                limit = usize::try_from(parse_int_param(k, &v)?)
                    .unwrap_or(MAX_LIMIT)
                    .min(MAX_LIMIT)
            }
            "marker" => marker = Some(v),
            "sort" | "sort_key" | "sort_dir" => {}
            "os_hidden" => hidden_filter = Some(parse_bool_param(k, &v)?),
            "visibility" => {
                if v != "all" && !VISIBILITIES.contains(&v.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid visibility value: {v}. It must be one of: all, {}.",
                        VISIBILITIES.join(", ")
                    )));
                }
                visibility_filter = Some(v);
            }
            "protected" => {
                let want = parse_bool_param(k, &v)?;
                checks.push(Box::new(move |i| i.protected == want));
            }
            "size_min" => {
                let n = parse_int_param(k, &v)?;
                checks.push(Box::new(move |i| i.size.is_some_and(|s| s >= n)));
            }
            "size_max" => {
                let n = parse_int_param(k, &v)?;
                checks.push(Box::new(move |i| i.size.is_some_and(|s| s <= n)));
            }
            "tag" => checks.push(Box::new(move |i| i.tags.contains(&v))),
            "name" => checks.push(Box::new(move |i| matches_opt(i.name.as_deref(), &v))),
            "id" => checks.push(Box::new(move |i| matches_opt(Some(&i.id), &v))),
            "status" => checks.push(Box::new(move |i| matches_opt(Some(&i.status), &v))),
            "owner" => checks.push(Box::new(move |i| matches_opt(Some(&i.owner), &v))),
            "disk_format" => {
                checks.push(Box::new(move |i| matches_opt(i.disk_format.as_deref(), &v)))
            }
            "container_format" => checks.push(Box::new(move |i| {
                matches_opt(i.container_format.as_deref(), &v)
            })),
            key if IGNORED_PARAMS.contains(&key) => {}
            // Glance filters on any other key as an extra property.
            key => {
                let key = key.to_string();
                checks.push(Box::new(move |i| {
                    matches_opt(i.properties.get(&key).and_then(Value::as_str), &v)
                }))
            }
        }
    }
    let sort = parse_sort(&q)?;

    let mut images: Vec<Image> = {
        let conn = st.db.lock();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM images"))?;
        let rows = stmt.query_map([], from_row)?;
        rows.collect::<Result<_, _>>()?
    };
    images.retain(|i| visible(&ctx, i));
    // Which images a listing includes by default: Glance leaves out community
    // images of other projects unless they are asked for.
    images.retain(|i| match visibility_filter.as_deref() {
        Some("all") => true,
        Some(vis) => i.visibility == vis,
        None => ctx.is_admin() || i.visibility != "community" || i.owner == ctx.project_id,
    });
    if let Some(h) = hidden_filter {
        images.retain(|i| i.os_hidden == h);
    }
    images.retain(|i| checks.iter().all(|c| c(i)));
    images.sort_by(|a, b| {
        for (key, desc) in &sort {
            let o = cmp_key(a, b, key);
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    let start = match &marker {
        None => 0,
        Some(m) => match images.iter().position(|i| i.id == *m) {
            Some(p) => p + 1,
            None => {
                // The marker may be filtered out but still visible: Glance
                // accepts any visible image as marker.
                let conn = st.db.lock();
                let Some(mimg) = load(&conn, m)?.filter(|i| visible(&ctx, i)) else {
                    return Err(ApiError::bad_request(format!(
                        "Invalid marker. Image {m} could not be found."
                    )));
                };
                drop(conn);
                images
                    .iter()
                    .position(|i| {
                        sort.iter()
                            .map(|(key, desc)| {
                                let o = cmp_key(i, &mimg, key);
                                if *desc {
                                    o.reverse()
                                } else {
                                    o
                                }
                            })
                            .find(|o| *o != Ordering::Equal)
                            == Some(Ordering::Greater)
                    })
                    .unwrap_or(images.len())
            }
        },
    };
    let page: Vec<&Image> = images.iter().skip(start).take(limit).collect();
    let more = start + page.len() < images.len();
    let mut out = json!({
        "images": page.iter().map(|i| render(i)).collect::<Vec<_>>(),
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    });
    if more {
        if let Some(last) = page.last() {
            let mut qs: Vec<String> = q
                .iter()
                .filter(|(k, _)| k != "marker" && k != "limit")
                .map(|(k, v)| format!("{}={}", pct_encode(k), pct_encode(v)))
                .collect();
            qs.push(format!("marker={}", pct_encode(&last.id)));
            qs.push(format!("limit={limit}"));
            out["next"] = json!(format!("/v2/images?{}", qs.join("&")));
        }
    }
    Ok(Json(out))
}

// ---------------------------------------------------------------- schemas

fn image_schema_value() -> Value {
    let nullable_str = |desc: &str, max: u32| json!({ "type": ["null", "string"], "maxLength": max, "description": desc });
    let read_only_str =
        |desc: &str| json!({ "type": ["null", "string"], "readOnly": true, "description": desc });
    let mut disk_formats: Vec<Value> = ALLOWED_DISK_FORMATS.iter().map(|s| json!(s)).collect();
    disk_formats.push(Value::Null);
    let mut container_formats: Vec<Value> =
        ALLOWED_CONTAINER_FORMATS.iter().map(|s| json!(s)).collect();
    container_formats.push(Value::Null);
    json!({
        "name": "image",
        "additionalProperties": { "type": "string" },
        "properties": {
            "id": { "type": "string", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$", "description": "An identifier for the image" },
            "name": nullable_str("Descriptive name for the image", 255),
            "status": { "type": "string", "readOnly": true, "enum": ["queued", "saving", "active", "killed"], "description": "Status of the image" },
            "visibility": { "type": "string", "enum": VISIBILITIES, "description": "Scope of image accessibility" },
            "protected": { "type": "boolean", "description": "If true, image will not be deletable." },
            "os_hidden": { "type": "boolean", "description": "If true, image will not appear in default image list response." },
            "checksum": read_only_str("md5 hash of image contents."),
            "os_hash_algo": read_only_str("Algorithm to calculate the os_hash_value"),
            "os_hash_value": read_only_str("Hexdigest of the image contents using the algorithm specified by the os_hash_algo"),
            "owner": nullable_str("Owner of the image", 255),
            "size": { "type": ["null", "integer"], "readOnly": true, "description": "Size of image file in bytes" },
            "virtual_size": { "type": ["null", "integer"], "readOnly": true, "description": "Virtual size of image in bytes" },
            "container_format": { "type": ["null", "string"], "enum": container_formats, "description": "Format of the container" },
            "disk_format": { "type": ["null", "string"], "enum": disk_formats, "description": "Format of the disk" },
            "created_at": { "type": "string", "readOnly": true, "description": "Date and time of image registration" },
            "updated_at": { "type": "string", "readOnly": true, "description": "Date and time of the last image modification" },
            "tags": { "type": "array", "items": { "type": "string", "maxLength": 255 }, "description": "List of strings related to the image" },
            "min_ram": { "type": "integer", "minimum": 0, "description": "Amount of ram (in MB) required to boot image." },
            "min_disk": { "type": "integer", "minimum": 0, "description": "Amount of disk space (in GB) required to boot image." },
            "self": { "type": "string", "readOnly": true, "description": "An image self url" },
            "file": { "type": "string", "readOnly": true, "description": "An image file url" },
            "schema": { "type": "string", "readOnly": true, "description": "An image schema url" },
            "direct_url": { "type": "string", "readOnly": true, "description": "URL to access the image file kept in external store" },
            "locations": { "type": "array", "items": { "type": "object" }, "description": "A set of URLs to access the image file kept in external store" }
        },
        "links": [
            { "rel": "self", "href": "{self}" },
            { "rel": "enclosure", "href": "{file}" },
            { "rel": "describedby", "href": "{schema}" }
        ]
    })
}

async fn image_schema(ProjectAuth(_): ProjectAuth) -> Json<Value> {
    Json(image_schema_value())
}

async fn images_schema(ProjectAuth(_): ProjectAuth) -> Json<Value> {
    Json(json!({
        "name": "images",
        "properties": {
            "images": { "type": "array", "items": image_schema_value() },
            "schema": { "type": "string" },
            "first": { "type": "string" },
            "next": { "type": "string" }
        },
        "links": [
            { "rel": "first", "href": "{first}" },
            { "rel": "next", "href": "{next}" },
            { "rel": "describedby", "href": "{schema}" }
        ]
    }))
}
