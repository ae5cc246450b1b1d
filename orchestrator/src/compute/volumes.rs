//! A server's volumes, Nova's side of them: attach and detach (hot-plugged
//! into an ACTIVE server's VMM, recorded for the next start of a SHUTOFF
//! one), the disks a starting VMM gets, re-plugging after a daemon restart,
//! releasing them when the server goes, and growing an attached one
//! ([`VmmResize`], the volume service's online-resize hook).
//!
//! The volume service keeps the attachments (statuses, who may attach
//! what); this module decides when the host plugs or unplugs them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use vmm_api::config::DiskConfig;

use super::model::{status, Server};
use super::Compute;
use crate::host::vmm::AgentError;
use crate::http::error::{ApiError, ApiResult};
use crate::volume::attachments::{Attachment, AttachmentStatus, ReserveRequest};

/// How long a guest gets to release a volume on detach.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The device name of a server's root disk.
pub const ROOT_DEVICE: &str = "/dev/vda";

/// Runs a blocking closure off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("background task failed: {e}")))
}

/// The guest disk a volume attachment is plugged as: its target, with the
/// volume's serial as the device id.
pub fn disk_of(a: &Attachment) -> DiskConfig {
    DiskConfig {
        path: a.target.path.clone(),
        read_only: false,
        id: Some(a.serial.clone()),
        format: a.target.format,
        ..Default::default()
    }
}

/// Whether a server boots from a volume (it has no image).
pub fn boots_from_volume(s: &Server) -> bool {
    s.image_id.is_empty()
}

/// The next free `/dev/vdX` after the server's disks (its boot disk is
/// `/dev/vda`, a root volume too) and its volumes; 400 when none is left.
pub fn next_device(atts: &[Attachment]) -> ApiResult<String> {
    let used: HashSet<&str> = atts.iter().map(|a| a.device.as_str()).collect();
    (b'b'..=b'z')
        .map(|c| format!("/dev/vd{}", c as char))
        .find(|d| !used.contains(d.as_str()))
        .ok_or_else(|| ApiError::bad_request("No free disk device names for prefix 'vd'"))
}

/// The server's root volume attachment (boot index 0).
pub fn root_of(atts: &[Attachment]) -> Option<&Attachment> {
    atts.iter().find(|a| a.boot_index == Some(0))
}

/// Nova's 404 for a volume that is not attached to the server.
pub fn not_attached(server_id: &str, volume_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Instance {server_id} is not attached to volume {volume_id}"
    ))
}

/// 409 unless the server is ACTIVE or SHUTOFF with no task, in Nova's words.
fn check_state(s: &Server, action: &str) -> ApiResult<()> {
    let settled =
        s.task_state.is_none() && (s.status == status::ACTIVE || s.status == status::SHUTOFF);
    if settled {
        return Ok(());
    }
    let what = match &s.task_state {
        Some(task) => format!("task_state {task}"),
        None => format!("vm_state {}", s.status.to_ascii_lowercase()),
    };
    Err(ApiError::conflict(format!(
        "Cannot '{action}' instance {} while it is in {what}",
        s.id
    )))
}

/// 409 while another operation holds the server.
fn busy(c: &Arc<Compute>, s: &Server, action: &str) -> ApiResult<super::BusyGuard> {
    c.try_busy(&s.id).ok_or_else(|| {
        ApiError::conflict(format!(
            "Cannot '{action}' instance {} while another operation is in progress",
            s.id
        ))
    })
}

/// The server's attachments.
pub async fn attachments(c: &Arc<Compute>, server_id: &str) -> ApiResult<Vec<Attachment>> {
    let volume = Arc::clone(&c.volume);
    let sid = server_id.to_string();
    blocking(move || volume.attachments_of_server(&sid)).await?
}

/// The attached volumes' ids of each server in `server_ids` (for
/// `os-extended-volumes:volumes_attached`), in the same order.
pub async fn volume_ids_of(
    c: &Arc<Compute>,
    server_ids: Vec<String>,
) -> ApiResult<Vec<Vec<String>>> {
    let volume = Arc::clone(&c.volume);
    blocking(move || {
        server_ids
            .iter()
            .map(|id| match volume.volume_ids_of_server(id) {
                Ok(ids) => ids,
                // A server stays visible when its volumes cannot be read
                // (say, their backend is gone).
                Err(e) => {
                    tracing::warn!(server = %id, error = %e.message, "cannot read the server's volumes");
                    Vec::new()
                }
            })
            .collect()
    })
    .await
}

