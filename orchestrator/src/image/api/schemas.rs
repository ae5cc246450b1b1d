//! `/v2/schemas/image` and `/v2/schemas/images`.

use axum::Json;
use serde_json::{json, Value};

use crate::http::extract::ProjectAuth;
use crate::image::files::ALLOWED_DISK_FORMATS;
use crate::image::model::*;

// ---------------------------------------------------------------- schemas

pub(crate) fn image_schema_value() -> Value {
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

pub(crate) async fn image_schema(ProjectAuth(_): ProjectAuth) -> Json<Value> {
    Json(image_schema_value())
}

pub(crate) async fn images_schema(ProjectAuth(_): ProjectAuth) -> Json<Value> {
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
