//! Tests of host extents, `cache=none` and write-zeroes of qcow2 images.

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::*;
use crate::{BlockBackend, CacheMode, HostExtent};

/// A unique directory under `base`, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(base: &Path, tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = base.join(format!("nubo-extents-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CS: u64 = 1 << 16;

/// Reads what `extents` name, straight from their descriptors.
fn read_extents(extents: &[HostExtent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in extents {
        let mut buf = vec![0u8; e.len as usize];
        let n = nix_pread(e.fd, &mut buf, e.offset);
        assert_eq!(n, buf.len(), "short read through an extent");
        out.extend_from_slice(&buf);
    }
    out
}

fn nix_pread(fd: i32, buf: &mut [u8], off: u64) -> usize {
    // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is open for the test's duration.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as libc::off_t) };
    assert!(n >= 0, "pread: {}", std::io::Error::last_os_error());
    n as usize
}

fn fresh(dir: &Dir, name: &str, size: u64) -> (PathBuf, Qcow2Image) {
    let p = dir.path(name);
    create_qcow2(&p, size).unwrap();
    let img = Qcow2Image::open(&p, false).unwrap();
    (p, img)
}

fn base_dir() -> PathBuf {
    std::env::temp_dir()
}

#[test]
fn allocated_clusters_give_merged_extents_at_their_host_offsets() {
    let dir = Dir::new(&base_dir(), "alloc");
    let (_p, mut img) = fresh(&dir, "a.qcow2", 4 << 20);
    let data: Vec<u8> = (0..3 * CS).map(|i| (i % 253) as u8).collect();
    img.write_at(&data, CS).unwrap();
    let (m1, _) = img.mapping(1).unwrap();
    let Mapping::Data(h1) = m1 else {
        panic!("cluster 1 not allocated: {m1:?}")
    };
    let ext = img.host_extents(CS + 100, 2 * CS, false).unwrap().unwrap();
    // Fresh allocations are contiguous: one extent.
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(ext[0].offset, h1 + 100);
    assert_eq!(ext[0].len, 2 * CS);
    assert_eq!(read_extents(&ext), &data[100..100 + 2 * CS as usize]);
    let w = img.host_extents(CS, 3 * CS, true).unwrap().unwrap();
    assert_eq!(w.iter().map(|e| e.len).sum::<u64>(), 3 * CS);
    // Writing through the extent is seen by read_at.
    let fd = w[0].fd;
    // SAFETY: the buffer is valid; `fd` is the image's own, open descriptor.
    let n = unsafe { libc::pwrite(fd, [9u8; 4].as_ptr().cast(), 4, w[0].offset as i64) };
    assert_eq!(n, 4);
    let mut back = [0u8; 4];
    img.read_at(&mut back, CS).unwrap();
    assert_eq!(back, [9; 4]);
    // A range partly unallocated: None.
    assert_eq!(img.host_extents(0, 2 * CS, false).unwrap(), None);
    assert_eq!(img.host_extents(3 * CS, 2 * CS, true).unwrap(), None);
    // Out of range: an error.
    assert!(img.host_extents(4 << 20, 1, false).is_err());
    assert_eq!(img.host_extents(CS, 0, false).unwrap(), Some(vec![]));
}

#[test]
fn unallocated_compressed_zero_and_shared_clusters_give_none() {
    let dir = Dir::new(&base_dir(), "none");
    let base = dir.path("base.raw");
    std::fs::write(&base, vec![0xaa; 1 << 20]).unwrap();
    let ov = dir.path("ov.qcow2");
    create_qcow2_overlay(&ov, &base, crate::ImageFormat::Raw).unwrap();
    let mut img = Qcow2Image::open(&ov, false).unwrap();

    // Unallocated over a backing file: reads come from the backing file's own extents.
    let ext = img.host_extents(CS + 7, 100, false).unwrap().unwrap();
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].offset, CS + 7);
    assert_ne!(ext[0].fd, img.file.file().unwrap().as_raw_fd());
    assert_eq!(read_extents(&ext), vec![0xaa; 100]);
    assert_eq!(img.host_extents(CS, 100, true).unwrap(), None);
    // Past the backing file's end (zeros): None.
    img.grow(2 << 20).unwrap();
    assert_eq!(img.host_extents(1 << 20, 100, false).unwrap(), None);

    // Zero cluster.
    img.write_zeroes(2 * CS, CS).unwrap();
    assert_eq!(img.mapping(2).unwrap().0, Mapping::Zero);
    assert_eq!(img.host_extents(2 * CS, 10, false).unwrap(), None);
    assert_eq!(img.host_extents(2 * CS, 10, true).unwrap(), None);

    // Compressed cluster (flagged by hand).
    img.write_at(&[1; 16], 3 * CS).unwrap();
    let (l1i, l2i) = img.split(3);
    let l2off = img.l2_offset(l1i).unwrap().unwrap();
    let entry = img.l2_entry(l2off, l2i).unwrap();
    img.set_l2_entry(l2off, l2i, entry | OFLAG_COMPRESSED)
        .unwrap();
    assert_eq!(img.host_extents(3 * CS, 10, false).unwrap(), None);
    assert_eq!(img.host_extents(3 * CS, 10, true).unwrap(), None);
    img.set_l2_entry(l2off, l2i, entry).unwrap();

    // Shared cluster (refcount 2, COPIED clear): reads yes, writes no.
    img.write_at(&[2; 16], 4 * CS).unwrap();
    let (l1i, l2i) = img.split(4);
    let l2off = img.l2_offset(l1i).unwrap().unwrap();
    let entry = img.l2_entry(l2off, l2i).unwrap();
    let host = entry & L2_OFFSET_MASK;
    assert_eq!(
        img.host_extents(4 * CS, 10, true).unwrap().unwrap()[0].offset,
        host
    );
    img.set_l2_entry(l2off, l2i, host).unwrap();
    img.set_refcount(host / CS, 2).unwrap();
    assert_eq!(img.host_extents(4 * CS, 10, true).unwrap(), None);
    assert!(img.host_extents(4 * CS, 10, false).unwrap().is_some());
    // Refcount 1 without COPIED: writable in place, no metadata change.
    img.set_refcount(host / CS, 1).unwrap();
    assert!(img.host_extents(4 * CS, 10, true).unwrap().is_some());
    assert_eq!(img.l2_entry(l2off, l2i).unwrap(), host);
}

