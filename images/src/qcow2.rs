//! qcow2 images (version 3; version 2 read and written too), with backing files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::ioe;
use crate::raw::MemRaw;
use crate::storage::{MemStorage, Storage};
use crate::{check_range, probe_format, BlockBackend, ImageError, ImageFormat};

/// The four bytes every qcow2 file starts with.
pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";

/// How many images a backing chain may have below the top image.
pub const MAX_BACKING_DEPTH: usize = 16;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const RT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;
/// Host offsets must fit in L2 entry bits 9..=55.
const MAX_HOST_OFFSET: u64 = 1 << 56;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_EXTERNAL_DATA
    | INCOMPAT_COMPRESSION_TYPE
    | INCOMPAT_EXTENDED_L2;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_EXTERNAL_DATA: u32 = 0x4441_5441;

/// Largest L1 table we accept (same limit as QEMU).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table we accept.
const MAX_RT_BYTES: u64 = 32 << 20;
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;
/// Header length we write: v3 fields plus the compression-type byte, padded to 8.
const OUR_HEADER_LEN: usize = 112;
/// Cluster size of images we create: 64 KiB.
const OUR_CLUSTER_BITS: u32 = 16;
/// Metadata cache budget per cache (L2 tables, refcount blocks), in bytes.
const CACHE_BYTES: u64 = 8 << 20;

mod extents;
#[cfg(test)]
mod extents_tests;

fn corrupt(msg: impl Into<String>) -> ImageError {
    ImageError::Corrupt(msg.into())
}

fn be32(b: &[u8], off: usize) -> Result<u32, ImageError> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt("header truncated"))
}

fn be64(b: &[u8], off: usize) -> Result<u64, ImageError> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("header truncated"))
}

fn decode_u64s(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn encode_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a / b + u64::from(a % b != 0)
}

/// Parsed and validated qcow2 header.
#[derive(Debug)]
struct Header {
    version: u32,
    cluster_bits: u32,
    size: u64,
    l1_size: u64,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u64,
    nb_snapshots: u32,
    incompatible: u64,
    autoclear: u64,
    refcount_order: u32,
    backing_file: Option<PathBuf>,
    backing_format: Option<Vec<u8>>,
    feature_names: Vec<(u8, u8, String)>,
}

impl Header {
    fn parse(file: &dyn Storage, file_len: u64) -> Result<Header, ImageError> {
        let mut fixed = [0u8; V3_HEADER_LEN];
        let n = file
            .read_at(&mut fixed, 0)
            .map_err(ioe("reading qcow2 header"))?;
        if n < V2_HEADER_LEN {
            return Err(corrupt(format!(
                "header truncated: file has only {n} bytes"
            )));
        }
        if fixed[..4] != MAGIC {
            return Err(corrupt("not a qcow2 image (bad magic)"));
        }
        let version = be32(&fixed, 4)?;
        if !(2..=3).contains(&version) {
            return Err(ImageError::Unsupported(format!("qcow2 version {version}")));
        }
        if version == 3 && n < V3_HEADER_LEN {
            return Err(corrupt("version 3 header truncated"));
        }
        let backing_file_offset = be64(&fixed, 8)?;
        let backing_file_size = be32(&fixed, 16)?;
        let cluster_bits = be32(&fixed, 20)?;
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} outside 9..=21"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let size = be64(&fixed, 24)?;
        let crypt_method = be32(&fixed, 32)?;
        if crypt_method != 0 {
            return Err(ImageError::Unsupported(format!(
                "encryption (crypt_method {crypt_method})"
            )));
        }
        let l1_size = u64::from(be32(&fixed, 36)?);
        let l1_table_offset = be64(&fixed, 40)?;
        let refcount_table_offset = be64(&fixed, 48)?;
        let refcount_table_clusters = u64::from(be32(&fixed, 56)?);
        let nb_snapshots = be32(&fixed, 60)?;
        let (incompatible, autoclear, refcount_order, header_length) = if version == 3 {
            (
                be64(&fixed, 72)?,
                be64(&fixed, 88)?,
                be32(&fixed, 96)?,
                u64::from(be32(&fixed, 100)?),
            )
        } else {
            (0, 0, 4, V2_HEADER_LEN as u64)
        };
        if header_length
            < (if version == 3 {
                V3_HEADER_LEN
            } else {
                V2_HEADER_LEN
            }) as u64
            || header_length > cluster_size
        {
            return Err(corrupt(format!("invalid header_length {header_length}")));
        }
        if refcount_order > 6 {
            return Err(corrupt(format!("refcount_order {refcount_order} > 6")));
        }

        // The header cluster: extensions and the backing file name must lie inside it.
        let hdr_len = cluster_size.min(file_len) as usize;
        let mut cluster = vec![0u8; hdr_len];
        let got = file
            .read_at(&mut cluster, 0)
            .map_err(ioe("reading qcow2 header cluster"))?;
        cluster.truncate(got);

        let mut feature_names = Vec::new();
        let mut backing_format = None;
        let mut pos = header_length as usize;
        // Each extension uses at least 8 bytes, so this loop ends within the cluster.
        loop {
            if pos + 8 > cluster.len() {
                if version == 3 {
                    return Err(corrupt("header extensions run past the first cluster"));
                }
                break; // v2 images may have no end marker if nothing follows
            }
            let ty = be32(&cluster, pos)?;
            let len = be32(&cluster, pos + 4)? as usize;
            if ty == EXT_END {
                break;
            }
            let data_start = pos + 8;
            let data = cluster
                .get(data_start..data_start.saturating_add(len))
                .ok_or_else(|| corrupt(format!("header extension {ty:#x} too long")))?;
            match ty {
                EXT_BACKING_FORMAT => backing_format = Some(data.to_vec()),
                EXT_FEATURE_TABLE => {
                    for e in data.chunks_exact(48) {
                        let name_bytes = &e[2..];
                        let end = name_bytes
                            .iter()
                            .position(|&c| c == 0)
                            .unwrap_or(name_bytes.len());
                        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
                        feature_names.push((e[0], e[1], name));
                    }
                }
                EXT_CRYPTO => {
                    return Err(ImageError::Unsupported("encryption header".into()));
                }
                EXT_EXTERNAL_DATA => {
                    return Err(ImageError::Unsupported("external data file".into()));
                }
                _ => tracing::debug!(ext = ty, "ignoring unknown qcow2 header extension"),
            }
            pos = data_start
                .checked_add(len.div_ceil(8) * 8)
                .ok_or_else(|| corrupt("header extension length overflow"))?;
        }

        let backing_file = if backing_file_offset != 0 {
            let len = backing_file_size as usize;
            if len == 0 || len > 1023 {
                return Err(corrupt(format!(
                    "backing file name length {len} not in 1..=1023"
                )));
            }
            let start = usize::try_from(backing_file_offset)
                .map_err(|_| corrupt("backing file name offset too large"))?;
            let name = cluster
                .get(start..start.saturating_add(len))
                .ok_or_else(|| corrupt("backing file name lies outside the header cluster"))?;
            if name.contains(&0) {
                return Err(corrupt("backing file name contains a NUL byte"));
            }
            Some(PathBuf::from(OsStr::from_bytes(name)))
        } else {
            None
        };

        let h = Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            nb_snapshots,
            incompatible,
            autoclear,
            refcount_order,
            backing_file,
            backing_format,
            feature_names,
        };
        h.check_layout(file_len)?;
        Ok(h)
    }

    fn check_layout(&self, file_len: u64) -> Result<(), ImageError> {
        let cs = 1u64 << self.cluster_bits;
        let l2_entries = cs / 8;
        // Entries needed to map the whole virtual size.
        let per_l1 = l2_entries * cs;
        let needed = div_ceil(self.size, per_l1);
        if self.l1_size * 8 > MAX_L1_BYTES || needed * 8 > MAX_L1_BYTES {
            return Err(ImageError::Unsupported(format!(
                "L1 table too large ({} entries, virtual size {})",
                self.l1_size.max(needed),
                self.size
            )));
        }
        if self.l1_size < needed {
            return Err(corrupt(format!(
                "L1 table has {} entries but virtual size {} needs {needed}",
                self.l1_size, self.size
            )));
        }
        if self.l1_size > 0 {
            check_table(
                "L1 table",
                self.l1_table_offset,
                self.l1_size * 8,
                cs,
                file_len,
            )?;
        }
        Ok(())
    }

    fn unknown_incompat_names(&self, bits: u64) -> String {
        let mut names = Vec::new();
        for bit in 0..64u8 {
            if bits & (1 << bit) != 0 {
                let name = self
                    .feature_names
                    .iter()
                    .find(|(ty, b, _)| *ty == 0 && *b == bit)
                    .map(|(_, _, n)| n.clone())
                    .unwrap_or_else(|| "unknown".into());
                names.push(format!("bit {bit} ({name})"));
            }
        }
        names.join(", ")
    }
}

