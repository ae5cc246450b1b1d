//! Nova's side of Cinder's attachment API, for compute: reserve a volume for
//! a server, mark it attached or roll back, detach, list a server's volumes,
//! and where its VMM opens each one. Statuses move as Cinder's do:
//! available → attaching (reserved) → in-use → detaching → available; a
//! multiattach volume stays in-use while any attachment is left.
//!
//! Contract for compute (the bodies are the volume service's):
//! - every method answers the API errors compute passes on as they are
//!   (404 unknown volume or another project's, 400 wrong status with
//!   Cinder's words, 409 already attached to this server);
//! - an attachment row exists from [`VolumeService::reserve`] until
//!   [`VolumeService::detach_done`] or [`VolumeService::attach_failed`], so
//!   a daemon restart finds every attachment and re-plugs it.

use crate::host::storage::VolumeTarget;
use crate::http::error::{ApiError, ApiResult};

use super::model::{status, Volume};
use super::service::{invalid_volume, record_failure, volume_not_found, Caller, CreateVolume};
use super::store;
use super::VolumeService;

/// Where an attachment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentStatus {
    /// Reserved for the server; not plugged yet (volume `attaching`).
    Reserved,
    /// Plugged (volume `in-use`); also a SHUTOFF server's volumes, which
    /// are plugged at its next start.
    Attached,
    /// Being unplugged (volume `detaching`).
    Detaching,
}

/// One volume on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The attachment's id (Cinder's attachment id; Nova shows the volume id
    /// as the `volumeAttachment` id).
    pub id: String,
    /// The volume.
    pub volume_id: String,
    /// The server.
    pub server_id: String,
    /// The guest device name Nova reports (`/dev/vdb`).
    pub device: String,
    /// Where it is in its life.
    pub status: AttachmentStatus,
    /// Delete the volume with the server (Nova's BDM flag).
    pub delete_on_termination: bool,
    /// `Some(0)` for the root disk of a server booted from volume.
    pub boot_index: Option<i64>,
    /// Where the VMM opens the volume.
    pub target: VolumeTarget,
    /// The virtio-blk serial: the volume id's first 20 characters, so that
    /// `/dev/disk/by-id/virtio-<serial>` finds it in the guest.
    pub serial: String,
}

/// The serial a volume's disk shows the guest.
pub fn serial_of(volume_id: &str) -> String {
    volume_id.chars().take(20).collect()
}

/// What compute asks to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The caller's project (a volume of another project is 404, also for
    /// admins: Nova attaches only the server's project's volumes).
    pub project_id: String,
    /// The volume.
    pub volume_id: String,
    /// The server.
    pub server_id: String,
    /// The guest device name to report (`/dev/vdb`).
    pub device: String,
    /// Delete the volume with the server.
    pub delete_on_termination: bool,
    /// `Some(0)` for a root volume.
    pub boot_index: Option<i64>,
}

impl VolumeService {
    /// Reserves a volume for a server (volume `attaching`, or stays `in-use`
    /// for a multiattach type). 400 unless available (or in-use and
    /// multiattach), 409 if already attached to this server.
    pub fn reserve(&self, req: &ReserveRequest) -> ApiResult<Attachment> {
        let conn = self.db.lock();
        let vol = match store::find_volume(&conn, &req.volume_id)? {
            Some(v) if v.project_id == req.project_id => v,
            _ => return Err(volume_not_found(&req.volume_id)),
        };
        let existing = store::attachments_of_volume(&conn, &vol.id)?;
        if existing
            .iter()
            .any(|a| a.attachment.server_id == req.server_id)
        {
            return Err(ApiError::conflict(format!(
                "Volume {} is already attached to server {}.",
                vol.id, req.server_id
            )));
        }
        let next = match vol.status.as_str() {
            status::AVAILABLE => status::ATTACHING,
            status::IN_USE | status::ATTACHING if vol.multiattach => vol.status.as_str(),
            status::IN_USE | status::ATTACHING => {
                return Err(invalid_volume(&format!(
                    "Volume {} is already attached and its type does not allow multiattach \
                     (multiattach=\"<is> True\").",
                    vol.id
                )))
            }
            other => {
                return Err(invalid_volume(&format!(
                "Volume {} status must be available to reserve, but the current status is {other}.",
                vol.id
            )))
            }
        };
        let target = self.target_of(&vol)?;
        let attachment = Attachment {
            id: crate::util::new_id(),
            volume_id: vol.id.clone(),
            server_id: req.server_id.clone(),
            device: req.device.clone(),
            status: AttachmentStatus::Reserved,
            delete_on_termination: req.delete_on_termination,
            boot_index: req.boot_index,
            target,
            serial: serial_of(&vol.id),
        };
        store::insert_attachment(&conn, &attachment)?;
        store::set_status(&conn, &vol.id, next)?;
        Ok(attachment)
    }