/// What a failed hot-plug tells the user: the VMM's refusal as 409, the
/// rest as 500.
fn plug_error(what: &str, e: &AgentError) -> ApiError {
    let status = match e {
        AgentError::Device { .. } | AgentError::Timeout { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::warn!(error = %e, "{what}");
    ApiError::new(status, format!("{what}: {e}"))
}

/// Attaches volume `volume_id` (of the server's project) to `s`: reserved,
/// hot-plugged when the server runs (or recorded for its next start), then
/// in-use. A hot-plug failure rolls the reservation back.
pub async fn attach(
    c: &Arc<Compute>,
    s: &Server,
    volume_id: &str,
    delete_on_termination: bool,
) -> ApiResult<Attachment> {
    check_state(s, "attach_volume")?;
    let _busy = busy(c, s, "attach_volume")?;
    let atts = attachments(c, &s.id).await?;
    if atts.iter().any(|a| a.volume_id == volume_id) {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: volume {volume_id} is already attached to instance {}",
            s.id
        )));
    }
    let device = next_device(&atts)?;
    let req = ReserveRequest {
        project_id: s.project_id.clone(),
        volume_id: volume_id.to_string(),
        server_id: s.id.clone(),
        device,
        delete_on_termination,
        boot_index: None,
    };
    let volume = Arc::clone(&c.volume);
    let att = blocking(move || volume.reserve(&req)).await??;
    if s.status == status::ACTIVE {
        let vmm = Arc::clone(&c.vmm);
        let (sid, disk, backing) = (s.id.clone(), disk_of(&att), att.target.backing.clone());
        let plugged = blocking(move || vmm.hot_add_disk(&sid, &disk, &backing)).await?;
        match plugged {
            Ok(dev) => {
                tracing::info!(server = %s.id, volume = %volume_id, bdf = ?dev.bdf, "volume hot-plugged")
            }
            // The guest stopped meanwhile: it gets the volume at its next start.
            Err(AgentError::NotRunning { .. }) => {}
            Err(e) => {
                let err = plug_error(&format!("Failed to attach volume {volume_id}"), &e);
                let volume = Arc::clone(&c.volume);
                let (id, reason) = (att.id.clone(), err.message.clone());
                if let Err(e2) = blocking(move || volume.attach_failed(&id, &reason)).await? {
                    tracing::error!(volume = %volume_id, error = %e2.message, "cannot roll the reservation back");
                }
                return Err(err);
            }
        }
    }
    let volume = Arc::clone(&c.volume);
    let id = att.id.clone();
    blocking(move || volume.attach_done(&id)).await??;
    Ok(Attachment {
        status: AttachmentStatus::Attached,
        ..att
    })
}

/// Detaches volume `volume_id` from `s`: unplugged once the guest let go
/// (when the server runs), then available. The root volume cannot be
/// detached (400); a guest that holds on makes it 409 and the volume stays
/// attached.
pub async fn detach(c: &Arc<Compute>, s: &Server, volume_id: &str) -> ApiResult<()> {
    check_state(s, "detach_volume")?;
    let _busy = busy(c, s, "detach_volume")?;
    let atts = attachments(c, &s.id).await?;
    let Some(att) = atts.iter().find(|a| a.volume_id == volume_id) else {
        return Err(not_attached(&s.id, volume_id));
    };
    if att.boot_index == Some(0) {
        return Err(ApiError::bad_request("Cannot detach a root device volume"));
    }
    let volume = Arc::clone(&c.volume);
    let (sid, vid) = (s.id.clone(), volume_id.to_string());
    let att = blocking(move || volume.begin_detach(&sid, &vid)).await??;
    if s.status == status::ACTIVE {
        let vmm = Arc::clone(&c.vmm);
        let (sid, serial) = (s.id.clone(), att.serial.clone());
        let r = blocking(move || vmm.hot_remove_device(&sid, &serial, DETACH_TIMEOUT)).await?;
        match r {
            Ok(()) | Err(AgentError::NotRunning { .. }) => {}
            Err(e) => {
                let err = match &e {
                    AgentError::Timeout { .. } => ApiError::conflict(format!(
                        "Failed to detach volume {volume_id}: the guest did not release it within {} s; it stays attached (unmount it in the guest and try again)",
                        DETACH_TIMEOUT.as_secs()
                    )),
                    _ => plug_error(&format!("Failed to detach volume {volume_id}"), &e),
                };
                let volume = Arc::clone(&c.volume);
                let (id, reason) = (att.id.clone(), err.message.clone());
                if let Err(e2) = blocking(move || volume.detach_failed(&id, &reason)).await? {
                    tracing::error!(volume = %volume_id, error = %e2.message, "cannot roll the detach back");
                }
                return Err(err);
            }
        }
    }
    let volume = Arc::clone(&c.volume);
    let id = att.id.clone();
    blocking(move || volume.detach_done(&id)).await??;
    tracing::info!(server = %s.id, volume = %volume_id, "volume detached");
    Ok(())
}

