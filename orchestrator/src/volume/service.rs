//! The Block Storage rules: who sees which volume, the status machine,
//! quotas, and the background work the drivers do. Handlers call these;
//! compute calls [`super::attachments`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use rusqlite::Connection;
use serde_json::Value;

use super::model::{status, Snapshot, Volume, VolumeType, DEFAULT_TYPE};
use super::store;
use super::VolumeService;
use crate::db::Db;
use crate::host::storage::{VolumeDriver, VolumeSource};
use crate::http::error::{ApiError, ApiResult};
use crate::identity::AuthContext;

/// Bytes in a GiB.
pub const GIB: u64 = 1 << 30;
/// The largest volume we accept, in GiB (keeps byte sizes far from overflow).
pub const MAX_SIZE_GIB: i64 = 1 << 20;

/// Cinder's 404 for a volume.
pub fn volume_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Volume {id} could not be found."))
}

/// Cinder's 404 for a snapshot.
pub fn snapshot_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Snapshot {id} could not be found."))
}

/// Cinder's 400 for a volume in the wrong state.
pub fn invalid_volume(reason: &str) -> ApiError {
    ApiError::bad_request(format!("Invalid volume: {reason}"))
}

/// Cinder's 413.
fn over_limit(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
}

/// Cinder's words for a volume that may not be deleted now.
pub const DELETE_REFUSED: &str = "Volume status must be available or error or error_restoring \
    or error_extending or error_managing and must not be migrating, attached, belong to a group, \
    have snapshots, awaiting a transfer, or be disassociated from snapshots after volume transfer.";

/// The volume `id` if the caller may see it (its project's, or any for an
/// admin), else 404.
pub fn visible_volume(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Volume> {
    match store::find_volume(conn, id)? {
        Some(v) if crate::http::policy::owns_or_admin(ctx, &v.project_id) => Ok(v),
        _ => Err(volume_not_found(id)),
    }
}

/// The snapshot `id` if the caller may see it, else 404.
pub fn visible_snapshot(conn: &Connection, ctx: &AuthContext, id: &str) -> ApiResult<Snapshot> {
    match store::find_snapshot(conn, id)? {
        Some(s) if crate::http::policy::owns_or_admin(ctx, &s.project_id) => Ok(s),
        _ => Err(snapshot_not_found(id)),
    }
}

/// The type `id_or_name` if the caller may see it (private ones: admins),
/// else 404 in Cinder's words.
pub fn visible_type(conn: &Connection, admin: bool, id_or_name: &str) -> ApiResult<VolumeType> {
    match store::find_type(conn, id_or_name)? {
        Some(t) if t.is_public || admin => Ok(t),
        _ => Err(ApiError::not_found(format!(
            "Volume type with name {id_or_name} could not be found."
        ))),
    }
}

/// A project's limits for the volume resources: (volumes, gigabytes, snapshots).
pub fn limits(
    conn: &Connection,
    svc: &VolumeService,
    project: &str,
) -> rusqlite::Result<(i64, i64, i64)> {
    let d = &svc.cfg.quotas;
    Ok((
        crate::quota::limit(conn, d, project, "volumes")?,
        crate::quota::limit(conn, d, project, "gigabytes")?,
        crate::quota::limit(conn, d, project, "snapshots")?,
    ))
}

/// 413 in Cinder's words unless `project` can take `volumes` more volumes,
/// `snapshots` more snapshots and `gib` more GiB.
pub fn check_quota(
    conn: &Connection,
    svc: &VolumeService,
    project: &str,
    volumes: i64,
    snapshots: i64,
    gib: i64,
) -> ApiResult<()> {
    let (lv, lg, ls) = limits(conn, svc, project)?;
    let (uv, ug, us) = store::usage(conn, project)?;
    if gib > 0 && lg >= 0 && ug + gib > lg {
        return Err(over_limit(format!(
            "Requested volume or snapshot exceeds allowed gigabytes quota. Requested {gib}G, \
             quota is {lg}G and {ug}G has been consumed."
        )));
    }
    if volumes > 0 && lv >= 0 && uv + volumes > lv {
        return Err(over_limit(format!(
            "Maximum number of volumes allowed ({lv}) exceeded for quota 'volumes'."
        )));
    }
    if snapshots > 0 && ls >= 0 && us + snapshots > ls {
        return Err(over_limit(format!(
            "Maximum number of snapshots allowed ({ls}) exceeded for quota 'snapshots'."
        )));
    }
    Ok(())
}

/// Records why something failed, for `GET /messages` and the log.
pub fn record_failure(db: &Db, project: &str, kind: &str, id: &str, message: &str) {
    tracing::error!(
        resource = kind,
        id,
        error = message,
        "volume operation failed"
    );
    if let Err(e) = store::add_message(&db.lock(), project, kind, id, message) {
        tracing::warn!(error = %e, "cannot record the failure message");
    }
}

/// What a new volume is made from, as asked.
#[derive(Debug, Clone, Default)]
pub struct CreateVolume {
    /// Size in GiB (may be left out with a snapshot or a source volume).
    pub size: Option<i64>,
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Volume type, by name or id.
    pub volume_type: Option<String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Image to copy.
    pub image_id: Option<String>,
    /// Snapshot to copy.
    pub snapshot_id: Option<String>,
    /// Volume to clone.
    pub source_volid: Option<String>,
}

/// An image's properties as a volume made from it carries them
/// (`volume_image_metadata`), plus the image's own fields, as Cinder copies them.
fn image_metadata_of(img: &crate::image::model::ImageRow) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = img
        .properties
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect();
    m.insert("image_id".into(), img.id.clone());
    m.insert("image_name".into(), img.name.clone().unwrap_or_default());
    m.insert("container_format".into(), "bare".into());
    if let Some(f) = &img.disk_format {
        m.insert("disk_format".into(), f.clone());
    }
    m.insert("min_disk".into(), img.min_disk.to_string());
    m.insert("min_ram".into(), img.min_ram.to_string());
    if let Some(s) = img.size {
        m.insert("size".into(), s.to_string());
    }
    m
}

