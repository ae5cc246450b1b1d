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
use crate::http::error::ApiResult;

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
        let _ = req;
        todo!("volume service: reserve")
    }

    /// The volume is plugged (or recorded for the next start): `in-use`.
    pub fn attach_done(&self, attachment_id: &str) -> ApiResult<()> {
        let _ = attachment_id;
        todo!("volume service: attach_done")
    }

    /// Plugging failed: the attachment goes, the volume is as before the
    /// reserve; `reason` goes to the volume's messages.
    pub fn attach_failed(&self, attachment_id: &str, reason: &str) -> ApiResult<()> {
        let _ = (attachment_id, reason);
        todo!("volume service: attach_failed")
    }

    /// Starts detaching `volume_id` from `server_id` (`detaching`); 404 when
    /// it is not attached to that server.
    pub fn begin_detach(&self, server_id: &str, volume_id: &str) -> ApiResult<Attachment> {
        let _ = (server_id, volume_id);
        todo!("volume service: begin_detach")
    }

    /// The volume is unplugged: the attachment goes; the volume is
    /// `available` (or stays `in-use` with other attachments).
    pub fn detach_done(&self, attachment_id: &str) -> ApiResult<()> {
        let _ = attachment_id;
        todo!("volume service: detach_done")
    }

    /// Unplugging failed (the guest did not let go): back to `in-use`.
    pub fn detach_failed(&self, attachment_id: &str, reason: &str) -> ApiResult<()> {
        let _ = (attachment_id, reason);
        todo!("volume service: detach_failed")
    }

    /// A server's attachments (any status), root volume first, then in
    /// attach order.
    pub fn attachments_of_server(&self, server_id: &str) -> ApiResult<Vec<Attachment>> {
        let _ = server_id;
        todo!("volume service: attachments_of_server")
    }

    /// Where a VMM opens a volume now (the driver's answer).
    pub fn target(&self, volume_id: &str) -> ApiResult<VolumeTarget> {
        let _ = volume_id;
        todo!("volume service: target")
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
        let _ = (project_id, image_id, size_gib, name);
        todo!("volume service: create_for_boot")
    }

    /// Deletes a volume whose attachment is gone (delete_on_termination);
    /// a failure leaves it `error_deleting`.
    pub async fn delete_for_server(&self, volume_id: &str) -> ApiResult<()> {
        let _ = volume_id;
        todo!("volume service: delete_for_server")
    }

    /// A volume's `volume_image_metadata` (the image's properties it was
    /// made from: `kernel_id`, `ramdisk_id`, `os_command_line`, ...).
    pub fn image_metadata(
        &self,
        volume_id: &str,
    ) -> ApiResult<std::collections::BTreeMap<String, String>> {
        let _ = volume_id;
        todo!("volume service: image_metadata")
    }

    /// A volume's size in GiB (boot-from-volume flavors with disk 0).
    pub fn size_gib(&self, volume_id: &str) -> ApiResult<u64> {
        let _ = volume_id;
        todo!("volume service: size_gib")
    }
}