/// Before a VMM starts: finishes what a crash interrupted (a reservation
/// never plugged is rolled back, a detach is completed: nothing runs that
/// holds the volume) and returns the disks of the attached volumes, root
/// first.
pub async fn disks_for_start(c: &Arc<Compute>, server_id: &str) -> Result<Vec<DiskConfig>, String> {
    let atts = attachments(c, server_id)
        .await
        .map_err(|e| format!("the server's volumes: {}", e.message))?;
    let mut disks = Vec::new();
    for a in atts {
        let volume = Arc::clone(&c.volume);
        let r = match a.status {
            AttachmentStatus::Attached => {
                disks.push(disk_of(&a));
                continue;
            }
            // The root volume of a server being built is plugged now.
            AttachmentStatus::Reserved if a.boot_index == Some(0) => {
                disks.push(disk_of(&a));
                blocking(move || volume.attach_done(&a.id)).await
            }
            AttachmentStatus::Reserved => {
                blocking(move || volume.attach_failed(&a.id, "interrupted before it was plugged"))
                    .await
            }
            AttachmentStatus::Detaching => blocking(move || volume.detach_done(&a.id)).await,
        };
        if let Err(e) = r.and_then(|r| r) {
            return Err(format!("the server's volumes: {}", e.message));
        }
    }
    Ok(disks)
}

/// After a daemon restart, for a server whose VMM still runs: plugs the
/// attached volumes its guest lacks, unplugs the ones no longer attached,
/// and finishes attaches and detaches the restart interrupted.
pub async fn replug(c: &Arc<Compute>, server_id: &str) {
    let atts = match attachments(c, server_id).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(server = %server_id, error = %e.message, "cannot read the server's volumes to re-plug them");
            return;
        }
    };
    let vmm = Arc::clone(&c.vmm);
    let sid = server_id.to_string();
    let found = blocking(move || (vmm.devices(&sid), vmm.load_spec(&sid))).await;
    let Ok((Ok(devices), spec)) = found else {
        tracing::warn!(server = %server_id, "cannot list the guest's devices to re-plug volumes");
        return;
    };
    let present: HashSet<String> = devices.into_iter().map(|d| d.id).collect();
    let wanted: HashSet<&str> = atts
        .iter()
        .filter(|a| a.status == AttachmentStatus::Attached)
        .map(|a| a.serial.as_str())
        .collect();
    // Volumes the host plugged (they have ids) that are no longer attached.
    let stale: Vec<String> = spec
        .ok()
        .flatten()
        .map(|s| {
            s.vm.disks
                .into_iter()
                .filter_map(|d| d.id)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|id| present.contains(id) && !wanted.contains(id.as_str()))
        .filter(|id| !atts.iter().any(|a| &a.serial == id))
        .collect();
    for a in &atts {
        let plugged = present.contains(&a.serial);
        let (vmm, volume) = (Arc::clone(&c.vmm), Arc::clone(&c.volume));
        let (sid, a2) = (server_id.to_string(), a.clone());
        let r = blocking(move || -> Result<(), String> {
            let text = |e: crate::http::error::ApiError| e.message;
            match (a2.status, plugged) {
                (AttachmentStatus::Attached, true) => Ok(()),
                (AttachmentStatus::Attached, false) => vmm
                    .hot_add_disk(&sid, &disk_of(&a2), &a2.target.backing)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                (AttachmentStatus::Reserved, true) => volume.attach_done(&a2.id).map_err(text),
                (AttachmentStatus::Reserved, false) => volume
                    .attach_failed(&a2.id, "interrupted by a daemon restart")
                    .map_err(text),
                (AttachmentStatus::Detaching, false) => volume.detach_done(&a2.id).map_err(text),
                (AttachmentStatus::Detaching, true) => {
                    match vmm.hot_remove_device(&sid, &a2.serial, DETACH_TIMEOUT) {
                        Ok(()) => volume.detach_done(&a2.id).map_err(text),
                        Err(e) => {
                            let reason = e.to_string();
                            volume.detach_failed(&a2.id, &reason).map_err(text)?;
                            Err(reason)
                        }
                    }
                }
            }
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(server = %server_id, volume = %a.volume_id, error = %e, "cannot re-plug the volume")
            }
            Err(e) => {
                tracing::warn!(server = %server_id, error = %e.message, "re-plug task failed")
            }
        }
    }
    for id in stale {
        let vmm = Arc::clone(&c.vmm);
        let sid = server_id.to_string();
        tracing::info!(server = %server_id, device = %id, "unplugging a volume that is no longer attached");
        let r = blocking(move || vmm.hot_remove_device(&sid, &id, DETACH_TIMEOUT)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(server = %server_id, error = %e, "cannot unplug a stale volume");
        }
    }
}