/// Checks that a table at `offset` of `len` bytes is cluster aligned and inside the file.
fn check_table(
    what: &str,
    offset: u64,
    len: u64,
    cs: u64,
    file_len: u64,
) -> Result<(), ImageError> {
    if offset == 0 || offset % cs != 0 {
        return Err(corrupt(format!(
            "{what} offset {offset:#x} is zero or not cluster aligned"
        )));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(corrupt(format!(
            "{what} at {offset:#x} ({len} bytes) extends past end of file ({file_len} bytes)"
        ))),
    }
}

/// One cached metadata table (an L2 table or a refcount block).
struct CacheEntry<T> {
    data: Vec<T>,
    dirty: bool,
    used: u64,
}

/// A small LRU cache of metadata tables keyed by their host offset.
struct MetaCache<T> {
    map: HashMap<u64, CacheEntry<T>>,
    cap: usize,
    clock: u64,
}

impl<T> MetaCache<T> {
    fn new(cap: usize) -> Self {
        MetaCache {
            map: HashMap::new(),
            cap,
            clock: 0,
        }
    }

    fn get(&mut self, key: u64) -> Option<&mut CacheEntry<T>> {
        self.clock += 1;
        let now = self.clock;
        let entry = self.map.get_mut(&key)?;
        entry.used = now;
        Some(entry)
    }

    fn insert(&mut self, key: u64, data: Vec<T>, dirty: bool) {
        self.clock += 1;
        self.map.insert(
            key,
            CacheEntry {
                data,
                dirty,
                used: self.clock,
            },
        );
    }

    /// The least recently used entry, if the cache is full.
    fn victim(&self) -> Option<(u64, bool)> {
        if self.map.len() < self.cap {
            return None;
        }
        self.map
            .iter()
            .min_by_key(|(_, e)| e.used)
            .map(|(k, e)| (*k, e.dirty))
    }

    fn any_dirty(&self) -> bool {
        self.map.values().any(|e| e.dirty)
    }

    fn dirty_keys(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        keys
    }
}

/// Refcount state, loaded only for writable images.
struct Refcounts {
    table_offset: u64,
    table: Vec<u64>,
    table_dirty: Option<(usize, usize)>,
    blocks: MetaCache<u16>,
    /// Refcount entries per block.
    per_block: u64,
    /// No cluster below this index is free (allocation scan start).
    free_hint: u64,
}

/// What an L2 entry says about one guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Not allocated: read from the backing file, or zeros.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Data at this host offset.
    Data(u64),
    /// Compressed cluster (not supported).
    Compressed,
}

fn mark_dirty(range: &mut Option<(usize, usize)>, idx: usize) {
    *range = Some(match *range {
        None => (idx, idx + 1),
        Some((a, b)) => (a.min(idx), b.max(idx + 1)),
    });
}

/// How to get the backing file of an image being opened.
enum BackingPolicy<'a> {
    /// Open it from the host filesystem, relative to the image's directory.
    Open {
        image_path: &'a Path,
        depth: usize,
        chain: &'a mut Vec<(u64, u64)>,
    },
    /// Replace any backing file by an in-memory pattern (fuzzing: never touch host files).
    Fake,
    /// Refuse an image that names a backing file, before anything is opened (uploads:
    /// an untrusted image must not make the host open a path of its choosing).
    Refuse,
    /// Take the next of these already open files (a jailed VMM opens nothing by path).
    Given {
        files: &'a mut std::collections::VecDeque<std::fs::File>,
        depth: usize,
    },
}

/// A qcow2 image (version 3; version 2 is also accepted).
///
/// Supported: reads and writes of any cluster size (`cluster_bits` 9..=21), zero clusters,
/// backing files (raw or qcow2, opened read-only, at most [`MAX_BACKING_DEPTH`] deep, loops
/// rejected), allocation of data clusters and L2 tables with copy-on-write from the backing
/// file, write-zeroes via zero clusters. Writing requires 16-bit refcounts
/// (`refcount_order` 4, the default), no internal snapshots and a clean (not dirty, not
/// corrupt) image; such images open read-only fine.
///
/// Unsupported (clear [`ImageError::Unsupported`] errors): encryption, external data
/// files, extended L2 entries, unknown incompatible features, compressed clusters (on read
/// and write), growing the refcount table (images we create have one large enough for
/// their whole virtual size). `discard` is a no-op.
///
/// Asynchronous I/O: [`BlockBackend::host_extents`] names the host ranges of allocated,
/// uncompressed clusters (for writes only clusters not shared, so no copy-on-write is
/// needed; for reads also the backing files' ranges of unallocated clusters) and `None`
/// for anything else (unallocated without backing data, zero, compressed), which then goes
/// through `read_at`/`write_at`. `cache=none` ([`BlockBackend::set_cache_mode`]) needs an
/// image opened by path: a second descriptor of it is opened with `O_DIRECT` for the
/// extents, while metadata and the `read_at`/`write_at` path stay buffered; an image
/// opened from descriptors ([`Qcow2Image::open_files`]) refuses it.
///
/// Crash consistency: data clusters are written straight to the file; metadata (refcount
/// blocks, refcount table, L2 tables, L1 table) is cached and written back on
/// [`BlockBackend::flush`], on cache eviction and on drop, in this order with an fdatasync
/// between the steps: refcount blocks → refcount table → L2 tables → L1 table. So a
/// cluster's refcount is durable before any table points at it, and data is durable before
/// its L2 entry. Clusters are never freed. If the process dies at any point, the image
/// opens again and `qemu-img check` reports at most leaked clusters; the dirty bit is not
/// used because refcounts on disk never undercount. Writes that were not flushed may be
/// lost, as with a disk's volatile write cache.
pub struct Qcow2Image {
    file: Box<dyn Storage>,
    read_only: bool,
    version: u32,
    cluster_bits: u32,
    cluster_size: u64,
    size: u64,
    /// Logical end of the file: on-disk length or end of the last allocated cluster.
    file_len: u64,
    l1_offset: u64,
    l1: Vec<u64>,
    l1_dirty: Option<(usize, usize)>,
    l2_cache: MetaCache<u64>,
    rc: Option<Refcounts>,
    backing: Option<Box<dyn BlockBackend>>,
    backing_path: Option<PathBuf>,
    /// Host ranges nothing may be allocated over or written into as data: header, L1, RT.
    protected: Vec<(u64, u64)>,
    /// The image's path when it was opened by path (for a second, `O_DIRECT` descriptor).
    path: Option<PathBuf>,
    /// With `cache=none`: the `O_DIRECT` descriptor that host extents name.
    direct: Option<std::fs::File>,
    /// Whether host extents may name the backing file (false when it could
    /// not switch to the current cache mode).
    backing_extents: bool,
}

