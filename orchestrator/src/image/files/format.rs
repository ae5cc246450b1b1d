//! Disk formats of the Image service and the check that an uploaded file is what it claims.
//!
//! Uploaded files are untrusted: the checks read a bounded header, never follow a path
//! named in the file (a qcow2 image with a backing file is rejected *before* the image
//! library opens it, since opening would open the backing file), and never panic.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

/// A Glance `disk_format` that Nubo accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    /// A flat disk image.
    Raw,
    /// A qcow2 (v2 or v3) image without a backing file.
    Qcow2,
    /// An Amazon kernel image: a Linux bzImage or an ELF kernel.
    Aki,
    /// An Amazon ramdisk image: an initramfs (cpio, possibly compressed).
    Ari,
}

/// The `disk_format` strings Nubo accepts, in the order error messages list them.
pub const ALLOWED_DISK_FORMATS: &[&str] = &["raw", "qcow2", "aki", "ari"];

impl DiskFormat {
    /// The Glance name of the format ("raw", "qcow2", "aki" or "ari").
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Aki => "aki",
            DiskFormat::Ari => "ari",
        }
    }
}

impl DiskFormat {
    /// The image format of a disk image (`raw`, `qcow2`); `None` for kernels and
    /// ramdisks, which are not disks.
    pub fn image_format(self) -> Option<images::ImageFormat> {
        match self {
            DiskFormat::Raw => Some(images::ImageFormat::Raw),
            DiskFormat::Qcow2 => Some(images::ImageFormat::Qcow2),
            DiskFormat::Aki | DiskFormat::Ari => None,
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `disk_format` string that is not one of [`ALLOWED_DISK_FORMATS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid disk_format {given:?}: allowed values are raw, qcow2, aki, ari")]
pub struct UnknownDiskFormat {
    /// The string that was given.
    pub given: String,
}

impl FromStr for DiskFormat {
    type Err = UnknownDiskFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            "aki" => Ok(DiskFormat::Aki),
            "ari" => Ok(DiskFormat::Ari),
            _ => Err(UnknownDiskFormat {
                given: s.to_string(),
            }),
        }
    }
}

/// How many leading bytes of a file the checks look at.
const HEAD_LEN: usize = 4096;

const QCOW_MAGIC: &[u8] = b"QFI\xfb";
/// Length of the qcow2 version 2 header (the fields every version has).
const QCOW2_V2_HEADER_LEN: usize = 72;

/// Checks that the file at `path` really is an image of `format`; the error says why not.
///
/// - qcow2: the qcow2 magic, no backing file, and the image library must open it
///   (header, extensions, L1/refcount tables validated).
/// - raw: not empty, and not a qcow2, QED, VMDK, VHD, VHDX, VDI, Parallels or LUKS image
///   (QEMU-style probing of the first bytes).
/// - aki: a Linux bzImage (0xAA55 at 510 and "HdrS" at 0x202) or an ELF file.
/// - ari: gzip, cpio (newc), lz4, xz, zstd or bzip2 data.
pub fn validate_format(path: &Path, format: DiskFormat) -> Result<(), String> {
    check_format(path, format).map(|_| ())
}

/// [`validate_format`], returning the virtual disk size for raw and qcow2 images.
pub(crate) fn check_format(path: &Path, format: DiskFormat) -> Result<Option<u64>, String> {
    let (head, len) = read_head(path).map_err(|e| format!("cannot read the image: {e}"))?;
    if len == 0 {
        return Err("the image is empty".into());
    }
    match format {
        DiskFormat::Qcow2 => check_qcow2(path, &head),
        DiskFormat::Raw => {
            if let Some(other) = probe_container(&head) {
                return Err(format!("the data is a {other} image, not raw"));
            }
            Ok(Some(len))
        }
        DiskFormat::Aki => {
            if is_bzimage(&head) || head.starts_with(b"\x7fELF") {
                Ok(None)
            } else {
                Err("the data is neither a Linux bzImage nor an ELF kernel".into())
            }
        }
        DiskFormat::Ari => {
            if ramdisk_kind(&head).is_some() {
                Ok(None)
            } else {
                Err(
                    "the data is not a ramdisk (expected gzip, cpio, lz4, xz, zstd or bzip2)"
                        .into(),
                )
            }
        }
    }
}

/// The first [`HEAD_LEN`] bytes (fewer if the file is shorter) and the file length.
fn read_head(path: &Path) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut head = Vec::with_capacity(HEAD_LEN);
    (&mut file).take(HEAD_LEN as u64).read_to_end(&mut head)?;
    Ok((head, len))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn check_qcow2(path: &Path, head: &[u8]) -> Result<Option<u64>, String> {
    if !head.starts_with(QCOW_MAGIC) {
        return Err("the data does not start with the qcow2 magic".into());
    }
    if head.len() < QCOW2_V2_HEADER_LEN {
        return Err(format!(
            "the qcow2 header is truncated ({} bytes)",
            head.len()
        ));
    }
    // The image library refuses a backing file before it opens anything else, checks
    // the header and tables, and walks every L2 table (truncated or compressed images).
    images::check_standalone_qcow2(path)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Names the container format the header belongs to, if it is one QEMU would recognise.
fn probe_container(head: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"QFI\xfb", "qcow2"),
        (b"QED\0", "QED"),
        (b"KDMV", "VMDK"),
        (b"COWD", "VMDK"),
        (b"# Disk DescriptorFile", "VMDK descriptor"),
        (b"vhdxfile", "VHDX"),
        (b"conectix", "VHD"),
        (b"WithoutFreeSpace", "Parallels"),
        (b"WithouFreSpacExt", "Parallels"),
        (b"LUKS\xba\xbe", "LUKS"),
    ];
    if let Some((_, name)) = MAGICS.iter().find(|(m, _)| head.starts_with(m)) {
        return Some(name);
    }
    // VDI: a 64-byte text banner, then the signature 0xbeda107f (little-endian).
    if le_u32(head, 0x40) == Some(0xbeda_107f) {
        return Some("VDI");
    }
    None
}

fn is_bzimage(head: &[u8]) -> bool {
    head.get(510..512) == Some(&[0x55, 0xaa][..]) && head.get(0x202..0x206) == Some(&b"HdrS"[..])
}

fn ramdisk_kind(head: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "gzip"),
        (b"070701", "cpio"),
        (b"070702", "cpio"),
        (b"\x02\x21\x4c\x18", "lz4"),
        (b"\x04\x22\x4d\x18", "lz4"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"BZh", "bzip2"),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, n)| *n)
}