    /// The volume is plugged (or recorded for the next start): `in-use`.
    pub fn attach_done(&self, attachment_id: &str) -> ApiResult<()> {
        let conn = self.db.lock();
        let row = find_attachment(&conn, attachment_id)?;
        store::set_attachment_status(&conn, attachment_id, AttachmentStatus::Attached)?;
        store::set_status(&conn, &row.volume_id, status::IN_USE)?;
        Ok(())
    }

    /// Plugging failed: the attachment goes, the volume is as before the
    /// reserve; `reason` goes to the volume's messages.
    pub fn attach_failed(&self, attachment_id: &str, reason: &str) -> ApiResult<()> {
        let project = {
            let conn = self.db.lock();
            let row = find_attachment(&conn, attachment_id)?;
            store::delete_attachment(&conn, attachment_id)?;
            settle_status(&conn, &row.volume_id)?;
            store::find_volume(&conn, &row.volume_id)?.map(|v| v.project_id)
        };
        if let Some(p) = project {
            record_failure(
                &self.db,
                &p,
                "VOLUME",
                attachment_id,
                &format!("attach failed: {reason}"),
            );
        }
        Ok(())
    }

    /// Starts detaching `volume_id` from `server_id` (`detaching`); 404 when
    /// it is not attached to that server.
    pub fn begin_detach(&self, server_id: &str, volume_id: &str) -> ApiResult<Attachment> {
        let conn = self.db.lock();
        let vol =
            store::find_volume(&conn, volume_id)?.ok_or_else(|| volume_not_found(volume_id))?;
        let all = store::attachments_of_volume(&conn, volume_id)?;
        let Some(row) = all.iter().find(|a| a.attachment.server_id == server_id) else {
            return Err(ApiError::not_found(format!(
                "Volume {volume_id} is not attached to server {server_id}."
            )));
        };
        if row.attachment.status == AttachmentStatus::Reserved {
            return Err(invalid_volume(&format!(
                "Volume {volume_id} is still being attached to server {server_id}."
            )));
        }
        store::set_attachment_status(&conn, &row.attachment.id, AttachmentStatus::Detaching)?;
        let others_attached = all.iter().any(|a| {
            a.attachment.id != row.attachment.id
                && a.attachment.status == AttachmentStatus::Attached
        });
        if !others_attached {
            store::set_status(&conn, volume_id, status::DETACHING)?;
        }
        let mut a = row.attachment.clone();
        a.status = AttachmentStatus::Detaching;
        a.target = self.target_of(&vol)?;
        Ok(a)
    }

    /// The volume is unplugged: the attachment goes; the volume is
    /// `available` (or stays `in-use` with other attachments).
    pub fn detach_done(&self, attachment_id: &str) -> ApiResult<()> {
        let conn = self.db.lock();
        let row = find_attachment(&conn, attachment_id)?;
        store::delete_attachment(&conn, attachment_id)?;
        settle_status(&conn, &row.volume_id)?;
        Ok(())
    }

    /// Unplugging failed (the guest did not let go): back to `in-use`.
    pub fn detach_failed(&self, attachment_id: &str, reason: &str) -> ApiResult<()> {
        let project = {
            let conn = self.db.lock();
            let row = find_attachment(&conn, attachment_id)?;
            store::set_attachment_status(&conn, attachment_id, AttachmentStatus::Attached)?;
            store::set_status(&conn, &row.volume_id, status::IN_USE)?;
            store::find_volume(&conn, &row.volume_id)?.map(|v| v.project_id)
        };
        if let Some(p) = project {
            record_failure(
                &self.db,
                &p,
                "VOLUME",
                attachment_id,
                &format!("detach failed: {reason}"),
            );
        }
        Ok(())
    }

