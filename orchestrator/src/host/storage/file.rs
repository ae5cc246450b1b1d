//! The `file` volume driver: volumes as sparse qcow2 files in one directory,
//! snapshots and clones as qcow2 backing chains.
//!
//! # Files
//!
//! - `volume-<id>.qcow2`: a volume, always the top of its chain (nothing ever
//!   backs onto a volume's file, so a volume's file can be replaced or removed
//!   without breaking anything else).
//! - `snapshot-<id>.qcow2`: a snapshot, read-only from the moment it exists.
//!   `snapshot-clone-<volume id>.qcow2` is the internal snapshot taken to
//!   clone a volume (`--source`).
//! - `snapshot-<id>.deleted`: a tombstone, "the service deleted this snapshot".
//! - `.tmp-*`: files being made; removed by [`FileDriver::new`].
//!
//! # Snapshots
//!
//! Snapshot S of volume V: V's file gets a second name, `snapshot-S.qcow2`
//! (a hard link), a fresh overlay backed by that name is made under a
//! temporary name and renamed over `volume-V.qcow2`. V's old data is now only
//! reachable as the snapshot, which nothing writes again; V writes into its new
//! overlay. Each step is atomic, so a crash leaves either the old volume (and
//! maybe a second name of it, which [`FileDriver::new`] removes) or the
//! finished snapshot. A volume from S is an overlay on S's file (O(1)); a
//! clone of V is an internal, already tombstoned snapshot of V and an overlay
//! on it for the new volume (O(1) too). A volume from an image is a copy
//! ([`images::convert`]) into a new qcow2: it never depends on the image file.
//!
//! # How a snapshot stays valid when its volume is deleted
//!
//! Deleting volume V removes only `volume-V.qcow2`, its own top file. Its
//! snapshots are separate files that V's file backed onto, never the other
//! way round, so they keep all their data. Deleting snapshot S does not remove
//! its file while anything (a volume made from it, V's newer overlay, a later
//! snapshot) still backs onto it: it writes the tombstone instead. After every
//! delete a GC scans the directory's chains (each file's backing name, read
//! from its header only) and removes the tombstoned snapshot files nothing
//! backs onto, repeating until nothing changes, since removing one may free
//! the one below it.
//!
//! An attached volume cannot be snapshotted here: the VMM holds its file open
//! and would go on writing into what became the snapshot. That needs the VMM
//! to switch to a new overlay live, which it cannot yet do, so the driver
//! answers [`StorageError::Unsupported`].

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use images::{ImageError, ImageFormat};

use super::{Capacity, StorageError, VolumeDriver, VolumeSource, VolumeTarget};

/// Longest volume or snapshot id accepted (UUIDs are 36).
const MAX_ID_LEN: usize = 64;

/// The `file` volume driver over one directory (see the module docs).
pub struct FileDriver {
    dir: PathBuf,
    /// Serialises the driver's own operations (renames, GC scans).
    lock: Mutex<()>,
}

