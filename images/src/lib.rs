//! Disk images for Nubo: raw files and qcow2 (version 3) images with backing files.
//!
//! The virtio-blk device talks to every disk through [`BlockBackend`]; [`open`] gives one
//! for a path whose format the caller already knows. The orchestrator creates per-instance
//! copy-on-write overlays with [`create_qcow2_overlay`] (metadata only, no data copied).
//!
//! Image files are untrusted input: all offsets, sizes and table entries read from a file
//! are bounds-checked, and malformed images produce [`ImageError`]s, never panics.
//! See [`Qcow2Image`] for what is (not) supported and for the crash-consistency rules.

#![warn(missing_docs)]

mod convert;
mod direct;
mod error;
mod qcow2;
mod raw;
mod storage;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Read;
use std::path::Path;

pub use convert::{convert, convert_backend, resize, ConvertStats, CONVERT_CHUNK};
pub use error::ImageError;
pub use qcow2::{
    create_qcow2, create_qcow2_overlay, qcow2_backing_file, Qcow2Image, MAX_BACKING_DEPTH,
};
pub use raw::RawImage;

/// A disk the VMM can read and write at byte offsets, whatever its format.
pub trait BlockBackend: Send {
    /// Virtual size of the disk in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the disk contents at `offset`; the whole range must be inside the disk.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError>;
    /// Writes `buf` at `offset`; fails with [`ImageError::ReadOnly`] on read-only images.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError>;
    /// Makes all completed writes (data and metadata) durable (fdatasync of the file).
    fn flush(&mut self) -> Result<(), ImageError>;
    /// Tells the image that a range is no longer needed. May be a no-op; afterwards the
    /// range reads either its old contents or zeros.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError>;
    /// Makes a range read back as zeros.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError>;
    /// Whether `[offset, offset + len)` is known to read as zeros without reading it (a
    /// hole in a raw file, unallocated or zero clusters of a qcow2 image down its chain).
    /// `false` means "maybe not": the caller reads. For copying disks sparsely and fast.
    fn known_zero(&mut self, offset: u64, len: u64) -> Result<bool, ImageError> {
        check_range(offset, len, self.size())?;
        Ok(false)
    }
    /// Grows the disk to `new_size` bytes (never shrinks: a smaller size is an error);
    /// the new range reads as zeros. A block device cannot be grown here: it must already
    /// be that large (an LV grown by lvextend), and its new size is taken up.
    fn resize(&mut self, new_size: u64) -> Result<(), ImageError> {
        let _ = new_size;
        Err(ImageError::Unsupported(
            "resizing this kind of image".into(),
        ))
    }
    /// Where the guest bytes `[offset, offset + len)` live in host files, for
    /// I/O that bypasses this layer (the VMM's asynchronous engine reads and
    /// writes them with `preadv`/`pwritev` or io_uring, straight into guest
    /// memory): `Some(extents)` covering the range in order, when every byte
    /// is plain data in a file of this image that the access can touch
    /// without a metadata update (a raw file; a qcow2 image's allocated,
    /// uncompressed, unshared clusters — for reads also its backing files'
    /// clusters the image does not hide); `None` when the caller must go
    /// through [`BlockBackend::read_at`]/[`BlockBackend::write_at`]. The
    /// extents stay valid until the next call that changes the image
    /// (write, discard, write zeroes, resize) or until it is dropped.
    fn host_extents(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<Vec<HostExtent>>, ImageError> {
        let _ = (offset, len, write);
        Ok(None)
    }
    /// Switches data I/O to the page-cache-bypassing mode of `cache` (for
    /// [`CacheMode::None`]: `O_DIRECT` on the descriptors that
    /// [`BlockBackend::host_extents`] hands out; the image's own metadata
    /// I/O stays correct). Unsupported combinations are an error.
    fn set_cache_mode(&mut self, cache: CacheMode) -> Result<(), ImageError> {
        match cache {
            CacheMode::Writeback => Ok(()),
            CacheMode::None => Err(ImageError::Unsupported(
                "cache=none on this kind of image".into(),
            )),
        }
    }
}

/// A piece of a disk in a host file (see [`BlockBackend::host_extents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostExtent {
    /// The host file (owned by the backend; valid while it lives).
    pub fd: std::os::fd::RawFd,
    /// Byte offset in that file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// How a disk's data goes through the host's page cache (`--disk …,cache=`,
/// QEMU's names). Flushes reach the disk either way.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Through the page cache; a guest flush is an `fdatasync`.
    #[default]
    Writeback,
    /// `O_DIRECT`: data bypasses the page cache (buffers aligned to 512
    /// bytes; the VMM bounces unaligned guest buffers).
    None,
}

/// Which engine does a disk's asynchronous I/O in the VMM (`--disk …,engine=`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum IoEngineKind {
    /// io_uring when the kernel allows it, else the thread pool.
    #[default]
    Auto,
    /// io_uring only (the disk fails to start without it).
    IoUring,
    /// A small pool of worker threads.
    Threads,
}

impl std::str::FromStr for IoEngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "io_uring" => Ok(Self::IoUring),
            "threads" => Ok(Self::Threads),
            other => Err(format!(
                "unknown I/O engine '{other}' (auto, io_uring or threads)"
            )),
        }
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "writeback" => Ok(Self::Writeback),
            "none" => Ok(Self::None),
            other => Err(format!("unknown cache mode '{other}' (writeback or none)")),
        }
    }
}

