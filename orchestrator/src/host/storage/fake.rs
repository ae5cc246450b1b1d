//! An in-memory [`VolumeDriver`] for the API tests: volumes and snapshots
//! are entries in a map, nothing touches a disk, and a test can make the
//! next operations fail ([`FakeVolumeDriver::fail_next_create`]) or hold
//! creates back until it lets them go ([`FakeVolumeDriver::hold_creates`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

use images::ImageFormat;

use super::{Capacity, StorageError, VolumeDriver, VolumeSource, VolumeTarget};

/// What the fake holds.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Volumes by id: size in bytes and the source they were made from.
    pub volumes: BTreeMap<String, (u64, VolumeSource)>,
    /// Snapshots by id: the volume they were taken of.
    pub snapshots: BTreeMap<String, String>,
    /// Extends, in order: (volume, new size, attached).
    pub extends: Vec<(String, u64, bool)>,
    fail_create: Option<String>,
    fail_delete: Option<String>,
    hold: bool,
}

/// The in-memory driver.
pub struct FakeVolumeDriver {
    name: String,
    state: Mutex<FakeState>,
    released: Condvar,
}

impl FakeVolumeDriver {
    /// A fake backend called `name` (`file` to stand in for the default).
    pub fn new(name: &str) -> Self {
        FakeVolumeDriver {
            name: name.to_string(),
            state: Mutex::new(FakeState::default()),
            released: Condvar::new(),
        }
    }

    /// What the fake holds now.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `create` fails with `reason`.
    pub fn fail_next_create(&self, reason: &str) {
        self.state().fail_create = Some(reason.to_string());
    }

    /// The next `delete` fails with `reason`.
    pub fn fail_next_delete(&self, reason: &str) {
        self.state().fail_delete = Some(reason.to_string());
    }

    /// Creates wait (in their blocking task) until [`Self::release_creates`].
    pub fn hold_creates(&self) {
        self.state().hold = true;
    }

    /// Lets held creates go on.
    pub fn release_creates(&self) {
        self.state().hold = false;
        self.released.notify_all();
    }

    fn target_of(&self, id: &str) -> VolumeTarget {
        VolumeTarget {
            path: PathBuf::from(format!("/fake/{}/volume-{id}", self.name)),
            format: ImageFormat::Raw,
            backing: Vec::new(),
        }
    }
}

impl VolumeDriver for FakeVolumeDriver {
    fn backend_name(&self) -> &str {
        &self.name
    }

    fn create(
        &self,
        id: &str,
        size_bytes: u64,
        source: &VolumeSource,
    ) -> Result<VolumeTarget, StorageError> {
        let mut st = self.state();
        while st.hold {
            st = self.released.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(reason) = st.fail_create.take() {
            return Err(StorageError::Failed {
                what: format!("creating volume-{id}"),
                reason,
            });
        }
        match source {
            VolumeSource::Snapshot { snapshot_id, .. }
                if !st.snapshots.contains_key(snapshot_id) =>
            {
                return Err(StorageError::NotFound(format!("snapshot-{snapshot_id}")))
            }
            VolumeSource::Volume { volume_id } if !st.volumes.contains_key(volume_id) => {
                return Err(StorageError::NotFound(format!("volume-{volume_id}")))
            }
            _ => {}
        }
        st.volumes
            .insert(id.to_string(), (size_bytes, source.clone()));
        Ok(self.target_of(id))
    }

    fn delete(&self, id: &str) -> Result<(), StorageError> {
        let mut st = self.state();
        if let Some(reason) = st.fail_delete.take() {
            return Err(StorageError::Failed {
                what: format!("deleting volume-{id}"),
                reason,
            });
        }
        st.volumes.remove(id);
        Ok(())
    }

    fn extend(&self, id: &str, new_size_bytes: u64, attached: bool) -> Result<(), StorageError> {
        let mut st = self.state();
        match st.volumes.get_mut(id) {
            Some(v) => v.0 = new_size_bytes,
            None => return Err(StorageError::NotFound(format!("volume-{id}"))),
        }
        st.extends.push((id.to_string(), new_size_bytes, attached));
        Ok(())
    }

    fn create_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
        _attached: bool,
    ) -> Result<(), StorageError> {
        let mut st = self.state();
        if !st.volumes.contains_key(volume_id) {
            return Err(StorageError::NotFound(format!("volume-{volume_id}")));
        }
        st.snapshots
            .insert(snapshot_id.to_string(), volume_id.to_string());
        Ok(())
    }

    fn delete_snapshot(&self, _volume_id: &str, snapshot_id: &str) -> Result<(), StorageError> {
        self.state().snapshots.remove(snapshot_id);
        Ok(())
    }

    fn target(&self, id: &str) -> Result<VolumeTarget, StorageError> {
        if self.state().volumes.contains_key(id) {
            Ok(self.target_of(id))
        } else {
            Err(StorageError::NotFound(format!("volume-{id}")))
        }
    }

    fn capacity(&self) -> Result<Capacity, StorageError> {
        Ok(Capacity {
            total_bytes: 1 << 40,
            free_bytes: 1 << 40,
        })
    }
}