impl FileDriver {
    /// Opens (creating it if needed) the driver's directory, removes the
    /// temporary files and half-made snapshots a crash may have left, and runs
    /// the GC once.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_failed("creating the volume directory"))?;
        let dir = dir
            .canonicalize()
            .map_err(io_failed("resolving the volume directory"))?;
        let driver = FileDriver {
            dir,
            lock: Mutex::new(()),
        };
        driver.recover()?;
        driver.gc()?;
        Ok(driver)
    }

    /// The directory the volumes live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn volume_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("volume-{id}.qcow2"))
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("snapshot-{id}.qcow2"))
    }

    fn tombstone_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("snapshot-{id}.deleted"))
    }

    fn tmp_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".tmp-{name}"))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic in another call poisons nothing the files depend on.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes `.tmp-*` files, and snapshot names that are still a second
    /// name of a volume's file (a crash between the link and the rename).
    fn recover(&self) -> Result<(), StorageError> {
        let mut volume_inodes = HashSet::new();
        let entries = self.list()?;
        for (name, path) in &entries {
            if name.starts_with(".tmp-") {
                tracing::info!(path = %path.display(), "removing a leftover temporary volume file");
                remove_if_exists(path)?;
            } else if name.starts_with("volume-") {
                if let Ok(m) = fs::metadata(path) {
                    volume_inodes.insert((m.dev(), m.ino()));
                }
            }
        }
        for (name, path) in &entries {
            if name.starts_with("snapshot-") && name.ends_with(".qcow2") {
                if let Ok(m) = fs::metadata(path) {
                    if volume_inodes.contains(&(m.dev(), m.ino())) {
                        tracing::info!(path = %path.display(), "removing a half-made snapshot");
                        remove_if_exists(path)?;
                    }
                }
            }
        }
        sync_dir(&self.dir)
    }

    /// The directory's entries (name, path).
    fn list(&self) -> Result<Vec<(String, PathBuf)>, StorageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_failed("listing the volume directory"))? {
            let entry = entry.map_err(io_failed("listing the volume directory"))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push((name.to_string(), entry.path()));
            }
        }
        Ok(out)
    }

    /// Removes tombstoned snapshot files nothing backs onto, until none is left.
    fn gc(&self) -> Result<(), StorageError> {
        loop {
            let entries = self.list()?;
            let mut referenced = HashSet::new();
            for (name, path) in &entries {
                if !name.ends_with(".qcow2") {
                    continue;
                }
                match images::qcow2_backing_file(path) {
                    Ok(Some(b)) => {
                        referenced.insert(b.canonicalize().unwrap_or(b));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Unreadable: keep everything it might reference.
                        tracing::warn!(path = %path.display(), error = %e, "GC cannot read a volume file's header; not collecting");
                        return Ok(());
                    }
                }
            }
            let mut removed = false;
            for (name, path) in &entries {
                let Some(id) = name
                    .strip_prefix("snapshot-")
                    .and_then(|n| n.strip_suffix(".deleted"))
                else {
                    continue;
                };
                let file = self.snapshot_path(id);
                if referenced.contains(&file) {
                    continue;
                }
                tracing::info!(
                    snapshot = id,
                    "removing a deleted snapshot's file nothing uses"
                );
                remove_if_exists(&file)?;
                remove_if_exists(path)?;
                removed = true;
            }
            sync_dir(&self.dir)?;
            if !removed {
                return Ok(());
            }
        }
    }

    /// Makes `snap` the current data of volume `vol_path` and gives the volume
    /// a fresh overlay on it (see the module docs).
    fn snapshot_files(&self, vol_path: &Path, snap: &Path, what: &str) -> Result<(), StorageError> {
        if snap.exists() {
            return Err(failed(what, "the snapshot file already exists"));
        }
        let size = disk_size(vol_path, what)?;
        fs::hard_link(vol_path, snap).map_err(io_failed_at(what))?;
        sync_dir(&self.dir)?;
        let name = vol_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.tmp_path(&name);
        let made = images::create_qcow2_overlay(&tmp, snap, ImageFormat::Qcow2)
            .and_then(|()| images::resize(&tmp, ImageFormat::Qcow2, size))
            .map_err(image_failed(what))
            .and_then(|()| fs::rename(&tmp, vol_path).map_err(io_failed_at(what)));
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(snap);
            let _ = sync_dir(&self.dir);
            return Err(e);
        }
        sync_dir(&self.dir)
    }

    /// Makes the new volume's file at `tmp` from `source`.
    fn build(
        &self,
        id: &str,
        tmp: &Path,
        size_bytes: u64,
        source: &VolumeSource,
        what: &str,
    ) -> Result<(), StorageError> {
        match source {
            VolumeSource::Empty => {
                images::create_qcow2(tmp, size_bytes).map_err(image_failed(what))
            }
            VolumeSource::Image { path, format } => {
                let src_size = images::open(path, *format, true)
                    .map_err(image_failed(what))?
                    .size();
                check_fits(src_size, size_bytes, "the image")?;
                images::create_qcow2(tmp, size_bytes).map_err(image_failed(what))?;
                let mut dst =
                    images::open(tmp, ImageFormat::Qcow2, false).map_err(image_failed(what))?;
                let started = std::time::Instant::now();
                let stats =
                    images::convert(path, *format, dst.as_mut()).map_err(image_failed(what))?;
                tracing::info!(
                    volume = id,
                    written = stats.written,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "copied an image into a volume"
                );
                Ok(())
            }
            VolumeSource::Snapshot { snapshot_id, .. } => {
                check_id(snapshot_id)?;
                let snap = self.snapshot_path(snapshot_id);
                if !snap.exists() || self.tombstone_path(snapshot_id).exists() {
                    return Err(StorageError::NotFound(format!("snapshot-{snapshot_id}")));
                }
                self.overlay(&snap, tmp, size_bytes, what)
            }
            VolumeSource::Volume { volume_id } => {
                check_id(volume_id)?;
                let src = self.volume_path(volume_id);
                if !src.exists() {
                    return Err(StorageError::NotFound(format!("volume-{volume_id}")));
                }
                check_fits(disk_size(&src, what)?, size_bytes, "the source volume")?;
                let internal = format!("clone-{id}");
                let tomb = self.tombstone_path(&internal);
                fs::write(&tomb, b"").map_err(io_failed_at(what))?;
                let snap = self.snapshot_path(&internal);
                if let Err(e) = self.snapshot_files(&src, &snap, what) {
                    let _ = fs::remove_file(&tomb);
                    return Err(e);
                }
                self.overlay(&snap, tmp, size_bytes, what)
            }
        }
    }

    /// A new overlay at `tmp` on `base`, grown to `size_bytes`.
    fn overlay(
        &self,
        base: &Path,
        tmp: &Path,
        size_bytes: u64,
        what: &str,
    ) -> Result<(), StorageError> {
        check_fits(disk_size(base, what)?, size_bytes, "the snapshot")?;
        images::create_qcow2_overlay(tmp, base, ImageFormat::Qcow2).map_err(image_failed(what))?;
        images::resize(tmp, ImageFormat::Qcow2, size_bytes).map_err(image_failed(what))
    }

    /// The files below `path` in its chain, top first.
    fn chain(&self, path: &Path) -> Result<Vec<PathBuf>, StorageError> {
        let mut out = Vec::new();
        let mut cur = path.to_path_buf();
        while let Some(next) =
            images::qcow2_backing_file(&cur).map_err(image_failed("reading a backing chain"))?
        {
            if out.len() >= images::MAX_BACKING_DEPTH {
                return Err(failed(
                    "reading a backing chain",
                    format!("deeper than {} files", images::MAX_BACKING_DEPTH),
                ));
            }
            out.push(next.clone());
            cur = next;
        }
        Ok(out)
    }
}

