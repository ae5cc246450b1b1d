//! The Block Storage service's things (volumes, snapshots, volume types)
//! and their JSON as Cinder shows them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A volume's status (Cinder's words).
pub mod status {
    /// Being made by the driver.
    pub const CREATING: &str = "creating";
    /// Made, not attached.
    pub const AVAILABLE: &str = "available";
    /// Reserved for a server, being plugged.
    pub const ATTACHING: &str = "attaching";
    /// Attached to at least one server.
    pub const IN_USE: &str = "in-use";
    /// Being unplugged.
    pub const DETACHING: &str = "detaching";
    /// Being removed.
    pub const DELETING: &str = "deleting";
    /// The driver failed to make (or snapshot) it.
    pub const ERROR: &str = "error";
    /// The driver failed to remove it.
    pub const ERROR_DELETING: &str = "error_deleting";
    /// The driver failed to grow it.
    pub const ERROR_EXTENDING: &str = "error_extending";
    /// Being grown.
    pub const EXTENDING: &str = "extending";
    /// Every status an admin may set with `os-reset_status`.
    pub const RESETTABLE: [&str; 10] = [
        CREATING,
        AVAILABLE,
        ATTACHING,
        IN_USE,
        DETACHING,
        DELETING,
        ERROR,
        ERROR_DELETING,
        ERROR_EXTENDING,
        EXTENDING,
    ];
}

/// One `volumes` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Id (UUID).
    pub id: String,
    /// Owner project.
    pub project_id: String,
    /// Who made it.
    pub user_id: String,
    /// Name, if any.
    pub name: Option<String>,
    /// Description, if any.
    pub description: Option<String>,
    /// Size in GiB.
    pub size: i64,
    /// Status (see [`status`]).
    pub status: String,
    /// Its volume type's id.
    pub volume_type_id: String,
    /// The backend holding its data (the type's `volume_backend_name`).
    pub backend: String,
    /// Marked bootable.
    pub bootable: bool,
    /// May be attached to several servers (from its type).
    pub multiattach: bool,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// The image's properties, when made from an image.
    pub image_metadata: Option<BTreeMap<String, String>>,
    /// The snapshot it was made from.
    pub snapshot_id: Option<String>,
    /// The volume it was cloned from.
    pub source_volid: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// One attachment as a volume shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentView {
    /// Attachment id.
    pub id: String,
    /// Server.
    pub server_id: String,
    /// Guest device.
    pub device: String,
    /// When it was attached.
    pub attached_at: Option<String>,
}

/// One `volume_snapshots` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Id (UUID).
    pub id: String,
    /// Owner project.
    pub project_id: String,
    /// Who made it.
    pub user_id: String,
    /// The volume it was taken of.
    pub volume_id: String,
    /// Name, if any.
    pub name: Option<String>,
    /// Description, if any.
    pub description: Option<String>,
    /// Size in GiB (the volume's).
    pub size: i64,
    /// creating, available, deleting, error, error_deleting.
    pub status: String,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

/// One `volume_types` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeType {
    /// Id (UUID).
    pub id: String,
    /// Name (unique).
    pub name: String,
    /// Description.
    pub description: String,
    /// Visible to every project.
    pub is_public: bool,
    /// Extra specs (`volume_backend_name`, `multiattach`).
    pub extra_specs: BTreeMap<String, String>,
}

/// The name of the type volumes get when none is asked for.
pub const DEFAULT_TYPE: &str = "__DEFAULT__";

impl VolumeType {
    /// The backend its volumes go to (`volume_backend_name`, else `default`).
    pub fn backend<'a>(&'a self, default: &'a str) -> &'a str {
        self.extra_specs
            .get("volume_backend_name")
            .map(String::as_str)
            .unwrap_or(default)
    }