#[test]
fn read_only_images_refuse_write_extents() {
    let dir = Dir::new(&base_dir(), "ro");
    let (p, mut img) = fresh(&dir, "a.qcow2", 1 << 20);
    img.write_at(&[5; 512], 0).unwrap();
    drop(img);
    let mut ro = Qcow2Image::open(&p, true).unwrap();
    assert!(matches!(
        ro.host_extents(0, 512, true),
        Err(ImageError::ReadOnly)
    ));
    assert_eq!(
        read_extents(&ro.host_extents(0, 512, false).unwrap().unwrap()),
        vec![5; 512]
    );
}

/// Turns a fresh v3 image of ours into a v2 one (the v2 header ends at byte
/// 72, where our v3 fields are zeros: an end-of-extensions marker).
fn make_v2(p: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&2u32.to_be_bytes(), 4).unwrap();
}

#[test]
fn v2_write_zeroes_skips_unallocated_clusters_without_backing() {
    let dir = Dir::new(&base_dir(), "v2z");
    let p = dir.path("v2.qcow2");
    create_qcow2(&p, 4 << 20).unwrap();
    make_v2(&p);
    let before = std::fs::metadata(&p).unwrap().len();
    {
        let mut img = Qcow2Image::open(&p, false).unwrap();
        assert_eq!(img.version, 2);
        img.write_zeroes(0, 4 << 20).unwrap();
        img.write_zeroes(100, 1000).unwrap();
        let mut buf = vec![1u8; 1 << 20];
        img.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // Allocated data is still zeroed for real.
        img.write_at(&[7; 4096], CS).unwrap();
        img.write_zeroes(CS + 1000, 10).unwrap();
        let mut b = [1u8; 4096];
        img.read_at(&mut b, CS).unwrap();
        assert!(b[1000..1010].iter().all(|&x| x == 0));
        assert_eq!(b[999], 7);
        img.flush().unwrap();
    }
    let after = std::fs::metadata(&p).unwrap().len();
    // Only the one data cluster and its L2 table were allocated.
    assert!(after <= before + 2 * CS, "{before} -> {after}");
}

