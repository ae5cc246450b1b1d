//! A test disk whose bytes live in one or two host files, striped in chunks,
//! and that hands out [`HostExtent`]s for them: the asynchronous path of
//! the device runs on it without the images crate's raw/qcow2 support.
//! For tests and the fuzzing harness only.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use images::{BlockBackend, CacheMode, HostExtent, ImageError};

/// A disk striped over `files` in `chunk`-byte pieces: chunk `k` is at
/// `(k / files) * chunk` in file `k % files`.
#[derive(Debug)]
pub struct ExtentDisk {
    files: Vec<File>,
    size: u64,
    chunk: u64,
    /// Hand out host extents (false: the device takes the synchronous path).
    pub extents: bool,
    /// Ranges ending past this offset have no host extents (like qcow2
    /// clusters still to allocate).
    pub sync_above: u64,
    /// Refuse `cache=none` (like a file system without `O_DIRECT`).
    pub refuse_direct: bool,
}

fn io_err(context: &str, source: io::Error) -> ImageError {
    ImageError::Io {
        context: context.into(),
        source,
    }
}

impl ExtentDisk {
    /// A zero-filled disk of `size` bytes over `files` (1 or more) memfds.
    pub fn new(size: u64, chunk: u64, files: usize) -> io::Result<Self> {
        let mut v = Vec::new();
        for _ in 0..files.max(1) {
            // SAFETY: a plain system call with a static NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"nubo-test-disk".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just created and is owned by nobody else.
            let f = unsafe { File::from_raw_fd(fd) };
            f.set_len(size.div_ceil(chunk.max(1)) * chunk.max(1))?;
            v.push(f);
        }
        Ok(Self {
            files: v,
            size,
            chunk: chunk.max(1),
            extents: true,
            sync_above: u64::MAX,
            refuse_direct: false,
        })
    }

    /// Another handle on the same files (to look at the disk from a test).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            files: self
                .files
                .iter()
                .map(File::try_clone)
                .collect::<io::Result<_>>()?,
            size: self.size,
            chunk: self.chunk,
            extents: self.extents,
            sync_above: self.sync_above,
            refuse_direct: self.refuse_direct,
        })
    }

    /// The pieces of `[offset, offset + len)`: (file index, file offset, len).
    fn map(&self, offset: u64, len: u64) -> Result<Vec<(usize, u64, u64)>, ImageError> {
        let end =
            offset
                .checked_add(len)
                .filter(|&e| e <= self.size)
                .ok_or(ImageError::OutOfRange {
                    offset,
                    len,
                    size: self.size,
                })?;
        let n = self.files.len() as u64;
        let mut out: Vec<(usize, u64, u64)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let k = pos / self.chunk;
            let within = pos % self.chunk;
            let take = (self.chunk - within).min(end - pos);
            let file = usize::try_from(k % n).unwrap_or(0);
            let foff = (k / n) * self.chunk + within;
            match out.last_mut() {
                Some(l) if l.0 == file && l.1 + l.2 == foff => l.2 += take,
                _ => out.push((file, foff, take)),
            }
            pos += take;
        }
        Ok(out)
    }

    fn file(&self, i: usize) -> Result<&File, ImageError> {
        self.files
            .get(i)
            .ok_or_else(|| ImageError::InvalidArgument("no such file".into()))
    }
}

impl BlockBackend for ExtentDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let mut pos = 0usize;
        for (f, off, len) in self.map(offset, buf.len() as u64)? {
            let n = usize::try_from(len).unwrap_or(0);
            let dst = buf
                .get_mut(pos..pos + n)
                .ok_or_else(|| ImageError::InvalidArgument("buffer too short".into()))?;
            self.file(f)?
                .read_exact_at(dst, off)
                .map_err(|e| io_err("reading", e))?;
            pos += n;
        }
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        let mut pos = 0usize;
        for (f, off, len) in self.map(offset, buf.len() as u64)? {
            let n = usize::try_from(len).unwrap_or(0);
            let src = buf
                .get(pos..pos + n)
                .ok_or_else(|| ImageError::InvalidArgument("buffer too short".into()))?;
            self.file(f)?
                .write_all_at(src, off)
                .map_err(|e| io_err("writing", e))?;
            pos += n;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), ImageError> {
        for f in &self.files {
            f.sync_data().map_err(|e| io_err("syncing", e))?;
        }
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        for (f, off, len) in self.map(offset, len)? {
            let zeroes = vec![0u8; usize::try_from(len).unwrap_or(0)];
            self.file(f)?
                .write_all_at(&zeroes, off)
                .map_err(|e| io_err("zeroing", e))?;
        }
        Ok(())
    }
    fn host_extents(
        &mut self,
        offset: u64,
        len: u64,
        _write: bool,
    ) -> Result<Option<Vec<HostExtent>>, ImageError> {
        if !self.extents || offset.saturating_add(len) > self.sync_above {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (f, off, len) in self.map(offset, len)? {
            out.push(HostExtent {
                fd: self.file(f)?.as_raw_fd(),
                offset: off,
                len,
            });
        }
        Ok(Some(out))
    }
    fn set_cache_mode(&mut self, cache: CacheMode) -> Result<(), ImageError> {
        if cache == CacheMode::None && self.refuse_direct {
            return Err(ImageError::Unsupported(
                "O_DIRECT on this file system".into(),
            ));
        }
        Ok(())
    }
}