/// When the server is deleted (its VMM already gone): every attachment
/// ends, and volumes marked `delete_on_termination` are deleted. Failures
/// are logged; the server goes anyway.
pub async fn release_all(c: &Arc<Compute>, server_id: &str) {
    let atts = match attachments(c, server_id).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(server = %server_id, error = %e.message, "cannot read the deleted server's volumes");
            return;
        }
    };
    for a in atts {
        let volume = Arc::clone(&c.volume);
        let a2 = a.clone();
        // Nothing holds the volume any more: the attachment simply ends.
        let ended = blocking(move || match a2.status {
            AttachmentStatus::Reserved => volume.attach_failed(&a2.id, "the server was deleted"),
            AttachmentStatus::Attached | AttachmentStatus::Detaching => volume.detach_done(&a2.id),
        })
        .await
        .and_then(|r| r);
        if let Err(e) = ended {
            tracing::error!(server = %server_id, volume = %a.volume_id, error = %e.message, "cannot detach the deleted server's volume");
            continue;
        }
        if a.delete_on_termination {
            if let Err(e) = c.volume.delete_for_server(&a.volume_id).await {
                tracing::error!(volume = %a.volume_id, error = %e.message, "cannot delete the volume with its server");
            }
        }
    }
}

/// The volume service's online-resize hook: a running guest is told that
/// its attached volume grew (`resize-disk`); a server without a running VMM
/// sees the new size at its next start.
pub struct VmmResize {
    vmm: Arc<dyn crate::host::vmm::VmmHost>,
}

impl VmmResize {
    /// The hook over this host's VMMs.
    pub fn new(vmm: Arc<dyn crate::host::vmm::VmmHost>) -> Self {
        VmmResize { vmm }
    }
}

impl crate::volume::OnlineResize for VmmResize {
    fn resize(&self, server_id: &str, volume_id: &str, new_size_bytes: u64) -> Result<(), String> {
        let serial = crate::volume::attachments::serial_of(volume_id);
        match self.vmm.resize_disk(server_id, &serial, new_size_bytes) {
            Ok(()) | Err(AgentError::NotRunning { .. }) => Ok(()),
            Err(e) => Err(format!("the guest of server {server_id} was not told: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::storage::VolumeTarget;

    fn att(vol: &str, device: &str, boot: Option<i64>) -> Attachment {
        Attachment {
            id: format!("a-{vol}"),
            volume_id: vol.into(),
            server_id: "s".into(),
            device: device.into(),
            status: AttachmentStatus::Attached,
            delete_on_termination: false,
            boot_index: boot,
            target: VolumeTarget {
                path: format!("/v/{vol}").into(),
                format: images::ImageFormat::Qcow2,
                backing: Vec::new(),
            },
            serial: crate::volume::attachments::serial_of(vol),
        }
    }

    #[test]
    fn device_names_fill_the_first_gap() {
        assert_eq!(next_device(&[]).unwrap(), "/dev/vdb");
        let atts = [att("1", "/dev/vdb", None), att("2", "/dev/vdd", None)];
        assert_eq!(next_device(&atts).unwrap(), "/dev/vdc");
        let root = [att("r", ROOT_DEVICE, Some(0))];
        assert_eq!(next_device(&root).unwrap(), "/dev/vdb");
        assert_eq!(root_of(&root).map(|a| a.volume_id.as_str()), Some("r"));
        let full: Vec<_> = (b'b'..=b'z')
            .map(|c| att(&c.to_string(), &format!("/dev/vd{}", c as char), None))
            .collect();
        assert_eq!(next_device(&full).unwrap_err().status, 400);
    }

    #[test]
    fn a_volume_disk_has_its_serial_as_id() {
        let d = disk_of(&att("0123456789abcdef0123456789", "/dev/vdb", None));
        assert_eq!(d.id.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(
            d.path,
            std::path::PathBuf::from("/v/0123456789abcdef0123456789")
        );
        assert!(!d.read_only);
    }
}
