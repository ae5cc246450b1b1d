//! Volume actions (`POST /volumes/{id}/action`): grow a volume (offline, or
//! online through compute's [`OnlineResize`]), and the admin's status reset.

use std::sync::Arc;

use super::model::{status, Volume};
use super::service::{check_quota, invalid_volume, record_failure, GIB, MAX_SIZE_GIB};
use super::store;
use super::VolumeService;
use crate::http::error::{ApiError, ApiResult};

/// What compute does when an attached volume grows: tell the server's VMM
/// (which grows the file it holds open, and the guest sees the new size).
/// Called from a blocking task.
pub trait OnlineResize: Send + Sync {
    /// Volume `volume_id`, attached to `server_id`, is now `new_size_bytes`.
    fn resize(&self, server_id: &str, volume_id: &str, new_size_bytes: u64) -> Result<(), String>;
}

/// The microversion from which an attached volume may be extended.
pub const EXTEND_IN_USE_MICROVERSION: (u32, u32) = (3, 42);

impl VolumeService {
    /// `os-extend`: grows `vol` to `new_size` GiB. An available volume is
    /// grown by its driver; an in-use one (microversion ≥ 3.42) by its
    /// driver and then compute's [`OnlineResize`] (400 when there is none).
    pub fn extend(
        &self,
        vol: &Volume,
        new_size: i64,
        microversion: (u32, u32),
    ) -> ApiResult<tokio::task::JoinHandle<()>> {
        if new_size <= vol.size {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: New size for extend must be greater than current size. (current: {}, extended: {new_size}).",
                vol.size
            )));
        }
        if new_size > MAX_SIZE_GIB {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: New size {new_size} is too large."
            )));
        }
        let attached = match vol.status.as_str() {
            status::AVAILABLE => false,
            status::IN_USE if microversion >= EXTEND_IN_USE_MICROVERSION => true,
            other => {
                return Err(invalid_volume(&format!(
                    "Volume {} status must be 'available' or 'in-use' (the latter with microversion 3.42 or later) to extend, currently {other}.",
                    vol.id
                )))
            }
        };
        let hook = if attached {
            match self.online_resize.get() {
                Some(h) => Some(Arc::clone(h)),
                None => {
                    return Err(invalid_volume(
                        "this cloud cannot extend an attached volume yet; detach it first.",
                    ))
                }
            }
        } else {
            None
        };
        let driver = self.driver(&vol.backend).ok_or_else(|| {
            invalid_volume(&format!(
                "no driver for backend '{}' on this host",
                vol.backend
            ))
        })?;
        let conn = self.db.lock();
        check_quota(&conn, self, &vol.project_id, 0, 0, new_size - vol.size)?;
        let servers: Vec<String> = store::attachments_of_volume(&conn, &vol.id)?
            .into_iter()
            .map(|a| a.attachment.server_id)
            .collect();
        if !store::move_status(&conn, &vol.id, &[&vol.status], status::EXTENDING)? {
            return Err(invalid_volume("the volume changed; try again."));
        }
        let mut grown = vol.clone();
        grown.size = new_size;
        store::update_volume(&conn, &grown)?;
        drop(conn);
        let (db, before) = (self.db.clone(), vol.status.clone());
        Ok(tokio::spawn(async move {
            let id = grown.id.clone();
            let bytes = new_size as u64 * GIB;
            let work = tokio::task::spawn_blocking(move || {
                driver
                    .extend(&id, bytes, attached)
                    .map_err(|e| e.to_string())?;
                if let Some(h) = hook {
                    for s in &servers {
                        h.resize(s, &id, bytes)?;
                    }
                }
                Ok::<(), String>(())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the driver's task failed: {e}")));
            let conn = db.lock();
            let r = match &work {
                Ok(()) => store::set_status(&conn, &grown.id, &before),
                Err(_) => store::set_status(&conn, &grown.id, status::ERROR_EXTENDING),
            };
            drop(conn);
            if let Err(e) = r {
                tracing::error!(volume = %grown.id, error = %e, "cannot record the extend");
            }
            if let Err(reason) = work {
                record_failure(
                    &db,
                    &grown.project_id,
                    "VOLUME",
                    &grown.id,
                    &format!("extend failed: {reason}"),
                );
            }
        }))
    }

    /// `os-reset_status` (admin): sets the status as asked.
    pub fn reset_status(&self, vol: &Volume, new_status: &str) -> ApiResult<()> {
        if !status::RESETTABLE.contains(&new_status) {
            return Err(ApiError::bad_request(format!(
                "Invalid input received: Invalid status '{new_status}'."
            )));
        }
        store::set_status(&self.db.lock(), &vol.id, new_status)?;
        Ok(())
    }

    /// Compute's hook for growing attached volumes; set once.
    pub fn set_online_resize(&self, hook: Arc<dyn OnlineResize>) {
        if self.online_resize.set(hook).is_err() {
            tracing::warn!("the online resize hook was already set");
        }
    }
}