/// Format of a disk image file: the one disk-format type of the VMM (its CLI, API and
/// embedding config) and the orchestrator (its VMM spec and boot disks). In text and JSON
/// it is QEMU's name, `"raw"` or `"qcow2"`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Flat image: disk byte `n` is file byte `n`.
    #[default]
    Raw,
    /// QEMU copy-on-write version 2/3.
    Qcow2,
}

impl ImageFormat {
    /// The name QEMU uses for this format ("raw" or "qcow2").
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that is neither `raw` nor `qcow2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image format {0:?} (raw or qcow2)")]
pub struct UnknownImageFormat(pub String);

impl std::str::FromStr for ImageFormat {
    type Err = UnknownImageFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            other => Err(UnknownImageFormat(other.to_string())),
        }
    }
}

/// Checks an untrusted qcow2 image (an upload) without following anything it names: it
/// must not name a backing file (refused before any other file is opened), its header and
/// tables must be valid, and every allocated cluster must be readable by this library
/// ([`Qcow2Image::check_clusters`]). Returns the virtual disk size.
pub fn check_standalone_qcow2(path: &Path) -> Result<u64, ImageError> {
    let mut image = Qcow2Image::open_standalone(path)?;
    image.check_clusters()?;
    Ok(image.size())
}

/// Opens the image at `path` in the given `format`.
///
/// The format is always the caller's: it is never guessed for the image itself, because a
/// guest could write a qcow2 header into a raw disk and so gain access to host files via a
/// backing-file name. (Backing files of a qcow2 image are opened read-only, with their
/// format taken from the header's backing-format extension, or probed if absent.)
pub fn open(
    path: &Path,
    format: ImageFormat,
    read_only: bool,
) -> Result<Box<dyn BlockBackend>, ImageError> {
    Ok(match format {
        ImageFormat::Raw => Box::new(RawImage::open(path, read_only)?),
        ImageFormat::Qcow2 => Box::new(Qcow2Image::open(path, read_only)?),
    })
}

/// Opens an image over files its caller opened (a jailed VMM opens nothing
/// by path): `files[0]` is the image (opened for writing too unless
/// `read_only`), `files[1..]` a qcow2 image's backing chain top-down, each
/// backing reference resolved to the next file. The count must match: a
/// raw image takes one file, a qcow2 image one per file of its chain.
pub fn open_files(
    files: Vec<File>,
    format: ImageFormat,
    read_only: bool,
) -> Result<Box<dyn BlockBackend>, ImageError> {
    Ok(match format {
        ImageFormat::Raw => {
            let count = files.len();
            let Ok([file]) = <[File; 1]>::try_from(files) else {
                return Err(ImageError::InvalidArgument(format!(
                    "a raw image takes exactly one descriptor, got {count}"
                )));
            };
            Box::new(RawImage::from_file(file, read_only)?)
        }
        ImageFormat::Qcow2 => Box::new(Qcow2Image::open_files(files, read_only)?),
    })
}

/// Guesses the format of a file: qcow2 if it starts with the qcow2 magic, raw otherwise.
///
/// Use this only for uploaded images and for backing files, which are opened read-only.
/// **Never use it to choose the format of a writable guest disk**: a guest can write a
/// qcow2 header into its raw disk, and probing would then follow the backing file name it
/// chose. A file with the qcow2 magic but an unknown version is rejected rather than
/// treated as raw.
pub fn probe_format(path: &Path) -> Result<ImageFormat, ImageError> {
    let mut file = File::open(path).map_err(error::ioe("opening image to probe its format"))?;
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::io("probing image format", e)),
        }
    }
    if got >= 4 && head[..4] == qcow2::MAGIC {
        let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if got < 8 || !(2..=3).contains(&version) {
            return Err(ImageError::Unsupported(format!(
                "file has the qcow2 magic but version {version}"
            )));
        }
        return Ok(ImageFormat::Qcow2);
    }
    Ok(ImageFormat::Raw)
}

/// Checks that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<(), ImageError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(ImageError::OutOfRange { offset, len, size }),
    }
}

/// Fuzzing harness shared by `images/fuzz` (cargo-fuzz) and the stable robustness test:
/// treats `data` as a qcow2 file held in memory, opens it read-only (any backing file is
/// replaced by an in-memory pattern, host files are never touched), reads a few ranges,
/// then opens a copy read-write and writes/flushes a little. Errors are fine; panics,
/// hangs and unbounded allocations are bugs.
#[doc(hidden)]
pub fn fuzz_qcow2_open_read(data: &[u8]) {
    qcow2::fuzz_one(data);
}

/// Fuzzing harness for host extents (`images/fuzz` target `qcow2_extents`):
/// the first 8 bytes of `data` choose ranges, the rest is an in-memory qcow2
/// image (opened like [`fuzz_qcow2_open_read`], with metadata caches shrunk
/// to two tables). Where the image reports host extents for a range, they
/// must cover it in order, lie inside the file (reads) or clear of the
/// image's header and tables (writes), and reading through them must equal
/// [`BlockBackend::read_at`]; any violation panics.
#[doc(hidden)]
pub fn fuzz_qcow2_extents(data: &[u8]) {
    qcow2::fuzz_extents(data);
}