/// A caller's identity as the service needs it.
pub struct Caller<'a> {
    /// The project the volume goes to.
    pub project_id: &'a str,
    /// The user making it.
    pub user_id: &'a str,
    /// The token's context, for visibility checks (`None`: the daemon on a
    /// server's behalf, which checked them itself).
    pub ctx: Option<&'a AuthContext>,
}

impl VolumeService {
    /// The driver of `backend`, if this host has one.
    pub fn driver(&self, backend: &str) -> Option<Arc<dyn VolumeDriver>> {
        self.drivers.get(backend).cloned()
    }

    /// The `__DEFAULT__` type's backend when it names none.
    pub fn default_backend(&self) -> &str {
        self.cfg.volume.default_backend.as_deref().unwrap_or("file")
    }

    /// Makes the `__DEFAULT__` type if it is missing.
    pub fn ensure_default_type(&self) -> rusqlite::Result<()> {
        let conn = self.db.lock();
        if store::find_type(&conn, DEFAULT_TYPE)?.is_some() {
            return Ok(());
        }
        let mut extra_specs = BTreeMap::new();
        extra_specs.insert(
            "volume_backend_name".to_string(),
            self.default_backend().to_string(),
        );
        store::insert_type(
            &conn,
            &VolumeType {
                id: crate::util::new_id(),
                name: DEFAULT_TYPE.into(),
                description: "Default Volume Type".into(),
                is_public: true,
                extra_specs,
            },
        )
    }

