//! Disk images opened once for the life of the VMM and lent to the
//! virtio-blk device of each boot: the image and its whole backing chain are
//! opened before the VMM drops its privileges and its view of the host's
//! files, so a restart needs no path, and the image's caches outlive it.

use std::sync::{Arc, Mutex, MutexGuard};

use images::{BlockBackend, ImageError};

use crate::config::DiskConfig;
use crate::error::VmError;

/// One open disk image, shared by the boots of one VMM.
#[derive(Clone)]
pub struct SharedDisk(Arc<Mutex<Box<dyn BlockBackend>>>);

impl SharedDisk {
    /// Opens the image of `disk` (for a qcow2 image, with its backing chain).
    pub fn open(disk: &DiskConfig) -> Result<Self, VmError> {
        let backend =
            images::open(&disk.path, disk.format, disk.read_only).map_err(|e| VmError::Disk {
                path: disk.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self(Arc::new(Mutex::new(backend))))
    }

    /// The image of `disk` over `files` its caller opened (the image, then
    /// a qcow2 image's backing chain top-down): nothing is opened by path.
    pub fn from_files(files: Vec<std::fs::File>, disk: &DiskConfig) -> Result<Self, VmError> {
        let bad = |reason: String| VmError::Disk {
            path: disk.path.clone(),
            reason,
        };
        if let Some(top) = files.first() {
            if !disk.read_only && !writable(top) {
                return Err(bad(
                    "the image's descriptor is read-only but the disk is not".into(),
                ));
            }
        }
        let backend = images::open_files(files, disk.format, disk.read_only)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self(Arc::new(Mutex::new(backend))))
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn BlockBackend>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `file` was opened for writing.
fn writable(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL only reads the flags of a descriptor `file` owns.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_ACCMODE != libc::O_RDONLY
}

impl BlockBackend for SharedDisk {
    fn size(&self) -> u64 {
        self.lock().size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.lock().read_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        self.lock().write_at(buf, offset)
    }

    fn flush(&mut self) -> Result<(), ImageError> {
        self.lock().flush()
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.lock().discard(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.lock().write_zeroes(offset, len)
    }

    fn resize(&mut self, new_size: u64) -> Result<(), ImageError> {
        self.lock().resize(new_size)
    }

    fn known_zero(&mut self, offset: u64, len: u64) -> Result<bool, ImageError> {
        self.lock().known_zero(offset, len)
    }

    fn host_extents(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<Vec<images::HostExtent>>, ImageError> {
        self.lock().host_extents(offset, len, write)
    }

    fn set_cache_mode(&mut self, cache: images::CacheMode) -> Result<(), ImageError> {
        self.lock().set_cache_mode(cache)
    }
}
