//! Snapshots: taken of an available volume (or an in-use one with
//! `force`), counted in the project's quota, made and removed by the
//! volume's driver in the background.

use std::collections::BTreeMap;

use super::model::{status, Snapshot, Volume};
use super::service::{check_quota, invalid_volume, record_failure};
use super::store;
use super::VolumeService;
use crate::http::error::{ApiError, ApiResult};

impl VolumeService {
    /// Takes a snapshot of `vol` (`creating`, then `available` or `error`).
    pub fn create_snapshot(
        &self,
        vol: &Volume,
        user_id: &str,
        name: Option<String>,
        description: Option<String>,
        metadata: BTreeMap<String, String>,
        force: bool,
    ) -> ApiResult<(Snapshot, tokio::task::JoinHandle<()>)> {
        let attached = match vol.status.as_str() {
            status::AVAILABLE => false,
            status::IN_USE if force => true,
            other => {
                return Err(invalid_volume(&format!(
                    "Volume {} status must be available, but current status is: {other}.",
                    vol.id
                )))
            }
        };
        let driver = self.driver(&vol.backend).ok_or_else(|| {
            invalid_volume(&format!(
                "no driver for backend '{}' on this host",
                vol.backend
            ))
        })?;
        let conn = self.db.lock();
        check_quota(&conn, self, &vol.project_id, 0, 1, vol.size)?;
        let now = crate::util::now_iso();
        let snap = Snapshot {
            id: crate::util::new_id(),
            project_id: vol.project_id.clone(),
            user_id: user_id.to_string(),
            volume_id: vol.id.clone(),
            name,
            description,
            size: vol.size,
            status: "creating".into(),
            metadata,
            created_at: now.clone(),
            updated_at: now,
        };
        store::insert_snapshot(&conn, &snap)?;
        drop(conn);
        let (db, s) = (self.db.clone(), snap.clone());
        let task = tokio::spawn(async move {
            let (vid, sid) = (s.volume_id.clone(), s.id.clone());
            let r = tokio::task::spawn_blocking(move || {
                driver
                    .create_snapshot(&vid, &sid, attached)
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the driver's task failed: {e}")));
            let to = if r.is_ok() { "available" } else { "error" };
            if let Err(e) = store::set_snapshot_status(&db.lock(), &s.id, to) {
                tracing::error!(snapshot = %s.id, error = %e, "cannot record the snapshot's status");
            }
            if let Err(reason) = r {
                record_failure(
                    &db,
                    &s.project_id,
                    "SNAPSHOT",
                    &s.id,
                    &format!("snapshot failed: {reason}"),
                );
            }
        });
        Ok((snap, task))
    }

    /// Deletes a snapshot (`deleting`, then gone, or `error_deleting`).
    pub fn delete_snapshot(&self, snap: &Snapshot) -> ApiResult<tokio::task::JoinHandle<()>> {
        if !["available", "error", "error_deleting"].contains(&snap.status.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Invalid snapshot: Volume Snapshot status must be available or error, but current status is: {}.",
                snap.status
            )));
        }
        let conn = self.db.lock();
        let backend = store::find_volume(&conn, &snap.volume_id)?.map(|v| v.backend);
        store::set_snapshot_status(&conn, &snap.id, "deleting")?;
        drop(conn);
        let driver = backend.and_then(|b| self.driver(&b));
        let (db, s) = (self.db.clone(), snap.clone());
        Ok(tokio::spawn(async move {
            let r = match driver {
                None if s.status == "error" => Ok(()),
                None => Err("the snapshot's volume or backend is gone".to_string()),
                Some(d) => {
                    let (vid, sid) = (s.volume_id.clone(), s.id.clone());
                    tokio::task::spawn_blocking(move || {
                        d.delete_snapshot(&vid, &sid).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("the driver's task failed: {e}")))
                }
            };
            let conn = db.lock();
            let w = match &r {
                Ok(()) => store::delete_snapshot(&conn, &s.id),
                Err(_) => store::set_snapshot_status(&conn, &s.id, "error_deleting"),
            };
            drop(conn);
            if let Err(e) = w {
                tracing::error!(snapshot = %s.id, error = %e, "cannot record the snapshot's delete");
            }
            if let Err(reason) = r {
                record_failure(
                    &db,
                    &s.project_id,
                    "SNAPSHOT",
                    &s.id,
                    &format!("delete failed: {reason}"),
                );
            }
        }))
    }
}
