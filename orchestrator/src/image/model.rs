//! An image as the Image service keeps it, and its Glance JSON.

use serde_json::{json, Map, Value};

/// Container formats we accept (Glance does not check them).
pub const ALLOWED_CONTAINER_FORMATS: &[&str] = &["bare", "ovf", "aki", "ari"];
pub(crate) const VISIBILITIES: &[&str] = &["private", "shared", "community", "public"];
/// Glance's `image_property_quota` and `image_tag_quota`.
pub(crate) const MAX_PROPERTIES: usize = 128;
pub(crate) const MAX_TAGS: usize = 128;
pub(crate) const MAX_INT: i64 = i32::MAX as i64;
pub(crate) const DEFAULT_LIMIT: usize = 25;
pub(crate) const MAX_LIMIT: usize = 1000;

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

/// A whole `images` row.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) owner: String,
    pub(crate) status: String,
    pub(crate) visibility: String,
    pub(crate) protected: bool,
    pub(crate) os_hidden: bool,
    pub(crate) disk_format: Option<String>,
    pub(crate) container_format: Option<String>,
    pub(crate) size: Option<i64>,
    pub(crate) virtual_size: Option<i64>,
    pub(crate) checksum: Option<String>,
    pub(crate) os_hash_algo: Option<String>,
    pub(crate) os_hash_value: Option<String>,
    pub(crate) min_disk: i64,
    pub(crate) min_ram: i64,
    pub(crate) properties: Map<String, Value>,
    pub(crate) tags: Vec<String>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
}

/// Glance's image JSON.
pub(crate) fn render(img: &Image) -> Value {
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