impl Qcow2Image {
    /// Opens the qcow2 image at `path`, with its backing chain (always read-only).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ImageError> {
        let mut chain = Vec::new();
        Self::open_chain(path, read_only, 0, &mut chain)
    }

    fn open_chain(
        path: &Path,
        read_only: bool,
        depth: usize,
        chain: &mut Vec<(u64, u64)>,
    ) -> Result<Self, ImageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(ioe("opening qcow2 image"))?;
        let meta = file.metadata().map_err(ioe("reading image metadata"))?;
        let id = (meta.dev(), meta.ino());
        if chain.contains(&id) {
            return Err(ImageError::BackingLoop(path.to_path_buf()));
        }
        chain.push(id);
        let mut img = Self::open_storage(
            Box::new(file),
            read_only,
            BackingPolicy::Open {
                image_path: path,
                depth,
                chain,
            },
        )?;
        img.path = Some(path.to_path_buf());
        Ok(img)
    }

    /// Opens the qcow2 image over `files`: the image first, then its backing
    /// chain top-down, each backing reference resolved to the next file. The
    /// count must match the chain.
    pub fn open_files(files: Vec<std::fs::File>, read_only: bool) -> Result<Self, ImageError> {
        let given = files.len();
        let mut files: std::collections::VecDeque<_> = files.into();
        let top = files
            .pop_front()
            .ok_or_else(|| ImageError::InvalidArgument("no image descriptor given".into()))?;
        let image = Self::open_storage(
            Box::new(top),
            read_only,
            BackingPolicy::Given {
                files: &mut files,
                depth: 0,
            },
        )?;
        if !files.is_empty() {
            return Err(ImageError::InvalidArgument(format!(
                "{given} descriptors given but the image's chain has {} files",
                given - files.len()
            )));
        }
        Ok(image)
    }

    fn open_storage(
        file: Box<dyn Storage>,
        read_only: bool,
        policy: BackingPolicy<'_>,
    ) -> Result<Self, ImageError> {
        let file_len = file.len().map_err(ioe("reading image length"))?;
        let h = Header::parse(file.as_ref(), file_len)?;
        let cs = 1u64 << h.cluster_bits;

        let unknown = h.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(ImageError::Unsupported(format!(
                "unknown incompatible features: {}",
                h.unknown_incompat_names(unknown)
            )));
        }
        if h.incompatible & INCOMPAT_EXTERNAL_DATA != 0 {
            return Err(ImageError::Unsupported("external data file".into()));
        }
        if h.incompatible & INCOMPAT_EXTENDED_L2 != 0 {
            return Err(ImageError::Unsupported("extended L2 entries".into()));
        }
        if !read_only {
            if h.incompatible & INCOMPAT_CORRUPT != 0 {
                return Err(corrupt(
                    "image is marked corrupt; it can only be opened read-only",
                ));
            }
            if h.incompatible & INCOMPAT_DIRTY != 0 {
                return Err(ImageError::Unsupported(
                    "image is dirty (lazy refcounts); repair it with `qemu-img check -r all` \
                     before writing"
                        .into(),
                ));
            }
            if h.nb_snapshots != 0 {
                return Err(ImageError::Unsupported(format!(
                    "writing to an image with {} internal snapshots",
                    h.nb_snapshots
                )));
            }
            if h.refcount_order != 4 {
                return Err(ImageError::Unsupported(format!(
                    "writing with refcount_order {} (only 4, 16-bit refcounts)",
                    h.refcount_order
                )));
            }
        }

        // L1 table (bounded by check_layout: within the file and at most 32 MiB).
        let mut raw = vec![0u8; (h.l1_size * 8) as usize];
        if !raw.is_empty() {
            let n = file
                .read_at(&mut raw, h.l1_table_offset)
                .map_err(ioe("reading L1 table"))?;
            if n != raw.len() {
                return Err(corrupt("L1 table truncated"));
            }
        }
        let l1 = decode_u64s(&raw);

        let mut protected = vec![(0, cs)];
        if h.l1_size > 0 {
            let end = h.l1_table_offset + div_ceil(h.l1_size * 8, cs) * cs;
            protected.push((h.l1_table_offset, end));
        }
        // The refcount table too (only validated when writable; a bogus range only makes
        // more data offsets count as overlapping, which is an error anyway).
        if let Some(end) = h
            .refcount_table_clusters
            .checked_mul(cs)
            .and_then(|len| h.refcount_table_offset.checked_add(len))
        {
            if h.refcount_table_offset != 0 {
                protected.push((h.refcount_table_offset, end));
            }
        }

        let rc = if read_only {
            None
        } else {
            let rt_bytes = h
                .refcount_table_clusters
                .checked_mul(cs)
                .filter(|&b| b <= MAX_RT_BYTES)
                .ok_or_else(|| {
                    ImageError::Unsupported(format!(
                        "refcount table of {} clusters is too large",
                        h.refcount_table_clusters
                    ))
                })?;
            check_table(
                "refcount table",
                h.refcount_table_offset,
                rt_bytes,
                cs,
                file_len,
            )?;
            let mut raw = vec![0u8; rt_bytes as usize];
            let n = file
                .read_at(&mut raw, h.refcount_table_offset)
                .map_err(ioe("reading refcount table"))?;
            if n != raw.len() {
                return Err(corrupt("refcount table truncated"));
            }
            Some(Refcounts {
                table_offset: h.refcount_table_offset,
                table: decode_u64s(&raw),
                table_dirty: None,
                blocks: MetaCache::new((CACHE_BYTES / cs).clamp(16, 4096) as usize),
                per_block: cs / 2,
                free_hint: 0,
            })
        };

        let (backing, backing_path) = match (&h.backing_file, policy) {
            (None, _) => (None, None),
            (Some(_), BackingPolicy::Refuse) => {
                return Err(ImageError::Unsupported(
                    "qcow2 images with a backing file are not accepted".into(),
                ))
            }
            (Some(name), BackingPolicy::Fake) => {
                let pattern: Vec<u8> = (0..(1u32 << 16)).map(|i| (i % 251) as u8).collect();
                (
                    Some(Box::new(MemRaw(pattern)) as Box<dyn BlockBackend>),
                    Some(name.clone()),
                )
            }
            (Some(name), BackingPolicy::Given { files, depth }) => {
                if depth + 1 > MAX_BACKING_DEPTH {
                    return Err(ImageError::BackingChainTooDeep(MAX_BACKING_DEPTH));
                }
                let next = files.pop_front().ok_or_else(|| {
                    ImageError::InvalidArgument(format!(
                        "the chain needs more descriptors: no file given for backing file {}",
                        name.display()
                    ))
                })?;
                let b = given_backing(next, h.backing_format.as_deref(), files, depth + 1)
                    .map_err(|e| ImageError::Backing {
                        path: name.clone(),
                        source: Box::new(e),
                    })?;
                (Some(b), Some(name.clone()))
            }
            (
                Some(name),
                BackingPolicy::Open {
                    image_path,
                    depth,
                    chain,
                },
            ) => {
                let resolved = resolve_backing(image_path, name);
                let b = open_backing(&resolved, h.backing_format.as_deref(), depth + 1, chain)
                    .map_err(|e| match e {
                        e @ (ImageError::BackingLoop(_) | ImageError::BackingChainTooDeep(_)) => e,
                        e => ImageError::Backing {
                            path: resolved.clone(),
                            source: Box::new(e),
                        },
                    })?;
                (Some(b), Some(resolved))
            }
        };

        let mut img = Qcow2Image {
            file,
            read_only,
            version: h.version,
            cluster_bits: h.cluster_bits,
            cluster_size: cs,
            size: h.size,
            file_len,
            l1_offset: h.l1_table_offset,
            l1,
            l1_dirty: None,
            l2_cache: MetaCache::new((CACHE_BYTES / cs).clamp(16, 4096) as usize),
            rc,
            backing,
            backing_path,
            protected,
            path: None,
            direct: None,
            backing_extents: true,
        };
        if !read_only && h.autoclear != 0 {
            // We do not maintain the features behind autoclear bits (e.g. bitmaps): clear them.
            img.file
                .write_at(&0u64.to_be_bytes(), 88)
                .and_then(|()| img.file.sync())
                .map_err(ioe("clearing autoclear feature bits"))?;
        }
        tracing::debug!(
            version = h.version,
            cluster_bits = h.cluster_bits,
            size = h.size,
            backing = ?img.backing_path,
            read_only,
            "opened qcow2 image"
        );
        Ok(img)
    }

    /// Opens an untrusted, standalone qcow2 image read-only: one that names a backing
    /// file is refused before any other file is opened.
    pub fn open_standalone(path: &Path) -> Result<Self, ImageError> {
        let file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(ioe("opening qcow2 image"))?;
        Self::open_storage(Box::new(file), true, BackingPolicy::Refuse)
    }

    /// Checks every allocated cluster without reading guest data: each L2 table and data
    /// cluster is cluster aligned, inside the file (a truncated image fails here) and clear
    /// of the header, L1 and refcount tables, and no cluster is compressed (this library
    /// cannot read compressed clusters). [`Qcow2Image::open`] checks the header and the L1
    /// table only; data clusters are otherwise checked when they are read. Each distinct L2
    /// table is read once, so the work is bounded by the file size.
    pub fn check_clusters(&mut self) -> Result<(), ImageError> {
        let mut seen = std::collections::HashSet::new();
        let mut raw = vec![0u8; self.cluster_size as usize];
        for l1i in 0..self.l1.len() {
            let Some(l2off) = self.l2_offset(l1i)? else {
                continue;
            };
            if !seen.insert(l2off) {
                continue;
            }
            let n = self
                .file
                .read_at(&mut raw, l2off)
                .map_err(ioe("reading L2 table"))?;
            if n != raw.len() {
                return Err(corrupt(format!("L2 table at {l2off:#x} is truncated")));
            }
            for entry in decode_u64s(&raw) {
                if entry & OFLAG_COMPRESSED != 0 {
                    return Err(ImageError::Unsupported(
                        "the image has compressed clusters, which Nubo cannot read; \
                         convert it with `qemu-img convert -O qcow2` (without -c)"
                            .into(),
                    ));
                }
                if self.version >= 3 && entry & OFLAG_ZERO != 0 {
                    continue;
                }
                let off = entry & L2_OFFSET_MASK;
                if off != 0 {
                    self.check_host_cluster(off, "data cluster")
                        .map_err(|e| match e {
                            ImageError::Corrupt(m) if m.contains("past end of file") => {
                                ImageError::Corrupt(format!("{m}: is the image truncated?"))
                            }
                            e => e,
                        })?;
                }
            }
        }
        Ok(())
    }

    /// Fuzzing: metadata caches of two tables each, so that a few writes
    /// exercise eviction and the write-back of dirty tables.
    fn shrink_caches_for_fuzzing(&mut self) {
        self.l2_cache.cap = 2;
        if let Some(rc) = self.rc.as_mut() {
            rc.blocks.cap = 2;
        }
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    /// The backing file as resolved when opening, if the image has one.
    pub fn backing_path(&self) -> Option<&Path> {
        self.backing_path.as_deref()
    }

    fn overlaps_protected(&self, off: u64, len: u64) -> bool {
        let end = off.saturating_add(len);
        self.protected.iter().any(|&(a, b)| off < b && a < end)
    }

    /// Validates a host cluster offset found in a table.
    fn check_host_cluster(&self, off: u64, what: &str) -> Result<(), ImageError> {
        if off % self.cluster_size != 0 {
            return Err(corrupt(format!(
                "{what} offset {off:#x} is not cluster aligned"
            )));
        }
        if off >= self.file_len {
            return Err(corrupt(format!(
                "{what} offset {off:#x} is past end of file ({} bytes)",
                self.file_len
            )));
        }
        if self.overlaps_protected(off, self.cluster_size) {
            return Err(corrupt(format!(
                "{what} offset {off:#x} overlaps the header, L1 or refcount table"
            )));
        }
        Ok(())
    }

    /// Host offset of the L2 table for L1 index `l1i`, if allocated.
    fn l2_offset(&self, l1i: usize) -> Result<Option<u64>, ImageError> {
        let entry = *self
            .l1
            .get(l1i)
            .ok_or_else(|| corrupt(format!("L1 index {l1i} out of range")))?;
        let off = entry & L1_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        self.check_host_cluster(off, "L2 table")?;
        if off + self.cluster_size > self.file_len {
            return Err(corrupt(format!("L2 table at {off:#x} is truncated")));
        }
        Ok(Some(off))
    }

    /// Writes back all metadata if the L2 cache must evict a dirty table, then evicts.
    fn make_room_l2(&mut self) -> Result<(), ImageError> {
        if let Some((key, dirty)) = self.l2_cache.victim() {
            if dirty {
                self.write_back()?;
            }
            self.l2_cache.map.remove(&key);
        }
        Ok(())
    }

    fn make_room_rb(&mut self) -> Result<(), ImageError> {
        let victim = self.rc.as_ref().and_then(|rc| rc.blocks.victim());
        if let Some((key, dirty)) = victim {
            if dirty {
                self.write_back()?;
            }
            if let Some(rc) = self.rc.as_mut() {
                rc.blocks.map.remove(&key);
            }
        }
        Ok(())
    }

    fn ensure_l2(&mut self, off: u64) -> Result<(), ImageError> {
        if self.l2_cache.map.contains_key(&off) {
            return Ok(());
        }
        self.make_room_l2()?;
        let mut raw = vec![0u8; self.cluster_size as usize];
        let n = self
            .file
            .read_at(&mut raw, off)
            .map_err(ioe("reading L2 table"))?;
        if n != raw.len() {
            return Err(corrupt(format!("L2 table at {off:#x} is truncated")));
        }
        self.l2_cache.insert(off, decode_u64s(&raw), false);
        Ok(())
    }

    fn l2_entry(&mut self, l2off: u64, l2i: usize) -> Result<u64, ImageError> {
        self.ensure_l2(l2off)?;
        self.l2_cache
            .get(l2off)
            .and_then(|e| e.data.get(l2i).copied())
            .ok_or_else(|| corrupt("L2 index out of range"))
    }

    fn set_l2_entry(&mut self, l2off: u64, l2i: usize, value: u64) -> Result<(), ImageError> {
        self.ensure_l2(l2off)?;
        let e = self
            .l2_cache
            .get(l2off)
            .ok_or_else(|| corrupt("L2 table vanished from cache"))?;
        let slot = e
            .data
            .get_mut(l2i)
            .ok_or_else(|| corrupt("L2 index out of range"))?;
        *slot = value;
        e.dirty = true;
        Ok(())
    }

    fn split(&self, guest_cluster: u64) -> (usize, usize) {
        let per = self.cluster_size / 8;
        (
            (guest_cluster / per) as usize,
            (guest_cluster % per) as usize,
        )
    }

    /// Looks up a guest cluster; returns its mapping and the raw L2 entry.
    fn mapping(&mut self, guest_cluster: u64) -> Result<(Mapping, u64), ImageError> {
        let (l1i, l2i) = self.split(guest_cluster);
        let Some(l2off) = self.l2_offset(l1i)? else {
            return Ok((Mapping::Unallocated, 0));
        };
        let entry = self.l2_entry(l2off, l2i)?;
        if entry & OFLAG_COMPRESSED != 0 {
            return Ok((Mapping::Compressed, entry));
        }
        if self.version >= 3 && entry & OFLAG_ZERO != 0 {
            return Ok((Mapping::Zero, entry));
        }
        let off = entry & L2_OFFSET_MASK;
        if off == 0 {
            return Ok((Mapping::Unallocated, entry));
        }
        self.check_host_cluster(off, "data cluster")?;
        Ok((Mapping::Data(off), entry))
    }

    fn read_backing(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let Some(b) = self.backing.as_mut() else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = b.size();
        let n = if offset >= bsize {
            0
        } else {
            (bsize - offset).min(buf.len() as u64) as usize
        };
        if n > 0 {
            b.read_at(&mut buf[..n], offset)?;
        }
        buf[n..].fill(0);
        Ok(())
    }

    // ----- refcounts (writable images only) -----

    fn refblock_offset(&self, t: u64) -> Result<Option<u64>, ImageError> {
        let rc = self.rc.as_ref().ok_or(ImageError::ReadOnly)?;
        let Some(&entry) = rc.table.get(t as usize) else {
            return Ok(None);
        };
        let off = entry & RT_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        self.check_host_cluster(off, "refcount block")?;
        Ok(Some(off))
    }

    fn ensure_rb(&mut self, off: u64) -> Result<(), ImageError> {
        let rc = self.rc.as_ref().ok_or(ImageError::ReadOnly)?;
        if rc.blocks.map.contains_key(&off) {
            return Ok(());
        }
        self.make_room_rb()?;
        let mut raw = vec![0u8; self.cluster_size as usize];
        let n = self
            .file
            .read_at(&mut raw, off)
            .map_err(ioe("reading refcount block"))?;
        if n != raw.len() {
            return Err(corrupt(format!("refcount block at {off:#x} is truncated")));
        }
        let block: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        if let Some(rc) = self.rc.as_mut() {
            rc.blocks.insert(off, block, false);
        }
        Ok(())
    }

    fn refcount(&mut self, cluster: u64) -> Result<u16, ImageError> {
        let per = self.rc.as_ref().ok_or(ImageError::ReadOnly)?.per_block;
        let Some(off) = self.refblock_offset(cluster / per)? else {
            return Ok(0);
        };
        self.ensure_rb(off)?;
        self.rc
            .as_mut()
            .and_then(|rc| rc.blocks.get(off))
            .and_then(|e| e.data.get((cluster % per) as usize).copied())
            .ok_or_else(|| corrupt("refcount block vanished from cache"))
    }

    fn set_refcount(&mut self, cluster: u64, value: u16) -> Result<(), ImageError> {
        let per = self.rc.as_ref().ok_or(ImageError::ReadOnly)?.per_block;
        let off = self
            .refblock_offset(cluster / per)?
            .ok_or_else(|| corrupt("refcount block missing"))?;
        self.ensure_rb(off)?;
        let e = self
            .rc
            .as_mut()
            .and_then(|rc| rc.blocks.get(off))
            .ok_or_else(|| corrupt("refcount block vanished from cache"))?;
        let slot = e
            .data
            .get_mut((cluster % per) as usize)
            .ok_or_else(|| corrupt("refcount index out of range"))?;
        *slot = value;
        e.dirty = true;
        Ok(())
    }

    /// Creates the refcount block for refcount-table slot `t` (none covers that range, so
    /// every cluster in it is free): the block goes in the first cluster of its own range.
    /// Returns the block's cluster index.
    fn new_refblock(&mut self, t: u64) -> Result<u64, ImageError> {
        let cs = self.cluster_size;
        let per = self.rc.as_ref().ok_or(ImageError::ReadOnly)?.per_block;
        let table_len = self.rc.as_ref().map_or(0, |rc| rc.table.len() as u64);
        if t >= table_len {
            return Err(ImageError::Unsupported(format!(
                "image needs more refcount blocks than its refcount table holds ({table_len}); \
                 growing the refcount table is not supported"
            )));
        }
        let blk = (t * per)
            .checked_mul(cs)
            .filter(|&o| o < MAX_HOST_OFFSET)
            .ok_or_else(|| ImageError::Unsupported("image file too large".into()))?;
        if self.overlaps_protected(blk, cs) {
            return Err(corrupt("refcount block would overlap image metadata"));
        }
        self.make_room_rb()?;
        let mut block = vec![0u16; per as usize];
        block[0] = 1;
        let rc = self.rc.as_mut().ok_or(ImageError::ReadOnly)?;
        rc.blocks.insert(blk, block, true);
        rc.table[t as usize] = blk;
        mark_dirty(&mut rc.table_dirty, t as usize);
        self.file_len = self.file_len.max(blk + cs);
        tracing::debug!(offset = blk, "allocated refcount block");
        Ok(t * per)
    }

    /// Allocates `n` contiguous host clusters at or after the end of the file (refcounts
    /// 0 → 1) and returns the offset of the first.
    fn alloc_contiguous(&mut self, n: u64) -> Result<u64, ImageError> {
        let cs = self.cluster_size;
        let per = self.rc.as_ref().ok_or(ImageError::ReadOnly)?.per_block;
        let mut start = div_ceil(self.file_len, cs);
        loop {
            let end = start
                .checked_add(n)
                .filter(|&e| e.checked_mul(cs).is_some_and(|o| o < MAX_HOST_OFFSET))
                .ok_or_else(|| ImageError::Unsupported("image file too large".into()))?;
            let mut retry_at = None;
            for c in start..end {
                if self.overlaps_protected(c * cs, cs) {
                    retry_at = Some(c + 1);
                    break;
                }
                if self.refblock_offset(c / per)?.is_none() {
                    let blk = self.new_refblock(c / per)?;
                    if (start..end).contains(&blk) {
                        retry_at = Some(blk + 1);
                        break;
                    }
                }
                if self.refcount(c)? != 0 {
                    retry_at = Some(c + 1);
                    break;
                }
            }
            if let Some(next) = retry_at {
                start = next;
                continue;
            }
            for c in start..end {
                self.set_refcount(c, 1)?;
            }
            self.file_len = self.file_len.max(end * cs);
            return Ok(start * cs);
        }
    }

    /// Grows the virtual disk to `new_size` bytes (never shrinks); the new range reads as
    /// zeros. The L1 table grows in place when its clusters have room, else a new one is
    /// written elsewhere. Crash-safe order: pending metadata is written back, the new L1
    /// table and its refcounts are written and synced, then one header write switches
    /// size, L1 size and L1 offset together, then the old L1 clusters are freed (a crash
    /// before that leaks them, nothing worse).
    pub fn grow(&mut self, new_size: u64) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        if new_size < self.size {
            return Err(ImageError::Unsupported(format!(
                "shrinking a disk ({} to {new_size} bytes)",
                self.size
            )));
        }
        if new_size == self.size {
            return Ok(());
        }
        let cs = self.cluster_size;
        let per_l1 = (cs / 8) * cs;
        let new_l1 = div_ceil(new_size, per_l1);
        if new_l1 * 8 > MAX_L1_BYTES || new_l1 > u64::from(u32::MAX) {
            return Err(ImageError::InvalidArgument(format!(
                "virtual size {new_size} is too large"
            )));
        }
        // Host clusters the larger disk may need must be coverable by the refcount table.
        let rc = self.rc.as_ref().ok_or(ImageError::ReadOnly)?;
        let need_host = div_ceil(new_size, cs) + new_l1 + div_ceil(self.file_len, cs);
        if div_ceil(need_host, rc.per_block) > rc.table.len() as u64 {
            return Err(ImageError::Unsupported(format!(
                "growing to {new_size} bytes needs a larger refcount table (not supported)"
            )));
        }
        self.write_back()?;
        self.file.sync().map_err(ioe("syncing before resize"))?;
        let old_len = self.l1.len() as u64;
        let old_clusters = div_ceil(old_len * 8, cs);
        let mut new_table = self.l1.clone();
        new_table.resize(new_l1 as usize, 0);
        let mut freed = None;
        let l1_offset = if new_l1 <= old_len {
            self.l1_offset
        } else if self.l1_offset != 0 && new_l1 * 8 <= old_clusters * cs {
            // Room in the L1 table's last cluster: zero the new entries first.
            let zeros = vec![0u8; ((new_l1 - old_len) * 8) as usize];
            self.file
                .write_at(&zeros, self.l1_offset + old_len * 8)
                .and_then(|()| self.file.sync())
                .map_err(ioe("extending L1 table"))?;
            self.l1_offset
        } else {
            let clusters = div_ceil(new_l1 * 8, cs);
            let off = self.alloc_contiguous(clusters)?;
            let mut raw = encode_u64s(&new_table);
            raw.resize((clusters * cs) as usize, 0);
            self.file
                .write_at(&raw, off)
                .map_err(ioe("writing new L1 table"))?;
            self.write_back()?;
            self.file.sync().map_err(ioe("syncing new L1 table"))?;
            if self.l1_offset != 0 && old_clusters > 0 {
                freed = Some((self.l1_offset, old_clusters));
            }
            off
        };
        let mut hdr = [0u8; 24];
        hdr[..8].copy_from_slice(&new_size.to_be_bytes());
        // Bytes 32..36: crypt_method, always 0 here (encrypted images are refused).
        hdr[12..16].copy_from_slice(&(new_l1.max(old_len) as u32).to_be_bytes());
        hdr[16..24].copy_from_slice(&l1_offset.to_be_bytes());
        self.file
            .write_at(&hdr, 24)
            .and_then(|()| self.file.sync())
            .map_err(ioe("writing resized header"))?;
        if new_l1 > old_len {
            self.l1 = new_table;
        }
        if l1_offset != self.l1_offset {
            let new_end = l1_offset + div_ceil(new_l1 * 8, cs) * cs;
            let old = self.l1_offset;
            self.protected.retain(|&(a, _)| a != old || a == 0);
            self.protected.push((l1_offset, new_end));
            self.l1_offset = l1_offset;
        } else if self.l1_offset != 0 {
            let off = self.l1_offset;
            let new_end = off + div_ceil(self.l1.len() as u64 * 8, cs) * cs;
            for r in self.protected.iter_mut().filter(|r| r.0 == off) {
                r.1 = r.1.max(new_end);
            }
        }
        self.size = new_size;
        if let Some((off, n)) = freed {
            for c in 0..n {
                self.set_refcount(off / cs + c, 0)?;
            }
            if let Some(rc) = self.rc.as_mut() {
                rc.free_hint = rc.free_hint.min(off / cs);
            }
            self.write_back()?;
            self.file.sync().map_err(ioe("freeing old L1 table"))?;
        }
        tracing::debug!(new_size, l1_entries = self.l1.len(), "grew qcow2 image");
        Ok(())
    }

    /// Allocates one host cluster (refcount 0 → 1) and returns its offset.
    fn alloc_cluster(&mut self) -> Result<u64, ImageError> {
        let cs = self.cluster_size;
        loop {
            let rc = self.rc.as_ref().ok_or(ImageError::ReadOnly)?;
            let idx = rc.free_hint;
            let per = rc.per_block;
            let table_len = rc.table.len() as u64;
            let eof_clusters = div_ceil(self.file_len, cs);
            let off = idx
                .checked_mul(cs)
                .filter(|&o| o < MAX_HOST_OFFSET)
                .ok_or_else(|| ImageError::Unsupported("image file too large".into()))?;
            let t = idx / per;
            if t >= table_len {
                return Err(ImageError::Unsupported(format!(
                    "image needs more refcount blocks than its refcount table holds ({table_len}); \
                     growing the refcount table is not supported"
                )));
            }
            if self.overlaps_protected(off, cs) {
                self.rc.as_mut().ok_or(ImageError::ReadOnly)?.free_hint += 1;
                continue;
            }
            if self.refblock_offset(t)?.is_none() {
                self.new_refblock(t)?;
                continue;
            }
            let count = self.refcount(idx)?;
            if count == 0 {
                self.set_refcount(idx, 1)?;
                let rc = self.rc.as_mut().ok_or(ImageError::ReadOnly)?;
                rc.free_hint = idx + 1;
                self.file_len = self.file_len.max(off + cs);
                return Ok(off);
            }
            if idx >= eof_clusters {
                return Err(corrupt(format!(
                    "refcount of cluster {idx} beyond end of file is {count}"
                )));
            }
            self.rc.as_mut().ok_or(ImageError::ReadOnly)?.free_hint += 1;
        }
    }

    /// Writes dirty metadata in crash-safe order (see the type's documentation).
    fn write_back(&mut self) -> Result<(), ImageError> {
        if self.read_only {
            return Ok(());
        }
        let file = &mut self.file;
        if let Some(rc) = self.rc.as_mut() {
            for key in rc.blocks.dirty_keys() {
                if let Some(e) = rc.blocks.map.get_mut(&key) {
                    let raw: Vec<u8> = e.data.iter().flat_map(|v| v.to_be_bytes()).collect();
                    file.write_at(&raw, key)
                        .map_err(ioe("writing refcount block"))?;
                    e.dirty = false;
                }
            }
            if let Some((a, b)) = rc.table_dirty {
                file.sync().map_err(ioe("syncing refcount blocks"))?;
                let raw = encode_u64s(&rc.table[a..b]);
                file.write_at(&raw, rc.table_offset + a as u64 * 8)
                    .map_err(ioe("writing refcount table"))?;
                rc.table_dirty = None;
            }
        }
        let l2_dirty = self.l2_cache.any_dirty();
        if l2_dirty || self.l1_dirty.is_some() {
            // Data clusters and refcounts must be durable before tables point at them.
            file.sync().map_err(ioe("syncing before L2 update"))?;
        }
        for key in self.l2_cache.dirty_keys() {
            if let Some(e) = self.l2_cache.map.get_mut(&key) {
                file.write_at(&encode_u64s(&e.data), key)
                    .map_err(ioe("writing L2 table"))?;
                e.dirty = false;
            }
        }
        if let Some((a, b)) = self.l1_dirty {
            if l2_dirty {
                file.sync().map_err(ioe("syncing L2 tables"))?;
            }
            let raw = encode_u64s(&self.l1[a..b]);
            file.write_at(&raw, self.l1_offset + a as u64 * 8)
                .map_err(ioe("writing L1 table"))?;
            self.l1_dirty = None;
        }
        Ok(())
    }

    /// Returns the L2 table for `l1i`, allocating it if needed, ready to be modified.
    fn l2_for_write(&mut self, l1i: usize) -> Result<u64, ImageError> {
        if let Some(off) = self.l2_offset(l1i)? {
            if self.l1[l1i] & OFLAG_COPIED == 0 {
                if self.refcount(off / self.cluster_size)? != 1 {
                    return Err(ImageError::Unsupported(
                        "writing through a shared L2 table (internal snapshot)".into(),
                    ));
                }
                self.l1[l1i] |= OFLAG_COPIED;
                mark_dirty(&mut self.l1_dirty, l1i);
            }
            self.ensure_l2(off)?;
            return Ok(off);
        }
        let off = self.alloc_cluster()?;
        self.make_room_l2()?;
        self.l2_cache
            .insert(off, vec![0u64; (self.cluster_size / 8) as usize], true);
        self.l1[l1i] = off | OFLAG_COPIED;
        mark_dirty(&mut self.l1_dirty, l1i);
        Ok(off)
    }

    /// Writes `data` at `in_off` inside guest cluster `gc`.
    fn write_cluster(&mut self, gc: u64, in_off: usize, data: &[u8]) -> Result<(), ImageError> {
        let cs = self.cluster_size;
        let (mapping, entry) = self.mapping(gc)?;
        match mapping {
            Mapping::Data(host) => {
                if entry & OFLAG_COPIED == 0 {
                    if self.refcount(host / cs)? != 1 {
                        return Err(ImageError::Unsupported(
                            "writing to a shared cluster (internal snapshot)".into(),
                        ));
                    }
                    let (l1i, l2i) = self.split(gc);
                    let l2off = self.l2_for_write(l1i)?;
                    self.set_l2_entry(l2off, l2i, entry | OFLAG_COPIED)?;
                }
                self.file
                    .write_at(data, host + in_off as u64)
                    .map_err(ioe("writing data cluster"))
            }
            Mapping::Compressed => Err(ImageError::Unsupported(
                "writing to a compressed cluster".into(),
            )),
            Mapping::Unallocated | Mapping::Zero => {
                let (l1i, l2i) = self.split(gc);
                let l2off = self.l2_for_write(l1i)?;
                let prealloc = entry & L2_OFFSET_MASK;
                let host = if mapping == Mapping::Zero && prealloc != 0 && entry & OFLAG_COPIED != 0
                {
                    // A zero cluster that keeps its allocation: reuse it.
                    self.check_host_cluster(prealloc, "preallocated zero cluster")?;
                    prealloc
                } else {
                    self.alloc_cluster()?
                };
                if data.len() as u64 == cs {
                    self.file
                        .write_at(data, host)
                        .map_err(ioe("writing data cluster"))?;
                } else {
                    let mut full = vec![0u8; cs as usize];
                    if mapping == Mapping::Unallocated {
                        self.read_backing(&mut full, gc * cs)?;
                    }
                    full[in_off..in_off + data.len()].copy_from_slice(data);
                    self.file
                        .write_at(&full, host)
                        .map_err(ioe("writing data cluster"))?;
                }
                self.set_l2_entry(l2off, l2i, host | OFLAG_COPIED)
            }
        }
    }

    /// Calls `f(guest_cluster, offset_in_cluster, range_start, len)` for each cluster piece.
    fn for_each_piece(
        &mut self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&mut Self, u64, usize, usize, usize) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        check_range(offset, len, self.size)?;
        let cs = self.cluster_size;
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let in_off = pos % cs;
            let n = (cs - in_off).min(len - done);
            f(
                self,
                pos >> self.cluster_bits,
                in_off as usize,
                done as usize,
                n as usize,
            )?;
            done += n;
        }
        Ok(())
    }
}