    /// Whether its volumes may be attached to several servers
    /// (`multiattach="<is> True"`).
    pub fn multiattach(&self) -> bool {
        self.extra_specs
            .get("multiattach")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("<is> true"))
    }

    /// Cinder's JSON; extra specs only for admins (as Cinder's policy).
    pub fn to_json(&self, admin: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "description": if self.description.is_empty() { Value::Null } else { json!(self.description) },
            "is_public": self.is_public,
            "os-volume-type-access:is_public": self.is_public,
            "qos_specs_id": Value::Null,
        });
        if admin {
            v["extra_specs"] = json!(self.extra_specs);
        }
        v
    }
}

fn links(base: &str, project: &str, coll: &str, id: &str) -> Value {
    json!([
        { "rel": "self", "href": format!("{base}/volume/v3/{project}/{coll}/{id}") },
        { "rel": "bookmark", "href": format!("{base}/volume/{project}/{coll}/{id}") },
    ])
}

/// How a caller sees a volume.
pub struct VolumeView<'a> {
    /// The volume.
    pub volume: &'a Volume,
    /// Its type's name.
    pub type_name: &'a str,
    /// Its attachments (attached ones).
    pub attachments: &'a [AttachmentView],
    /// Whether the caller is an admin (admin-only attributes).
    pub admin: bool,
    /// The API's base URL.
    pub base: &'a str,
    /// The host name (`os-vol-host-attr:host`).
    pub host: &'a str,
}

impl VolumeView<'_> {
    /// The summary (`GET /volumes`).
    pub fn summary(&self) -> Value {
        let v = self.volume;
        json!({ "id": v.id, "name": v.name,
                "links": links(self.base, &v.project_id, "volumes", &v.id) })
    }

    /// The detail (`GET /volumes/{id}`, `/volumes/detail`).
    pub fn detail(&self) -> Value {
        let v = self.volume;
        let attachments: Vec<Value> = self
            .attachments
            .iter()
            .map(|a| {
                json!({
                    "id": v.id, "attachment_id": a.id, "volume_id": v.id,
                    "server_id": a.server_id, "host_name": self.host,
                    "device": a.device, "attached_at": a.attached_at,
                })
            })
            .collect();
        let mut out = json!({
            "id": v.id,
            "name": v.name,
            "description": v.description,
            "size": v.size,
            "status": v.status,
            "volume_type": self.type_name,
            "availability_zone": "nova",
            "bootable": if v.bootable { "true" } else { "false" },
            "encrypted": false,
            "multiattach": v.multiattach,
            "attachments": attachments,
            "metadata": v.metadata,
            "snapshot_id": v.snapshot_id,
            "source_volid": v.source_volid,
            "user_id": v.user_id,
            "created_at": v.created_at,
            "updated_at": v.updated_at,
            "consistencygroup_id": Value::Null,
            "group_id": Value::Null,
            "replication_status": Value::Null,
            "migration_status": Value::Null,
            "links": links(self.base, &v.project_id, "volumes", &v.id),
        });
        if let Some(meta) = &v.image_metadata {
            out["volume_image_metadata"] = json!(meta);
        }
        if self.admin {
            out["os-vol-tenant-attr:tenant_id"] = json!(v.project_id);
            out["os-vol-host-attr:host"] =
                json!(format!("{}@{}#{}", self.host, v.backend, v.backend));
            out["os-vol-mig-status-attr:migstat"] = Value::Null;
            out["os-vol-mig-status-attr:name_id"] = Value::Null;
        }
        out
    }
}

impl Snapshot {
    /// Summary and detail are the same in Cinder (`/snapshots` and
    /// `/snapshots/detail`).
    pub fn to_json(&self, admin: bool) -> Value {
        let mut out = json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "volume_id": self.volume_id,
            "size": self.size,
            "status": self.status,
            "metadata": self.metadata,
            "user_id": self.user_id,
            "group_snapshot_id": Value::Null,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        if admin {
            out["os-extended-snapshot-attributes:project_id"] = json!(self.project_id);
            out["os-extended-snapshot-attributes:progress"] =
                json!(if self.status == "available" {
                    "100%"
                } else {
                    "0%"
                });
        }
        out
    }
}
