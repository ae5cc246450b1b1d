//! Raw (flat) disk images.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::ioe;
use crate::{check_range, direct, BlockBackend, CacheMode, HostExtent, ImageError};

/// A raw disk image backed by a host file (or block device): byte `n` of the disk is
/// byte `n` of the file. The virtual size is the file size at open time.
///
/// `discard` punches a hole (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`) and
/// `write_zeroes` uses `FALLOC_FL_ZERO_RANGE`, falling back to punching a hole and then
/// to writing zeros, so both always read back as zeros afterwards.
///
/// With [`CacheMode::None`] the file's descriptor gets `O_DIRECT` (also one
/// received from another process); [`BlockBackend::read_at`] and
/// [`BlockBackend::write_at`] then go through a 4096-aligned bounce buffer,
/// reading and rewriting the partial blocks of unaligned requests.
pub struct RawImage {
    pub(crate) file: File,
    size: u64,
    read_only: bool,
    direct: bool,
}

impl RawImage {
    /// Opens `path` as a raw image, read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ImageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(ioe("opening raw image"))?;
        Self::from_file(file, read_only)
    }

    /// A raw image over `file`, already open (for writing too unless `read_only`).
    pub fn from_file(mut file: File, read_only: bool) -> Result<Self, ImageError> {
        // Seeking to the end also works for block devices, whose metadata length is 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(ioe("determining raw image size"))?;
        Ok(RawImage {
            file,
            size,
            read_only,
            direct: false,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `self.file`.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zero_bytes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        let chunk = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.write_data(&chunk[..n], offset + done)
                .map_err(ioe("writing zeros to raw image"))?;
            done += n as u64;
        }
        Ok(())
    }

    fn write_data(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct {
            direct::write_at(&self.file, buf, offset, self.size)
        } else {
            self.file.write_all_at(buf, offset)
        }
    }

    fn punch_or_zero(
        &mut self,
        first: libc::c_int,
        offset: u64,
        len: u64,
    ) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        for mode in [first, punch] {
            match self.fallocate(mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!(mode, error = %e, "fallocate failed, trying fallback"),
            }
        }
        self.write_zero_bytes(offset, len)
    }
}

impl BlockBackend for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn known_zero(&mut self, offset: u64, len: u64) -> Result<bool, ImageError> {
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(true);
        }
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Ok(false);
        };
        // SAFETY: lseek only reads its integer arguments; the fd is owned by `self.file`
        // (moving the file position is harmless: all I/O here is positional).
        let data = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data at or after `offset` (a hole to the end); anything else
            // (a block device, a filesystem without SEEK_DATA): unknown.
            return Ok(io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO));
        }
        Ok(data as u64 >= offset + len)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        check_range(offset, buf.len() as u64, self.size)?;
        if self.direct {
            return direct::read_at(&self.file, buf, offset).map_err(ioe("reading raw image"));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(ioe("reading raw image"))
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.size)?;
        self.write_data(buf, offset)
            .map_err(ioe("writing raw image"))
    }

    fn host_extents(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<Vec<HostExtent>>, ImageError> {
        if write && self.read_only {
            return Err(ImageError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        Ok(Some(vec![HostExtent {
            fd: self.file.as_raw_fd(),
            offset,
            len,
        }]))
    }

    fn set_cache_mode(&mut self, cache: CacheMode) -> Result<(), ImageError> {
        let on = cache == CacheMode::None;
        if on == self.direct {
            return Ok(());
        }
        if let Err(e) = direct::set_direct(&self.file, on) {
            return Err(if on && e.raw_os_error() == Some(libc::EINVAL) {
                direct::refused(&e)
            } else {
                ImageError::io("switching the cache mode of a raw image", e)
            });
        }
        if on {
            if let Err(e) = direct::probe(&self.file) {
                let _ = direct::set_direct(&self.file, false);
                return Err(direct::refused(&e));
            }
        }
        self.direct = on;
        tracing::debug!(?cache, "raw image cache mode");
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ImageError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(ioe("flushing raw image"))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.punch_or_zero(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.punch_or_zero(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn resize(&mut self, new_size: u64) -> Result<(), ImageError> {
        if new_size < self.size {
            return Err(ImageError::Unsupported(format!(
                "shrinking a disk ({} to {new_size} bytes)",
                self.size
            )));
        }
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        let meta = self.file.metadata().map_err(ioe("inspecting raw image"))?;
        if meta.is_file() {
            self.file
                .set_len(new_size)
                .map_err(ioe("growing raw image"))?;
            self.size = new_size;
            return Ok(());
        }
        // A block device: someone else (lvextend) grew it; take its size up.
        let actual = self
            .file
            .seek(SeekFrom::End(0))
            .map_err(ioe("determining raw image size"))?;
        if actual < new_size {
            return Err(ImageError::Unsupported(format!(
                "the block device has {actual} bytes, less than the {new_size} asked for"
            )));
        }
        self.size = new_size;
        Ok(())
    }
}

/// A read-only raw disk held in memory (used as a stand-in backing file when fuzzing).
pub(crate) struct MemRaw(pub(crate) Vec<u8>);

impl BlockBackend for MemRaw {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        check_range(offset, buf.len() as u64, self.size())?;
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> Result<(), ImageError> {
        Err(ImageError::ReadOnly)
    }
    fn flush(&mut self) -> Result<(), ImageError> {
        Ok(())
    }
    fn discard(&mut self, _offset: u64, _len: u64) -> Result<(), ImageError> {
        Err(ImageError::ReadOnly)
    }
    fn write_zeroes(&mut self, _offset: u64, _len: u64) -> Result<(), ImageError> {
        Err(ImageError::ReadOnly)
    }
}