    /// A server's attachments (any status), root volume first, then in
    /// attach order.
    pub fn attachments_of_server(&self, server_id: &str) -> ApiResult<Vec<Attachment>> {
        let rows = {
            let conn = self.db.lock();
            let rows = store::attachments_of_server(&conn, server_id)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let vol = store::find_volume(&conn, &row.attachment.volume_id)?
                    .ok_or_else(|| volume_not_found(&row.attachment.volume_id))?;
                out.push((row.attachment, vol));
            }
            out
        };
        // The drivers may run tools (lvs): not under the database lock.
        rows.into_iter()
            .map(|(mut a, vol)| {
                a.target = self.target_of(&vol)?;
                Ok(a)
            })
            .collect()
    }

    /// The ids of the volumes attached (or being attached) to a server, root
    /// volume first: the database alone, no driver call (`server list`).
    pub fn volume_ids_of_server(&self, server_id: &str) -> ApiResult<Vec<String>> {
        let rows = store::attachments_of_server(&self.db.lock(), server_id)?;
        Ok(rows.into_iter().map(|r| r.attachment.volume_id).collect())
    }

    /// Where a VMM opens a volume now (the driver's answer).
    pub fn target(&self, volume_id: &str) -> ApiResult<VolumeTarget> {
        let vol = store::find_volume(&self.db.lock(), volume_id)?
            .ok_or_else(|| volume_not_found(volume_id))?;
        self.target_of(&vol)
    }

    fn target_of(&self, vol: &Volume) -> ApiResult<VolumeTarget> {
        let driver = self.driver(&vol.backend).ok_or_else(|| {
            invalid_volume(&format!(
                "no driver for backend '{}' on this host",
                vol.backend
            ))
        })?;
        driver.target(&vol.id).map_err(|e| {
            invalid_volume(&format!(
                "volume {} has no data on its backend: {e}",
                vol.id
            ))
        })
    }

    /// Boot from volume: makes a `size_gib` volume from image `image_id` in
    /// `project_id` (quota counted, `volume_image_metadata` from the image)
    /// and waits until it is available; 400 with the reason if it ends in
    /// `error`. Returns the volume id.
    pub async fn create_for_boot(
        &self,
        project_id: &str,
        image_id: &str,
        size_gib: u64,
        name: &str,
    ) -> ApiResult<String> {
        let size = i64::try_from(size_gib).map_err(|_| {
            ApiError::bad_request(format!("volume size {size_gib} GiB is too large"))
        })?;
        let req = CreateVolume {
            size: Some(size),
            name: (!name.is_empty()).then(|| name.to_string()),
            image_id: Some(image_id.to_string()),
            ..Default::default()
        };
        let caller = Caller {
            project_id,
            user_id: "nova",
            ctx: None,
        };
        let (vol, task) = self.create_volume(&caller, &req)?;
        task.await
            .map_err(|e| ApiError::internal(format!("volume create task: {e}")))?;
        let conn = self.db.lock();
        match store::find_volume(&conn, &vol.id)? {
            Some(v) if v.status == status::AVAILABLE => Ok(v.id),
            Some(v) => {
                let why = store::messages(&conn, Some(project_id))?
                    .into_iter()
                    .find(|m| m.2 == v.id)
                    .map(|m| m.3)
                    .unwrap_or_else(|| format!("status {}", v.status));
                Err(ApiError::bad_request(format!(
                    "Block Device Mapping is Invalid: volume {} did not become available: {why}",
                    v.id
                )))
            }
            None => Err(volume_not_found(&vol.id)),
        }
    }

    /// Deletes a volume whose attachment is gone (delete_on_termination);
    /// a failure leaves it `error_deleting`.
    pub async fn delete_for_server(&self, volume_id: &str) -> ApiResult<()> {
        let vol = store::find_volume(&self.db.lock(), volume_id)?
            .ok_or_else(|| volume_not_found(volume_id))?;
        let task = self.delete_volume(&vol, true)?;
        task.await
            .map_err(|e| ApiError::internal(format!("volume delete task: {e}")))?;
        match store::find_volume(&self.db.lock(), volume_id)? {
            None => Ok(()),
            Some(v) => Err(ApiError::internal(format!(
                "volume {volume_id} could not be deleted (now {})",
                v.status
            ))),
        }
    }

    /// A volume's `volume_image_metadata` (the image's properties it was
    /// made from: `kernel_id`, `ramdisk_id`, `os_command_line`, ...).
    pub fn image_metadata(
        &self,
        volume_id: &str,
    ) -> ApiResult<std::collections::BTreeMap<String, String>> {
        let vol = store::find_volume(&self.db.lock(), volume_id)?
            .ok_or_else(|| volume_not_found(volume_id))?;
        Ok(vol.image_metadata.unwrap_or_default())
    }

    /// A volume's size in GiB (boot-from-volume flavors with disk 0).
    pub fn size_gib(&self, volume_id: &str) -> ApiResult<u64> {
        let vol = store::find_volume(&self.db.lock(), volume_id)?
            .ok_or_else(|| volume_not_found(volume_id))?;
        Ok(vol.size.max(0) as u64)
    }
}

/// What an attachment row says, or 404.
fn find_attachment(conn: &rusqlite::Connection, id: &str) -> ApiResult<Attachment> {
    store::find_attachment(conn, id)?
        .map(|r| r.attachment)
        .ok_or_else(|| ApiError::not_found(format!("Volume attachment {id} could not be found.")))
}

/// A volume's status from its attachments: `in-use` while any is attached,
/// `detaching`/`attaching` while one is on its way, else `available`.
fn settle_status(conn: &rusqlite::Connection, volume_id: &str) -> ApiResult<()> {
    let rows = store::attachments_of_volume(conn, volume_id)?;
    let has = |s: AttachmentStatus| rows.iter().any(|a| a.attachment.status == s);
    let to = if has(AttachmentStatus::Attached) {
        status::IN_USE
    } else if has(AttachmentStatus::Detaching) {
        status::DETACHING
    } else if has(AttachmentStatus::Reserved) {
        status::ATTACHING
    } else {
        status::AVAILABLE
    };
    store::set_status(conn, volume_id, to)?;
    Ok(())
}