impl VolumeDriver for FileDriver {
    fn backend_name(&self) -> &str {
        "file"
    }

    fn create(
        &self,
        id: &str,
        size_bytes: u64,
        source: &VolumeSource,
    ) -> Result<VolumeTarget, StorageError> {
        check_id(id)?;
        if size_bytes == 0 {
            return Err(failed("creating a volume", "size must not be zero"));
        }
        let what = format!("creating volume-{id}");
        let _g = self.guard();
        let path = self.volume_path(id);
        if path.exists() {
            return Err(failed(&what, "the volume already exists"));
        }
        let tmp = self.tmp_path(&format!("volume-{id}.qcow2"));
        let _ = fs::remove_file(&tmp);
        let made = self
            .build(id, &tmp, size_bytes, source, &what)
            .and_then(|()| fs::rename(&tmp, &path).map_err(io_failed_at(&what)));
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            let _ = sync_dir(&self.dir);
            return Err(e);
        }
        sync_dir(&self.dir)?;
        let backing = self.chain(&path)?;
        Ok(VolumeTarget {
            path,
            format: ImageFormat::Qcow2,
            backing,
        })
    }

    fn delete(&self, id: &str) -> Result<(), StorageError> {
        check_id(id)?;
        let _g = self.guard();
        remove_if_exists(&self.volume_path(id))?;
        sync_dir(&self.dir)?;
        self.gc()
    }

    fn extend(&self, id: &str, new_size_bytes: u64, attached: bool) -> Result<(), StorageError> {
        check_id(id)?;
        let _g = self.guard();
        let path = self.volume_path(id);
        if !path.exists() {
            return Err(StorageError::NotFound(format!("volume-{id}")));
        }
        if attached {
            // The VMM grows the file it has open (`resize-disk`).
            return Ok(());
        }
        images::resize(&path, ImageFormat::Qcow2, new_size_bytes)
            .map_err(image_failed(&format!("extending volume-{id}")))
    }

    fn create_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
        attached: bool,
    ) -> Result<(), StorageError> {
        check_id(volume_id)?;
        check_id(snapshot_id)?;
        if attached {
            return Err(StorageError::Unsupported(
                "the file driver cannot snapshot an attached volume (the VMM would keep \
                 writing into the snapshot); detach it first"
                    .into(),
            ));
        }
        let _g = self.guard();
        let vol = self.volume_path(volume_id);
        if !vol.exists() {
            return Err(StorageError::NotFound(format!("volume-{volume_id}")));
        }
        self.snapshot_files(
            &vol,
            &self.snapshot_path(snapshot_id),
            &format!("creating snapshot-{snapshot_id}"),
        )
    }

    fn delete_snapshot(&self, volume_id: &str, snapshot_id: &str) -> Result<(), StorageError> {
        check_id(volume_id)?;
        check_id(snapshot_id)?;
        let _g = self.guard();
        if !self.snapshot_path(snapshot_id).exists() {
            return Ok(());
        }
        let tomb = self.tombstone_path(snapshot_id);
        fs::write(&tomb, b"")
            .and_then(|()| fs::File::open(&tomb)?.sync_all())
            .map_err(io_failed_at(&format!("deleting snapshot-{snapshot_id}")))?;
        sync_dir(&self.dir)?;
        self.gc()
    }

    fn target(&self, id: &str) -> Result<VolumeTarget, StorageError> {
        check_id(id)?;
        let path = self.volume_path(id);
        if !path.exists() {
            return Err(StorageError::NotFound(format!("volume-{id}")));
        }
        let backing = self.chain(&path)?;
        Ok(VolumeTarget {
            path,
            format: ImageFormat::Qcow2,
            backing,
        })
    }

    fn capacity(&self) -> Result<Capacity, StorageError> {
        statvfs(&self.dir)
    }
}