impl BlockBackend for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        let cs = self.cluster_size;
        self.for_each_piece(offset, buf.len() as u64, |img, gc, in_off, start, n| {
            let out = &mut buf[start..start + n];
            match img.mapping(gc)?.0 {
                Mapping::Unallocated => img.read_backing(out, gc * cs + in_off as u64),
                Mapping::Zero => {
                    out.fill(0);
                    Ok(())
                }
                Mapping::Data(host) => {
                    let got = img
                        .file
                        .read_at(out, host + in_off as u64)
                        .map_err(ioe("reading data cluster"))?;
                    // The last cluster of a file may be short: the rest reads as zeros.
                    out[got..].fill(0);
                    Ok(())
                }
                Mapping::Compressed => Err(ImageError::Unsupported(
                    "reading a compressed cluster".into(),
                )),
            }
        })
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        self.for_each_piece(offset, buf.len() as u64, |img, gc, in_off, start, n| {
            img.write_cluster(gc, in_off, &buf[start..start + n])
        })
    }

    fn flush(&mut self) -> Result<(), ImageError> {
        if self.read_only {
            return Ok(());
        }
        self.write_back()?;
        self.file.sync().map_err(ioe("flushing image"))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        // Clusters are never freed (keeps crash consistency simple): a no-op.
        check_range(offset, len, self.size)
    }

    fn resize(&mut self, new_size: u64) -> Result<(), ImageError> {
        self.grow(new_size)
    }

    fn host_extents(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Option<Vec<crate::HostExtent>>, ImageError> {
        self.extents(offset, len, write)
    }

    fn set_cache_mode(&mut self, cache: crate::CacheMode) -> Result<(), ImageError> {
        self.cache_mode(cache)
    }

    fn known_zero(&mut self, offset: u64, len: u64) -> Result<bool, ImageError> {
        let cs = self.cluster_size;
        let mut zero = true;
        self.for_each_piece(offset, len, |img, gc, in_off, _start, n| {
            if !zero {
                return Ok(());
            }
            zero = match img.mapping(gc)?.0 {
                Mapping::Zero => true,
                Mapping::Data(_) | Mapping::Compressed => false,
                Mapping::Unallocated => {
                    let pos = gc * cs + in_off as u64;
                    match img.backing.as_mut() {
                        None => true,
                        Some(b) => {
                            let bsize = b.size();
                            pos >= bsize || b.known_zero(pos, (n as u64).min(bsize - pos))?
                        }
                    }
                }
            };
            Ok(())
        })?;
        Ok(zero)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        if self.read_only {
            return Err(ImageError::ReadOnly);
        }
        let cs = self.cluster_size;
        let zeros = vec![0u8; cs as usize];
        self.for_each_piece(offset, len, |img, gc, in_off, _start, n| {
            let pos = gc * cs + in_off as u64;
            let bsize = img.backing.as_ref().map_or(0, |b| b.size());
            match img.mapping(gc)?.0 {
                // Already reads as zeros (zero clusters exist in v3 only).
                Mapping::Zero => Ok(()),
                // Nothing below it, or only the zeros past the backing file's end
                // (v2 too: no zero cluster needs writing there).
                Mapping::Unallocated if pos >= bsize => Ok(()),
                Mapping::Unallocated if n as u64 == cs && img.version >= 3 => {
                    let (l1i, l2i) = img.split(gc);
                    let l2off = img.l2_for_write(l1i)?;
                    img.set_l2_entry(l2off, l2i, OFLAG_ZERO)
                }
                _ => img.write_cluster(gc, in_off, &zeros[..n]),
            }
        })
    }
}

