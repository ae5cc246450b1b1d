//! Cinder's Block Storage v3 (a subset): volumes, snapshots, volume types,
//! volume quotas and limits, served under `/volume/v3/{project_id}`. What the
//! API and the database decide; the data itself is made by a
//! [`crate::host::storage::VolumeDriver`] chosen by the volume type's
//! `volume_backend_name`.
//!
//! Compute uses this service only through [`attachments`] (Nova's side of
//! Cinder's attachment API), [`VolumeService::create_for_boot`] and
//! [`VolumeService::set_online_resize`].

pub mod actions;
pub mod api;
pub mod attachments;
pub mod model;
pub mod service;
pub mod snapshots;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use crate::config::Config;
use crate::db::Db;
use crate::host::storage::VolumeDriver;

pub use actions::OnlineResize;

/// The Block Storage service: the database and one driver per backend.
pub struct VolumeService {
    /// State database.
    pub db: Db,
    /// Daemon configuration.
    pub cfg: Arc<Config>,
    /// The backends by name (`file`, `lvm`).
    pub drivers: BTreeMap<String, Arc<dyn VolumeDriver>>,
    /// Compute's hook for growing attached volumes (unset: 400).
    online_resize: OnceLock<Arc<dyn OnlineResize>>,
}

impl VolumeService {
    /// The service over `drivers` (keyed by their backend names); makes
    /// the `__DEFAULT__` volume type if it is missing.
    pub fn new(db: Db, cfg: Arc<Config>, drivers: Vec<Arc<dyn VolumeDriver>>) -> Arc<Self> {
        let drivers = drivers
            .into_iter()
            .map(|d| (d.backend_name().to_string(), d))
            .collect();
        let svc = VolumeService {
            db,
            cfg,
            drivers,
            online_resize: OnceLock::new(),
        };
        if let Err(e) = svc.ensure_default_type() {
            tracing::error!(error = %e, "cannot create the __DEFAULT__ volume type");
        }
        Arc::new(svc)
    }

    /// Whether a project still has volumes or snapshots (asked before a
    /// project is deleted).
    pub fn project_in_use(&self, project: &str) -> rusqlite::Result<bool> {
        store::project_has_volumes(&self.db.lock(), project)
    }
}
