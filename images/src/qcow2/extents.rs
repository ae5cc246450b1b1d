//! Where a qcow2 image's guest bytes live in host files (for the VMM's
//! asynchronous engine) and `cache=none` for qcow2.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;

use super::{Mapping, Qcow2Image, OFLAG_COPIED};
use crate::error::ioe;
use crate::{check_range, direct, CacheMode, HostExtent, ImageError};

/// One piece of a guest range: in this image's own file at `host`, or (for
/// reads, `host == None`) in the backing file at the same guest offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Guest byte offset of the piece.
    pub(crate) guest: u64,
    /// Length in bytes.
    pub(crate) len: u64,
    /// Byte offset in this image's file, or `None` for the backing file.
    pub(crate) host: Option<u64>,
}

impl Qcow2Image {
    /// The pieces of `[offset, offset + len)` when every one is plain data
    /// the access can touch without a metadata update (see
    /// [`crate::BlockBackend::host_extents`]); `None` otherwise. Adjacent
    /// pieces of the same file are merged. Changes no metadata (the caches
    /// may load tables and write back dirty ones they evict).
    pub(crate) fn host_pieces(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<Vec<Piece>>, ImageError> {
        if write && self.read_only {
            return Err(ImageError::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        // A data cluster past the end of the file reads as zeros through
        // read_at; a direct read there would come back short.
        let phys = if write {
            u64::MAX
        } else {
            self.file.len().map_err(ioe("reading image length"))?
        };
        let cs = self.cluster_size;
        let mut pieces: Vec<Piece> = Vec::new();
        let mut ok = true;
        self.for_each_piece(offset, len, |img, gc, in_off, _start, n| {
            if !ok {
                return Ok(());
            }
            let guest = gc * cs + in_off as u64;
            let n = n as u64;
            let (mapping, entry) = img.mapping(gc)?;
            let host = match mapping {
                Mapping::Data(host) => {
                    if write && entry & OFLAG_COPIED == 0 && img.refcount(host / cs)? != 1 {
                        ok = false; // shared: a write needs copy-on-write
                        return Ok(());
                    }
                    let at = host + in_off as u64;
                    if at.checked_add(n).map_or(true, |end| end > phys) {
                        ok = false;
                        return Ok(());
                    }
                    Some(at)
                }
                Mapping::Unallocated if !write => {
                    let bsize = img.backing.as_ref().map_or(0, |b| b.size());
                    if guest + n > bsize {
                        ok = false; // no backing data there: zeros
                        return Ok(());
                    }
                    None
                }
                _ => {
                    ok = false;
                    return Ok(());
                }
            };
            if let Some(last) = pieces.last_mut() {
                let adjacent = match (last.host, host) {
                    (Some(a), Some(b)) => a + last.len == b,
                    (None, None) => true,
                    _ => false,
                };
                if adjacent {
                    last.len += n;
                    return Ok(());
                }
            }
            pieces.push(Piece {
                guest,
                len: n,
                host,
            });
            Ok(())
        })?;
        Ok(ok.then_some(pieces))
    }

    /// [`crate::BlockBackend::host_extents`] of a qcow2 image.
    pub(crate) fn extents(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<Vec<HostExtent>>, ImageError> {
        let fd = match (&self.direct, self.file.file()) {
            (Some(f), _) => f.as_raw_fd(),
            (None, Some(f)) => f.as_raw_fd(),
            (None, None) => return Ok(None),
        };
        let Some(pieces) = self.host_pieces(offset, len, write)? else {
            return Ok(None);
        };
        let mut out: Vec<HostExtent> = Vec::with_capacity(pieces.len());
        for p in pieces {
            let more = match p.host {
                Some(host) => vec![HostExtent {
                    fd,
                    offset: host,
                    len: p.len,
                }],
                None => {
                    let Some(b) = self.backing.as_mut().filter(|_| self.backing_extents) else {
                        return Ok(None);
                    };
                    match b.host_extents(p.guest, p.len, false)? {
                        Some(v) => v,
                        None => return Ok(None),
                    }
                }
            };
            for e in more {
                match out.last_mut() {
                    Some(l) if l.fd == e.fd && l.offset + l.len == e.offset => l.len += e.len,
                    _ => out.push(e),
                }
            }
        }
        Ok(Some(out))
    }

    /// [`crate::BlockBackend::set_cache_mode`] of a qcow2 image: for
    /// `cache=none` a second descriptor of the image, opened by path with
    /// `O_DIRECT`, is what [`Qcow2Image::extents`] hands out; metadata and
    /// the `read_at`/`write_at` path stay on the buffered descriptor (the
    /// kernel keeps the two coherent: direct I/O writes back and
    /// invalidates cached pages of its range). Backing files switch too;
    /// one that cannot is read only through `read_at`.
    pub(crate) fn cache_mode(&mut self, cache: CacheMode) -> Result<(), ImageError> {
        match cache {
            CacheMode::Writeback => {
                self.direct = None;
                if let Some(b) = self.backing.as_mut() {
                    b.set_cache_mode(CacheMode::Writeback)?;
                }
                self.backing_extents = true;
                Ok(())
            }
            CacheMode::None => {
                if self.direct.is_some() {
                    return Ok(());
                }
                let (Some(path), Some(file)) = (self.path.as_ref(), self.file.file()) else {
                    return Err(ImageError::Unsupported(
                        "cache=none on a qcow2 image opened from descriptors (a jailed VMM): \
                         it needs a second, O_DIRECT descriptor of the image, which only an \
                         image opened by path can get; use cache=writeback or a raw image"
                            .into(),
                    ));
                };
                let f = OpenOptions::new()
                    .read(true)
                    .write(!self.read_only)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .map_err(|e| {
                        if e.raw_os_error() == Some(libc::EINVAL) {
                            direct::refused(&e)
                        } else {
                            ImageError::io("opening the image with O_DIRECT", e)
                        }
                    })?;
                let a = f.metadata().map_err(ioe("reading image metadata"))?;
                let b = file.metadata().map_err(ioe("reading image metadata"))?;
                if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                    return Err(ImageError::InvalidArgument(format!(
                        "{} is no longer the image that was opened",
                        path.display()
                    )));
                }
                direct::probe(&f).map_err(|e| direct::refused(&e))?;
                self.backing_extents = match self.backing.as_mut() {
                    None => true,
                    Some(b) => match b.set_cache_mode(CacheMode::None) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::debug!(error = %e, "backing file stays buffered");
                            false
                        }
                    },
                };
                self.direct = Some(f);
                Ok(())
            }
        }
    }
}