impl Drop for Qcow2Image {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        if let Err(e) = self
            .write_back()
            .and_then(|()| self.file.sync().map_err(ioe("syncing image")))
        {
            tracing::error!(error = %e, "failed to write back qcow2 metadata on close");
        }
    }
}

/// Resolves a backing file name relative to the directory of the image naming it.
fn resolve_backing(image_path: &Path, name: &Path) -> PathBuf {
    if name.is_absolute() {
        return name.to_path_buf();
    }
    match image_path.parent() {
        Some(dir) => dir.join(name),
        None => name.to_path_buf(),
    }
}

fn open_backing(
    path: &Path,
    format: Option<&[u8]>,
    depth: usize,
    chain: &mut Vec<(u64, u64)>,
) -> Result<Box<dyn BlockBackend>, ImageError> {
    if depth > MAX_BACKING_DEPTH {
        return Err(ImageError::BackingChainTooDeep(MAX_BACKING_DEPTH));
    }
    if path.as_os_str().as_bytes().contains(&b':') && path.to_string_lossy().starts_with("json:") {
        return Err(ImageError::Unsupported("json: backing file names".into()));
    }
    let format = match format {
        Some(b"raw") => ImageFormat::Raw,
        Some(b"qcow2") => ImageFormat::Qcow2,
        Some(other) => {
            return Err(ImageError::Unsupported(format!(
                "backing file format {:?}",
                String::from_utf8_lossy(other)
            )))
        }
        None => probe_format(path)?,
    };
    Ok(match format {
        ImageFormat::Raw => Box::new(crate::RawImage::open(path, true)?),
        ImageFormat::Qcow2 => Box::new(Qcow2Image::open_chain(path, true, depth, chain)?),
    })
}

