//! What a host does for the Block Storage service: make, grow, snapshot,
//! clone and delete the volumes' data, and say where a VMM opens each one.
//!
//! [`VolumeDriver`] is the interface (Cinder's volume driver, Incus's storage
//! driver): the service decides (statuses, quotas, who may do what) and calls
//! a driver to do. Drivers: `file` (qcow2 files under `STATE/volumes/`, with
//! snapshots and clones as backing chains), `lvm` (thin logical volumes in a
//! volume group the operator names) and, for the API tests, `fake`.
//!
//! Every method is blocking (files, lvm2 tools): call it through
//! `tokio::task::spawn_blocking`. Every method is idempotent where that makes
//! sense: deleting what is not there succeeds, so a retried delete after a
//! crash finishes the job.

pub mod fake;

use std::path::PathBuf;

use images::ImageFormat;

/// Why a driver could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The driver cannot do this (e.g. snapshot an attached file volume);
    /// the text says why, for the volume's error message.
    #[error("{0}")]
    Unsupported(String),
    /// Not enough space in the pool or volume group.
    #[error("not enough space: {0}")]
    NoSpace(String),
    /// The volume or snapshot does not exist on this backend.
    #[error("{0} not found on the backend")]
    NotFound(String),
    /// Anything else: a file operation, an lvm2 command, an image read.
    #[error("{what}: {reason}")]
    Failed {
        /// What was being done (`creating volume-<id>`).
        what: String,
        /// The error.
        reason: String,
    },
}

/// Where a VMM opens a volume: a file or a block device, and its format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeTarget {
    /// The file (`STATE/volumes/volume-<id>.qcow2`) or the block device
    /// (`/dev/<vg>/volume-<id>`).
    pub path: PathBuf,
    /// How the VMM reads it.
    pub format: ImageFormat,
    /// Files below `path` in its backing chain, top first (the file driver's
    /// snapshots); empty for the lvm driver. A jailed VMM cannot open files
    /// by path, so whoever hot-plugs the volume opens these too and passes
    /// them along (see `vmm-api`'s `add-disk`).
    pub backing: Vec<PathBuf>,
}

/// What a new volume's data starts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// Zeros.
    Empty,
    /// An image's data, copied (a qcow2 image is converted): the volume does
    /// not depend on the image file afterwards.
    Image {
        /// The image file in the image store.
        path: PathBuf,
        /// Its format.
        format: ImageFormat,
    },
    /// A snapshot's data.
    Snapshot {
        /// The snapshot.
        snapshot_id: String,
        /// The volume it was taken of.
        volume_id: String,
    },
    /// Another volume's current data (`--source`); the source is not attached.
    Volume {
        /// The source volume.
        volume_id: String,
    },
}

/// A backend's space, for the scheduler's and the operator's view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes the backend has in all.
    pub total_bytes: u64,
    /// Bytes not yet used by any volume's data.
    pub free_bytes: u64,
}

/// One storage backend (Cinder's volume driver). Volume and snapshot ids
/// are the service's UUIDs; the driver names its files or LVs after them.
pub trait VolumeDriver: Send + Sync {
    /// The backend's name, matched against a volume type's
    /// `volume_backend_name` (`file`, `lvm`).
    fn backend_name(&self) -> &str;

    /// Makes volume `id` of `size_bytes` (a whole number of GiB) from
    /// `source`, which may be smaller (the rest reads as zeros) but not
    /// larger. On error nothing of the volume is left behind.
    fn create(
        &self,
        id: &str,
        size_bytes: u64,
        source: &VolumeSource,
    ) -> Result<VolumeTarget, StorageError>;

    /// Removes volume `id`'s data; its snapshots stay valid (the file
    /// driver keeps a snapshot's file for as long as anything backs onto
    /// it). Succeeds when the volume is not there.
    fn delete(&self, id: &str) -> Result<(), StorageError>;

    /// Grows volume `id` to `new_size_bytes`. With `attached`, a VMM holds
    /// the volume open: the driver grows only what the VMM cannot (an LV),
    /// and the VMM grows a file it has open itself (`resize-disk`).
    fn extend(&self, id: &str, new_size_bytes: u64, attached: bool) -> Result<(), StorageError>;

    /// Takes snapshot `snapshot_id` of volume `volume_id`. With `attached`
    /// (Cinder's `--force`), the snapshot is crash-consistent, where the
    /// driver can take it at all.
    fn create_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
        attached: bool,
    ) -> Result<(), StorageError>;

    /// Removes snapshot `snapshot_id` (of `volume_id`); volumes made from it
    /// stay valid. Succeeds when it is not there.
    fn delete_snapshot(&self, volume_id: &str, snapshot_id: &str) -> Result<(), StorageError>;

    /// Where a VMM opens volume `id`.
    fn target(&self, id: &str) -> Result<VolumeTarget, StorageError>;

    /// The backend's space.
    fn capacity(&self) -> Result<Capacity, StorageError>;
}
