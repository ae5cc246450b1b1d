//! Whole-disk operations on closed images: growing one, and copying one disk's data
//! into another backend (volume from image, full clones).

use std::path::Path;

use crate::{open, BlockBackend, ImageError, ImageFormat};

/// Bytes copied per read in [`convert`]: large enough to keep the copy streaming, small
/// enough to keep memory flat.
pub const CONVERT_CHUNK: usize = 4 << 20;

/// Grows the closed image at `path` to `new_size` bytes (never shrinks); the new range
/// reads as zeros. For qcow2 see [`crate::Qcow2Image::grow`] for the crash-safe order; a
/// raw file is extended sparsely.
pub fn resize(path: &Path, format: ImageFormat, new_size: u64) -> Result<(), ImageError> {
    let mut img = open(path, format, false)?;
    img.resize(new_size)?;
    img.flush()
}

/// What [`convert`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Bytes of the source read (chunks not known to be zeros).
    pub read: u64,
    /// Bytes written to the target (the non-zero chunks).
    pub written: u64,
}

/// Copies the disk at `src` (in `src_format`, read through its backing chain) into `dst`,
/// which must be at least as large and must read as zeros where nothing is written (a
/// fresh qcow2 image, a fresh thin LV): chunks of zeros are skipped, so the target stays
/// sparse; ranges the source knows are zeros ([`BlockBackend::known_zero`]: holes,
/// unallocated clusters) are not even read. The target is flushed at the end.
pub fn convert(
    src: &Path,
    src_format: ImageFormat,
    dst: &mut dyn BlockBackend,
) -> Result<ConvertStats, ImageError> {
    let mut source = open(src, src_format, true)?;
    convert_backend(source.as_mut(), dst)
}

/// Like [`convert`] from an open backend.
pub fn convert_backend(
    src: &mut dyn BlockBackend,
    dst: &mut dyn BlockBackend,
) -> Result<ConvertStats, ImageError> {
    let size = src.size();
    if dst.size() < size {
        return Err(ImageError::InvalidArgument(format!(
            "target of {} bytes is smaller than the source's {size}",
            dst.size()
        )));
    }
    let mut buf = vec![0u8; CONVERT_CHUNK];
    let mut stats = ConvertStats::default();
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(CONVERT_CHUNK as u64) as usize;
        if src.known_zero(pos, n as u64)? {
            pos += n as u64;
            continue;
        }
        let chunk = &mut buf[..n];
        src.read_at(chunk, pos)?;
        stats.read += n as u64;
        // Skip zeros at a 64 KiB grain (the qcow2 cluster size) so the target stays sparse.
        for (i, piece) in chunk.chunks(64 << 10).enumerate() {
            if piece.iter().any(|&b| b != 0) {
                dst.write_at(piece, pos + (i as u64) * (64 << 10))?;
                stats.written += piece.len() as u64;
            }
        }
        pos += n as u64;
    }
    dst.flush()?;
    Ok(stats)
}