/// A backing file from an open `file` (read-only), its format from the
/// header's extension or else its first bytes; its own backing from `rest`.
fn given_backing(
    file: std::fs::File,
    format: Option<&[u8]>,
    rest: &mut std::collections::VecDeque<std::fs::File>,
    depth: usize,
) -> Result<Box<dyn BlockBackend>, ImageError> {
    use std::os::unix::fs::FileExt;
    let format = match format {
        Some(b"raw") => ImageFormat::Raw,
        Some(b"qcow2") => ImageFormat::Qcow2,
        Some(other) => {
            return Err(ImageError::Unsupported(format!(
                "backing file format {:?}",
                String::from_utf8_lossy(other)
            )))
        }
        None => {
            let mut magic = [0u8; 4];
            match file.read_exact_at(&mut magic, 0) {
                Ok(()) if magic == MAGIC => ImageFormat::Qcow2,
                _ => ImageFormat::Raw,
            }
        }
    };
    Ok(match format {
        ImageFormat::Raw => Box::new(crate::RawImage::from_file(file, true)?),
        ImageFormat::Qcow2 => Box::new(Qcow2Image::open_storage(
            Box::new(file),
            true,
            BackingPolicy::Given { files: rest, depth },
        )?),
    })
}

/// Layout of a freshly created image (all offsets in clusters).
fn build_image(
    cb: u32,
    size: u64,
    backing: Option<(&[u8], ImageFormat)>,
) -> Result<Vec<u8>, ImageError> {
    let cs = 1u64 << cb;
    let per_l1 = (cs / 8) * cs;
    let l1_size = div_ceil(size, per_l1);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(ImageError::InvalidArgument(format!(
            "virtual size {size} is too large"
        )));
    }
    let l1_clusters = div_ceil(l1_size * 8, cs).max(1);
    let per_block = cs / 2;
    // Host clusters the file may ever use: data + L2 tables + metadata, with ample margin
    // for clusters leaked by crashes.
    let data_clusters = div_ceil(size, cs);
    let max_host = (data_clusters + l1_size + l1_clusters + 64) * 2;
    let rt_entries = div_ceil(max_host, per_block) + 2;
    let rt_clusters = div_ceil(rt_entries * 8, cs);
    let mut rb_count = 1u64;
    loop {
        let total = 1 + rt_clusters + rb_count + l1_clusters;
        let need = div_ceil(total, per_block);
        if need <= rb_count {
            break;
        }
        rb_count = need;
    }
    let rt_off = 1;
    let rb_off = rt_off + rt_clusters;
    let l1_off = rb_off + rb_count;
    let total = l1_off + l1_clusters;

    let mut img = vec![0u8; (total * cs) as usize];
    let put32 = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |b: &mut [u8], o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_be_bytes());
    img[..4].copy_from_slice(&MAGIC);
    put32(&mut img, 4, 3);
    put32(&mut img, 20, cb);
    put64(&mut img, 24, size);
    put32(&mut img, 36, l1_size as u32);
    put64(&mut img, 40, l1_off * cs);
    put64(&mut img, 48, rt_off * cs);
    put32(&mut img, 56, rt_clusters as u32);
    put32(&mut img, 96, 4); // refcount_order: 16-bit
    put32(&mut img, 100, OUR_HEADER_LEN as u32);
    // byte 104: compression type 0 (zlib); 105..112 padding.
    let mut pos = OUR_HEADER_LEN;
    if let Some((name, fmt)) = backing {
        let f = fmt.name().as_bytes();
        put32(&mut img, pos, EXT_BACKING_FORMAT);
        put32(&mut img, pos + 4, f.len() as u32);
        img[pos + 8..pos + 8 + f.len()].copy_from_slice(f);
        pos += 8 + f.len().div_ceil(8) * 8;
        pos += 8; // end-of-extensions marker (zeros)
        if name.is_empty() || name.len() > 1023 || pos + name.len() > cs as usize {
            return Err(ImageError::InvalidArgument(
                "backing file path must be 1..=1023 bytes".into(),
            ));
        }
        put64(&mut img, 8, pos as u64);
        put32(&mut img, 16, name.len() as u32);
        img[pos..pos + name.len()].copy_from_slice(name);
    }
    for i in 0..rb_count {
        put64(&mut img, (rt_off * cs + i * 8) as usize, (rb_off + i) * cs);
    }
    for c in 0..total {
        let at = (rb_off * cs + c * 2) as usize;
        img[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(img)
}

fn write_new_image(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ioe("creating image file"))?;
    std::io::Write::write_all(&mut file, bytes).map_err(ioe("writing new image"))?;
    file.sync_all().map_err(ioe("syncing new image"))?;
    Ok(())
}