    /// Checks a create request, counts it against the quota and records
    /// the volume `creating`; then its data is made in the background.
    /// Returns the volume and the task making it.
    pub fn create_volume(
        &self,
        caller: &Caller<'_>,
        req: &CreateVolume,
    ) -> ApiResult<(Volume, tokio::task::JoinHandle<()>)> {
        let admin = caller.ctx.is_some_and(AuthContext::is_admin);
        let conn = self.db.lock();
        let mut min_size = 1i64;
        let mut source = VolumeSource::Empty;
        let mut image_metadata = None;
        let mut bootable = false;
        let mut inherited_type = None;
        let sources = [&req.image_id, &req.snapshot_id, &req.source_volid]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if sources > 1 {
            return Err(ApiError::bad_request(
                "Invalid input received: only one of imageRef, snapshot_id and source_volid may be given.",
            ));
        }
        let mine = |ctx: Option<&AuthContext>, owner: &str| match ctx {
            Some(c) => crate::http::policy::owns_or_admin(c, owner),
            None => owner == caller.project_id,
        };
        if let Some(sid) = &req.snapshot_id {
            let snap = match store::find_snapshot(&conn, sid)? {
                Some(s) if mine(caller.ctx, &s.project_id) => s,
                _ => return Err(snapshot_not_found(sid)),
            };
            if snap.status != "available" {
                return Err(ApiError::bad_request(
                    "Invalid snapshot: Originating snapshot status must be one of 'available' values",
                ));
            }
            if let Some(from) = store::find_volume(&conn, &snap.volume_id)? {
                image_metadata = from.image_metadata.clone();
                bootable = from.bootable;
                inherited_type = Some(from.volume_type_id.clone());
            }
            min_size = snap.size;
            if req.size.is_some_and(|s| s < snap.size) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: Volume size '{}'GB cannot be smaller than the snapshot size {}GB. They must be >= original snapshot size.",
                    req.size.unwrap_or_default(), snap.size
                )));
            }
            source = VolumeSource::Snapshot {
                snapshot_id: snap.id.clone(),
                volume_id: snap.volume_id.clone(),
            };
        }
        if let Some(vid) = &req.source_volid {
            let src = match store::find_volume(&conn, vid)? {
                Some(v) if mine(caller.ctx, &v.project_id) => v,
                _ => return Err(volume_not_found(vid)),
            };
            if src.status != status::AVAILABLE {
                return Err(invalid_volume(&format!(
                    "Volume {vid} status must be available to clone, but current status is: {}.",
                    src.status
                )));
            }
            if req.size.is_some_and(|s| s < src.size) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: Volume size '{}'GB cannot be smaller than original volume size  {}GB. They must be >= original volume size.",
                    req.size.unwrap_or_default(), src.size
                )));
            }
            min_size = src.size;
            image_metadata = src.image_metadata.clone();
            bootable = src.bootable;
            inherited_type = Some(src.volume_type_id.clone());
            source = VolumeSource::Volume {
                volume_id: src.id.clone(),
            };
        }
        if let Some(iid) = &req.image_id {
            let img = match caller.ctx {
                Some(ctx) => crate::image::service::lookup_visible(&conn, ctx, iid)?,
                None => crate::image::service::find(&conn, iid)?,
            }
            .ok_or_else(|| {
                ApiError::bad_request(format!("Invalid image identifier or unable to access requested image. (image {iid} not found)"))
            })?;
            if img.status != "active" {
                return Err(ApiError::bad_request(format!("Image {iid} is not active.")));
            }
            let format = match img.disk_format.as_deref() {
                Some("raw") => images::ImageFormat::Raw,
                Some("qcow2") => images::ImageFormat::Qcow2,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "Image {iid} has disk format {} which cannot be copied to a volume (raw or qcow2 only).",
                        other.unwrap_or("unset")
                    )))
                }
            };
            let virt = img.virtual_size.or(img.size).unwrap_or(0).max(0) as u64;
            let need = virt.div_ceil(GIB).max(img.min_disk.max(0) as u64) as i64;
            min_size = need.max(1);
            if req.size.is_some_and(|s| s < min_size) {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: Size of specified image {min_size}GB is larger than volume size {}GB.",
                    req.size.unwrap_or_default()
                )));
            }
            if !crate::util::is_plain_id(iid) {
                return Err(ApiError::bad_request("Invalid image identifier."));
            }
            let path = self.cfg.state_dir.join("images").join(&img.id);
            image_metadata = Some(image_metadata_of(&img));
            bootable = true;
            source = VolumeSource::Image { path, format };
        }
        let size = match req.size {
            Some(s) => s,
            None if sources > 0 && req.image_id.is_none() => min_size,
            None => return Err(ApiError::bad_request(
                "Invalid input received: Volume size 'None' must be an integer and greater than 0.",
            )),
        };
        if !(1..=MAX_SIZE_GIB).contains(&size) {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: Volume size '{size}' must be an integer and greater than 0."
            )));
        }
        let vtype = match (&req.volume_type, inherited_type) {
            (Some(t), _) => visible_type(&conn, admin || caller.ctx.is_none(), t)?,
            (None, Some(id)) => match store::find_type(&conn, &id)? {
                Some(t) => t,
                None => visible_type(&conn, true, DEFAULT_TYPE)?,
            },
            (None, None) => visible_type(&conn, true, DEFAULT_TYPE)?,
        };
        let backend = vtype.backend(self.default_backend()).to_string();
        if let VolumeSource::Snapshot { volume_id, .. } | VolumeSource::Volume { volume_id } =
            &source
        {
            if let Some(from) = store::find_volume(&conn, volume_id)? {
                if from.backend != backend {
                    return Err(ApiError::bad_request(format!(
                        "Invalid input received: the source is on backend '{}' and type {} is on '{backend}'; copies between backends are not supported.",
                        from.backend, vtype.name
                    )));
                }
            }
        }
        check_quota(&conn, self, caller.project_id, 1, 0, size)?;
        let now = crate::util::now_iso();
        let vol = Volume {
            id: crate::util::new_id(),
            project_id: caller.project_id.to_string(),
            user_id: caller.user_id.to_string(),
            name: req.name.clone(),
            description: req.description.clone(),
            size,
            status: status::CREATING.into(),
            volume_type_id: vtype.id.clone(),
            backend: backend.clone(),
            bootable,
            multiattach: vtype.multiattach(),
            metadata: req.metadata.clone(),
            image_metadata,
            snapshot_id: req.snapshot_id.clone(),
            source_volid: req.source_volid.clone(),
            created_at: now.clone(),
            updated_at: now,
        };
        store::insert_volume(&conn, &vol)?;
        drop(conn);
        let task = spawn_create(self.db.clone(), self.driver(&backend), vol.clone(), source);
        Ok((vol, task))
    }

    /// Deletes a volume: checks, `deleting`, then the driver in the
    /// background (the row goes when the data is gone; `error_deleting` if
    /// the driver fails). `force` (admin) skips the status check.
    pub fn delete_volume(
        &self,
        vol: &Volume,
        force: bool,
    ) -> ApiResult<tokio::task::JoinHandle<()>> {
        let conn = self.db.lock();
        let attached = !store::attachments_of_volume(&conn, &vol.id)?.is_empty();
        let snaps = store::snapshot_count(&conn, &vol.id)?;
        let ok_status = [
            status::AVAILABLE,
            status::ERROR,
            "error_restoring",
            status::ERROR_EXTENDING,
            "error_managing",
        ];
        if attached || snaps > 0 || (!force && !ok_status.contains(&vol.status.as_str())) {
            return Err(invalid_volume(DELETE_REFUSED));
        }
        if force && vol.status == status::DELETING {
            return Err(invalid_volume("Volume is already being deleted."));
        }
        store::set_status(&conn, &vol.id, status::DELETING)?;
        drop(conn);
        Ok(spawn_delete(
            self.db.clone(),
            self.driver(&vol.backend),
            vol.clone(),
        ))
    }

    /// Startup: volumes left `creating` by a crash are `error` (the driver
    /// removed what it made, or the delete will); `deleting` ones are
    /// deleted again; snapshots likewise. Attachments stay.
    pub fn reconcile(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let (creating, deleting, snaps) = {
            let conn = self.db.lock();
            (
                store::volumes_in(&conn, &[status::CREATING, status::EXTENDING]),
                store::volumes_in(&conn, &[status::DELETING]),
                store::snapshots_in(&conn, &["creating", "deleting"]),
            )
        };
        match creating {
            Ok(vols) => {
                for v in vols {
                    let (to, why) = if v.status == status::CREATING {
                        (
                            status::ERROR,
                            "the daemon stopped while the volume was being created",
                        )
                    } else {
                        (
                            status::ERROR_EXTENDING,
                            "the daemon stopped while the volume was being extended",
                        )
                    };
                    tracing::warn!(volume = %v.id, "{why}: now {to}");
                    if let Err(e) = store::set_status(&self.db.lock(), &v.id, to) {
                        tracing::error!(error = %e, "cannot reconcile a volume");
                    }
                    record_failure(&self.db, &v.project_id, "VOLUME", &v.id, why);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list volumes to reconcile"),
        }
        match deleting {
            Ok(vols) => {
                for v in vols {
                    tracing::info!(volume = %v.id, "finishing a delete interrupted by a restart");
                    tasks.push(spawn_delete(self.db.clone(), self.driver(&v.backend), v));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list volumes to reconcile"),
        }
        match snaps {
            Ok(snaps) => {
                for s in snaps {
                    let conn = self.db.lock();
                    let r = if s.status == "creating" {
                        store::set_snapshot_status(&conn, &s.id, "error")
                    } else {
                        store::set_snapshot_status(&conn, &s.id, "error_deleting")
                    };
                    if let Err(e) = r {
                        tracing::error!(error = %e, "cannot reconcile a snapshot");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list snapshots to reconcile"),
        }
        tasks
    }
}

/// Makes a volume's data in a blocking task: `available` when done, `error`
/// (with a message) when the driver fails or the backend has no driver.
pub fn spawn_create(
    db: Db,
    driver: Option<Arc<dyn VolumeDriver>>,
    vol: Volume,
    source: VolumeSource,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let result = match driver {
            None => Err(format!(
                "No valid backend was found. No driver for backend '{}' on this host.",
                vol.backend
            )),
            Some(d) => {
                let (id, bytes) = (vol.id.clone(), vol.size as u64 * GIB);
                match tokio::task::spawn_blocking(move || d.create(&id, bytes, &source)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("the driver's task failed: {e}")),
                }
            }
        };
        let to = match &result {
            Ok(()) => status::AVAILABLE,
            Err(_) => status::ERROR,
        };
        let moved = store::move_status(&db.lock(), &vol.id, &[status::CREATING], to);
        match moved {
            Ok(true) => tracing::info!(volume = %vol.id, status = to, "volume create finished"),
            Ok(false) => {
                tracing::warn!(volume = %vol.id, "volume changed while it was being created")
            }
            Err(e) => {
                tracing::error!(volume = %vol.id, error = %e, "cannot record the volume's status")
            }
        }
        if let Err(reason) = result {
            record_failure(
                &db,
                &vol.project_id,
                "VOLUME",
                &vol.id,
                &format!("create failed: {reason}"),
            );
        }
    })
}

/// Removes a volume's data in a blocking task, then its row;
/// `error_deleting` (with a message) when the driver fails.
pub fn spawn_delete(
    db: Db,
    driver: Option<Arc<dyn VolumeDriver>>,
    vol: Volume,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let result = match driver {
            // A volume on a backend this host does not have never got data here.
            None if vol.status == status::ERROR => Ok(()),
            None => Err(format!(
                "no driver for backend '{}' on this host",
                vol.backend
            )),
            Some(d) => {
                let id = vol.id.clone();
                match tokio::task::spawn_blocking(move || d.delete(&id)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("the driver's task failed: {e}")),
                }
            }
        };
        let conn = db.lock();
        let r = match &result {
            Ok(()) => store::delete_volume(&conn, &vol.id),
            Err(_) => store::set_status(&conn, &vol.id, status::ERROR_DELETING),
        };
        drop(conn);
        if let Err(e) = r {
            tracing::error!(volume = %vol.id, error = %e, "cannot record the volume's delete");
        }
        match result {
            Ok(()) => tracing::info!(volume = %vol.id, "volume deleted"),
            Err(reason) => record_failure(
                &db,
                &vol.project_id,
                "VOLUME",
                &vol.id,
                &format!("delete failed: {reason}"),
            ),
        }
    })
}
