//! Cinder's Block Storage v3 (a subset): volumes, snapshots, volume types,
//! volume quotas and limits, served under `/volume/v3/{project_id}`. What the
//! API and the database decide; the data itself is made by a
//! [`crate::host::storage::VolumeDriver`] chosen by the volume type's
//! `volume_backend_name`.
//!
//! Compute uses this service only through [`attachments`] (Nova's side of
//! Cinder's attachment API) and [`VolumeService::create_for_boot`].

pub mod attachments;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::db::Db;
use crate::host::storage::VolumeDriver;

/// The Block Storage service: the database and one driver per backend.
pub struct VolumeService {
    /// State database.
    pub db: Db,
    /// Daemon configuration.
    pub cfg: Arc<Config>,
    /// The backends by name (`file`, `lvm`).
    pub drivers: BTreeMap<String, Arc<dyn VolumeDriver>>,
}

impl VolumeService {
    /// The service over `drivers` (keyed by their backend names).
    pub fn new(db: Db, cfg: Arc<Config>, drivers: Vec<Arc<dyn VolumeDriver>>) -> Arc<Self> {
        let drivers = drivers
            .into_iter()
            .map(|d| (d.backend_name().to_string(), d))
            .collect();
        Arc::new(VolumeService { db, cfg, drivers })
    }
}