/// Creates a new, empty qcow2 v3 image of `size` bytes (64 KiB clusters, 16-bit
/// refcounts, refcount table sized for the whole virtual size). Fails if `path` exists.
pub fn create_qcow2(path: &Path, size: u64) -> Result<(), ImageError> {
    let bytes = build_image(OUR_CLUSTER_BITS, size, None)?;
    write_new_image(path, &bytes)
}

/// Like [`create_qcow2`] with another cluster size (tests: small fuzz seeds).
#[cfg(test)]
pub(crate) fn create_qcow2_with_cluster_bits(
    path: &Path,
    size: u64,
    cluster_bits: u32,
) -> Result<(), ImageError> {
    write_new_image(path, &build_image(cluster_bits, size, None)?)
}

/// Creates a qcow2 v3 copy-on-write overlay at `path` on top of `backing`.
///
/// The virtual size is the backing image's; no data is copied (only ~256 KiB of metadata
/// is written), so this takes milliseconds. The backing path is stored canonicalized
/// (absolute) together with its format, so the backing file is never probed when the
/// overlay is opened. Fails if `path` exists.
pub fn create_qcow2_overlay(
    path: &Path,
    backing: &Path,
    backing_format: ImageFormat,
) -> Result<(), ImageError> {
    let abs = backing
        .canonicalize()
        .map_err(ioe("resolving backing file path"))?;
    let size = crate::open(&abs, backing_format, true)
        .map_err(|e| ImageError::Backing {
            path: abs.clone(),
            source: Box::new(e),
        })?
        .size();
    let bytes = build_image(
        OUR_CLUSTER_BITS,
        size,
        Some((abs.as_os_str().as_bytes(), backing_format)),
    )?;
    write_new_image(path, &bytes)
}

