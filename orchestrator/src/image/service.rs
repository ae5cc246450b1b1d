//! The Image service's rules: who sees and changes an image, which
//! attributes a client may set and to what, JSON-patch operations, and how
//! image-file errors reach clients. Other services ask here (never the
//! `images` table) about images.

use axum::http::StatusCode;
use rusqlite::Connection;
use serde_json::Value;

use super::files::{StoreError, ALLOWED_DISK_FORMATS};
use super::model::*;
use super::store;
use crate::http::error::{ApiError, ApiResult};
use crate::http::policy;
use crate::identity::AuthContext;

/// The image `id` if the caller may see it (see the module documentation),
/// `None` if it does not exist or is not visible.
pub fn lookup_visible(
    conn: &Connection,
    ctx: &AuthContext,
    id: &str,
) -> ApiResult<Option<ImageRow>> {
    Ok(store::load(conn, id)?
        .filter(|img| visible(ctx, img))
        .map(row_of))
}

/// The image `id` whoever may see it (for work the daemon does on a
/// server's behalf, which checks visibility itself), `None` if it does not
/// exist.
pub fn find(conn: &Connection, id: &str) -> rusqlite::Result<Option<ImageRow>> {
    Ok(store::load(conn, id)?.map(row_of))
}

/// Whether image `id` exists (whatever its status).
pub fn exists(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(store::load(conn, id)?.is_some())
}

/// What other services see of an image.
fn row_of(img: Image) -> ImageRow {
    ImageRow {
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
    }
}

pub(crate) fn visible(ctx: &AuthContext, img: &Image) -> bool {
    ctx.may_see_image(&img.owner, &img.visibility)
}

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No image found with ID {id}"))
}

/// The image if the caller may see it, else 404.
pub(crate) fn load_visible(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Image> {
    match store::load(conn, id)? {
        Some(img) if visible(ctx, &img) => Ok(img),
        _ => Err(not_found(id)),
    }
}

pub(crate) fn check_can_write(ctx: &AuthContext) -> ApiResult<()> {
    policy::require_member(
        ctx,
        "You are not authorized to complete this action: the reader role cannot change images.",
    )
}

/// The image if the caller may change it: 404 when it cannot see it, 403
/// when it can see but does not own it (or only reads).
pub(crate) fn load_writable(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Image> {
    let img = load_visible(conn, ctx, id)?;
    check_can_write(ctx)?;
    if !ctx.is_admin() && img.owner != ctx.project_id {
        return Err(ApiError::forbidden(format!(
            "You are not permitted to modify image {id}: it belongs to another project."
        )));
    }
    Ok(img)
}

// ---------------------------------------------------------------- attributes

/// How a top-level image key is treated in create and patch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Attr {
    /// A core attribute the user may set.
    Core,
    /// Set by the service only.
    ReadOnly,
    /// Not usable at all.
    Reserved,
    /// An extra (string) property.
    Extra,
}

pub(crate) fn classify(key: &str) -> Attr {
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

pub(crate) fn read_only(key: &str) -> ApiError {
    ApiError::forbidden(format!("Attribute '{key}' is read-only."))
}

pub(crate) fn reserved(key: &str) -> ApiError {
    ApiError::forbidden(format!("Attribute '{key}' is reserved."))
}

pub(crate) fn bad_value(key: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("Invalid value for '{key}': {why}"))
}

pub(crate) fn get_bool(key: &str, v: &Value) -> ApiResult<bool> {
    v.as_bool()
        .ok_or_else(|| bad_value(key, &format!("{v} is not of type 'boolean'")))
}

pub(crate) fn get_int(key: &str, v: &Value) -> ApiResult<i64> {
    match v.as_i64() {
        Some(n) if (0..=MAX_INT).contains(&n) => Ok(n),
        Some(n) => Err(bad_value(
            key,
            &format!("{n} must be between 0 and {MAX_INT}"),
        )),
        None => Err(bad_value(key, &format!("{v} is not of type 'integer'"))),
    }
}

pub(crate) fn get_opt_enum(key: &str, v: &Value, allowed: &[&str]) -> ApiResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if allowed.contains(&s.as_str()) => Ok(Some(s.clone())),
        _ => Err(bad_value(
            key,
            &format!("{v} is not one of {}", allowed.join(", ")),
        )),
    }
}

pub(crate) fn get_tags(v: &Value) -> ApiResult<Vec<String>> {
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

pub(crate) fn check_tag(tag: &str) -> ApiResult<()> {
    if tag.is_empty() || tag.chars().count() > 255 {
        return Err(bad_value("tags", "a tag must be 1 to 255 characters"));
    }
    Ok(())
}

/// Sets a core attribute (see [`classify`]) from a JSON value.
pub(crate) fn set_core(
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

pub(crate) fn set_extra(img: &mut Image, key: &str, v: &Value) -> ApiResult<()> {
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

pub(crate) fn store_error(e: StoreError) -> ApiError {
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

// ---------------------------------------------------------------- patch

pub(crate) const PATCH_TYPES: &[&str] = &[
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
];

/// Decodes a JSON pointer (`/name`, `/a~1b`) or a v2.0 path list (`["name"]`)
/// to its single top-level key.
pub(crate) fn patch_key(path: &Value) -> ApiResult<String> {
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

pub(crate) fn apply_op(img: &mut Image, ctx: &AuthContext, op: &Value) -> ApiResult<()> {
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

/// What Compute needs of a bootable image to check a flavor against it.
#[derive(Debug, Clone, Copy)]
pub struct Bootable {
    /// Size of the disk the image holds, in bytes, once uploaded.
    pub virtual_size: Option<i64>,
    /// Minimum disk (GiB).
    pub min_disk: i64,
    /// Minimum RAM (MiB).
    pub min_ram: i64,
}

/// 400 unless the images an image names as its `kernel_id` and
/// `ramdisk_id` are visible to the caller, by the rule of `imageRef` (as
/// Nova, which fetches them with the request's context when the server is
/// created). A hidden image is answered as one that does not exist.
fn check_kernel_images(
    conn: &Connection,
    ctx: &AuthContext,
    props: &serde_json::Map<String, Value>,
) -> ApiResult<()> {
    for key in ["kernel_id", "ramdisk_id"] {
        let Some(id) = props.get(key).and_then(Value::as_str) else {
            continue;
        };
        if lookup_visible(conn, ctx, id)?.is_none() {
            tracing::warn!(image = %id, key, project = %ctx.project_id, "kernel or ramdisk image not visible to the project");
            return Err(ApiError::bad_request(format!(
                "Image {id} could not be found."
            )));
        }
    }
    Ok(())
}

/// An image the project may boot (compute asks here which image is bootable): active, raw or qcow2, and visible to it,
/// as are its kernel and ramdisk images.
pub fn bootable(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Bootable> {
    let Some(img) = lookup_visible(conn, ctx, id)? else {
        return Err(ApiError::bad_request(format!(
            "Image {id} could not be found."
        )));
    };
    if img.status != "active" {
        return Err(ApiError::bad_request(format!("Image {id} is not active.")));
    }
    match img.disk_format.as_deref() {
        Some("raw") | Some("qcow2") => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "Image {id} has disk_format {}; only raw and qcow2 images can boot a server",
                other.unwrap_or("none")
            )))
        }
    }
    check_kernel_images(conn, ctx, &img.properties)?;
    Ok(Bootable {
        virtual_size: img.virtual_size,
        min_disk: img.min_disk,
        min_ram: img.min_ram,
    })
}