#[test]
fn v2_write_zeroes_over_a_backing_file_writes_zeros() {
    let dir = Dir::new(&base_dir(), "v2b");
    let base = dir.path("base.raw");
    std::fs::write(&base, vec![0xaa; 1 << 20]).unwrap();
    let ov = dir.path("ov.qcow2");
    create_qcow2_overlay(&ov, &base, crate::ImageFormat::Raw).unwrap();
    make_v2(&ov);
    let before = std::fs::metadata(&ov).unwrap().len();
    {
        let mut img = Qcow2Image::open(&ov, false).unwrap();
        assert_eq!(img.version, 2);
        img.write_zeroes(0, 2 * CS).unwrap();
        img.write_zeroes(3 * CS + 5, 10).unwrap();
        let mut buf = vec![1u8; 4 * CS as usize];
        img.read_at(&mut buf, 0).unwrap();
        assert!(buf[..2 * CS as usize].iter().all(|&b| b == 0));
        assert!(buf[2 * CS as usize..3 * CS as usize + 5]
            .iter()
            .all(|&b| b == 0xaa));
        assert!(buf[3 * CS as usize + 5..3 * CS as usize + 15]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(buf[3 * CS as usize + 15], 0xaa);
        // Past the backing file's end nothing is written.
        img.grow(4 << 20).unwrap();
        img.write_zeroes(2 << 20, 1 << 20).unwrap();
        img.flush().unwrap();
    }
    let after = std::fs::metadata(&ov).unwrap().len();
    assert!(
        after > before && after <= before + 5 * CS,
        "{before} -> {after}"
    );
}

fn fd_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFL only reads the flags of an open descriptor.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

#[test]
fn cache_none_gives_direct_extents_and_keeps_metadata_buffered() {
    let dir = Dir::new(&base_dir(), "direct");
    let base = dir.path("base.raw");
    std::fs::write(&base, vec![0xaa; 1 << 20]).unwrap();
    let ov = dir.path("ov.qcow2");
    create_qcow2_overlay(&ov, &base, crate::ImageFormat::Raw).unwrap();
    let mut img = Qcow2Image::open(&ov, false).unwrap();
    img.set_cache_mode(CacheMode::None).unwrap();
    let own = img.file.file().unwrap().as_raw_fd();
    assert_eq!(fd_flags(own) & libc::O_DIRECT, 0);
    let data: Vec<u8> = (0..CS).map(|i| (i % 249) as u8).collect();
    img.write_at(&data, 0).unwrap();
    let ext = img.host_extents(0, CS, false).unwrap().unwrap();
    assert_ne!(ext[0].fd, own);
    assert_ne!(fd_flags(ext[0].fd) & libc::O_DIRECT, 0);
    // The backing file's extents are direct too.
    let b = img.host_extents(CS, 4096, false).unwrap().unwrap();
    assert_ne!(fd_flags(b[0].fd) & libc::O_DIRECT, 0);
    // Direct, aligned reads through the extents see the buffered writes.
    let mut buf = crate::direct::AlignedBuf::new(CS as usize);
    let n = nix_pread(ext[0].fd, buf.as_mut_slice(), ext[0].offset);
    assert_eq!(n, CS as usize);
    assert_eq!(buf.as_mut_slice(), &data[..]);
    // Unaligned fallback reads of the backing file still work.
    let mut small = [0u8; 3];
    img.read_at(&mut small, CS + 1).unwrap();
    assert_eq!(small, [0xaa; 3]);
    img.set_cache_mode(CacheMode::Writeback).unwrap();
    let ext = img.host_extents(0, CS, false).unwrap().unwrap();
    assert_eq!(ext[0].fd, own);
}

#[test]
fn cache_none_on_qcow2_from_descriptors_is_unsupported() {
    let dir = Dir::new(&base_dir(), "fds");
    let (p, img) = fresh(&dir, "a.qcow2", 1 << 20);
    drop(img);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut img = Qcow2Image::open_files(vec![f], false).unwrap();
    let e = img.set_cache_mode(CacheMode::None).unwrap_err();
    assert!(e.to_string().contains("descriptors"), "{e}");
    img.set_cache_mode(CacheMode::Writeback).unwrap();
}

#[test]
fn cache_none_on_tmpfs_is_a_clear_error() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let dir = Dir::new(shm, "tmpfs");
    let (_p, mut img) = fresh(&dir, "a.qcow2", 1 << 20);
    match img.set_cache_mode(CacheMode::None) {
        // A kernel whose tmpfs accepts O_DIRECT (6.6+) is fine too.
        Ok(()) => {}
        Err(e) => assert!(e.to_string().contains("refuses O_DIRECT"), "{e}"),
    }
}