/// The backing file named in the header of the qcow2 image at `path`, resolved against
/// the image's directory, or `None`. Reads only the header: neither the backing file nor
/// the tables are opened (for walking chains cheaply, e.g. a volume driver's GC).
pub fn qcow2_backing_file(path: &Path) -> Result<Option<PathBuf>, ImageError> {
    let file = std::fs::File::open(path).map_err(ioe("opening qcow2 image"))?;
    let len = file
        .metadata()
        .map_err(ioe("reading image metadata"))?
        .len();
    let h = Header::parse(&file, len)?;
    Ok(h.backing_file.map(|name| resolve_backing(path, &name)))
}

/// Body of [`crate::fuzz_qcow2_open_read`].
pub(crate) fn fuzz_one(data: &[u8]) {
    let mem = |d: &[u8]| Box::new(MemStorage { data: d.to_vec() }) as Box<dyn Storage>;
    if let Ok(mut img) = Qcow2Image::open_storage(mem(data), true, BackingPolicy::Fake) {
        let size = img.size();
        let mut buf = vec![0u8; 8192];
        for off in [0, size / 2, size.saturating_sub(8192), 4095, 65535] {
            let len = (size.saturating_sub(off)).min(buf.len() as u64) as usize;
            let _ = img.read_at(&mut buf[..len], off);
        }
        let _ = img.write_at(&[1], 0);
        assert!(matches!(img.write_at(&[1], 0), Err(ImageError::ReadOnly)));
    }
    if let Ok(mut img) = Qcow2Image::open_storage(mem(data), false, BackingPolicy::Fake) {
        img.shrink_caches_for_fuzzing();
        let size = img.size();
        // Writes spread over more L2 tables (and refcount blocks) than the
        // shrunken caches hold: eviction writes dirty tables back.
        let cs = img.cluster_size;
        let per_l2 = (cs / 8) * cs;
        if size > 0 {
            for k in 0..12u64 {
                let off = k.wrapping_mul(per_l2).wrapping_add(k.wrapping_mul(cs) + k) % size;
                let len = size.saturating_sub(off).min(3) as usize;
                let _ = img.write_at(&[k as u8, 1, 2][..len], off);
            }
            for k in 0..12u64 {
                let off = k.wrapping_mul(per_l2).wrapping_add(k * cs) % size;
                let mut back = [0u8; 8];
                let len = size.saturating_sub(off).min(8) as usize;
                let _ = img.read_at(&mut back[..len], off);
            }
        }
        for off in [0, size / 3, size.saturating_sub(3)] {
            let len = size.saturating_sub(off).min(3) as usize;
            let _ = img.write_at(&[7, 8, 9][..len], off);
            let mut back = [0u8; 3];
            let _ = img.read_at(&mut back[..len], off);
        }
        let _ = img.write_zeroes(0, size.min(1 << 20));
        let _ = img.flush();
    }
}

/// Body of [`crate::fuzz_qcow2_extents`].
pub(crate) fn fuzz_extents(data: &[u8]) {
    // The first 8 bytes choose the ranges; the rest is the image.
    let (sel, image) = data.split_at(data.len().min(8));
    let mut sel = sel.to_vec();
    sel.resize(8, 0);
    let mem = |d: &[u8]| Box::new(MemStorage { data: d.to_vec() }) as Box<dyn Storage>;
    if let Ok(mut img) = Qcow2Image::open_storage(mem(image), true, BackingPolicy::Fake) {
        img.shrink_caches_for_fuzzing();
        check_extents(&mut img, &sel, false);
        assert!(matches!(
            img.host_pieces(0, 0, true),
            Err(ImageError::ReadOnly)
        ));
    }
    if let Ok(mut img) = Qcow2Image::open_storage(mem(image), false, BackingPolicy::Fake) {
        img.shrink_caches_for_fuzzing();
        let size = img.size();
        if size > 0 {
            let cs = img.cluster_size;
            for (i, &b) in sel.iter().enumerate() {
                let off = (u64::from(b) * cs + i as u64 * 7919 * cs) % size;
                let len = size.saturating_sub(off).min(cs + 5) as usize;
                let _ = img.write_at(&vec![b; len], off);
            }
        }
        // Nothing dirty is left, so reads below never write to the store.
        if img.flush().is_ok() {
            check_extents(&mut img, &sel, true);
        }
    }
}

/// Asserts the host-extent invariants on ranges chosen by `sel`: pieces
/// cover the range in order, lie inside the store (reads) or clear of the
/// header, L1 and refcount tables (writes), and reading a range through
/// its pieces gives what `read_at` gives.
fn check_extents(img: &mut Qcow2Image, sel: &[u8], writable: bool) {
    let size = img.size();
    if size == 0 {
        return;
    }
    let cs = img.cluster_size;
    for pair in sel.chunks(2) {
        let off = (u64::from(pair[0]) * cs / 3 + u64::from(pair[0]) * 977 * cs) % size;
        let len = (u64::from(pair[1]) * cs / 16 + 1)
            .min(size - off)
            .min(1 << 20);
        for write in [false, true] {
            if write && !writable {
                continue;
            }
            let Ok(Some(pieces)) = img.host_pieces(off, len, write) else {
                continue;
            };
            let mut at = off;
            for p in &pieces {
                assert_eq!(p.guest, at, "pieces out of order");
                at += p.len;
                match p.host {
                    Some(h) => {
                        let end = h.checked_add(p.len).expect("extent overflows");
                        if write {
                            assert!(!img.overlaps_protected(h, p.len), "extent over metadata");
                            assert!(end <= MAX_HOST_OFFSET);
                        } else {
                            let flen = img.file.len().unwrap_or(0);
                            assert!(end <= flen, "extent past end of file");
                        }
                    }
                    None => {
                        assert!(!write, "write extent in the backing file");
                        let bsize = img.backing.as_ref().map_or(0, |b| b.size());
                        assert!(p.guest + p.len <= bsize);
                    }
                }
            }
            assert_eq!(at, off + len, "pieces do not cover the range");
            if write {
                continue;
            }
            let mut want = vec![0u8; len as usize];
            img.read_at(&mut want, off)
                .expect("read_at fails where extents exist");
            for p in &pieces {
                let mut got = vec![0u8; p.len as usize];
                match p.host {
                    Some(h) => {
                        let n = img.file.read_at(&mut got, h).unwrap_or(0);
                        assert_eq!(n, got.len(), "short read through an extent");
                    }
                    None => {
                        if let Some(b) = img.backing.as_mut() {
                            b.read_at(&mut got, p.guest).expect("backing read");
                        }
                    }
                }
                let s = (p.guest - off) as usize;
                assert_eq!(
                    got,
                    want[s..s + got.len()],
                    "extent data differs from read_at"
                );
            }
        }
    }
}

/// Opens a qcow2 image from an arbitrary store (tests: crash simulation).
#[cfg(test)]
pub(crate) fn open_with_storage(
    file: Box<dyn Storage>,
    read_only: bool,
) -> Result<Qcow2Image, ImageError> {
    Qcow2Image::open_storage(file, read_only, BackingPolicy::Fake)
}