/// Ids become file names: only letters, digits, `-` and `_`.
pub(super) fn check_id(id: &str) -> Result<(), StorageError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(failed(
            "checking an id",
            format!("{id:?} is not a valid volume or snapshot id"),
        ))
    }
}

fn check_fits(src: u64, size: u64, what: &str) -> Result<(), StorageError> {
    if src > size {
        return Err(failed(
            "creating a volume",
            format!("{what} is {src} bytes, larger than the volume's {size}"),
        ));
    }
    Ok(())
}

fn disk_size(path: &Path, what: &str) -> Result<u64, StorageError> {
    Ok(images::open(path, ImageFormat::Qcow2, true)
        .map_err(image_failed(what))?
        .size())
}

pub(super) fn failed(what: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Failed {
        what: what.to_string(),
        reason: reason.into(),
    }
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

fn io_failed(what: &'static str) -> impl FnOnce(io::Error) -> StorageError {
    move |e| io_error(what, e)
}

fn io_failed_at(what: &str) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |e| io_error(what, e)
}

fn io_error(what: &str, e: io::Error) -> StorageError {
    if is_enospc(&e) {
        StorageError::NoSpace(format!("{what}: {e}"))
    } else {
        failed(what, e.to_string())
    }
}

pub(super) fn image_failed(what: &str) -> impl FnOnce(ImageError) -> StorageError + '_ {
    move |e| match &e {
        ImageError::Io { source, .. } if is_enospc(source) => {
            StorageError::NoSpace(format!("{what}: {e}"))
        }
        _ => failed(what, e.to_string()),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&format!("removing {}", path.display()), e)),
    }
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_failed("syncing the volume directory"))
}

fn statvfs(dir: &Path) -> Result<Capacity, StorageError> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| failed("reading capacity", "path contains a NUL byte"))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs
    // that outlives the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io_error("reading capacity", io::Error::last_os_error()));
    }
    let frsize = st.f_frsize;
    Ok(Capacity {
        total_bytes: st.f_blocks.saturating_mul(frsize),
        free_bytes: st.f_bavail.saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests;
