//! Tests of the image library, cross-checked with `qemu-img`/`qemu-io` when installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::storage::Storage;
use crate::*;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!(
            "nubo-images-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a qemu tool; `None` (with a message) if it is not installed.
fn qemu(tool: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(tool).args(args).output() {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("SKIPPING {tool} cross-check: {e}");
            None
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `qemu-img check` exit code (0 clean, 3 leaks only, 2 corruption); `None` if no qemu-img.
fn qemu_check(p: &Path) -> Option<i32> {
    let o = qemu("qemu-img", &["check", "-f", "qcow2", s(p)])?;
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.code() != Some(0) {
        eprintln!("qemu-img check {}:\n{out}{err}", p.display());
    }
    o.status.code()
}

fn assert_check_clean(p: &Path) {
    if let Some(code) = qemu_check(p) {
        assert_eq!(code, 0, "qemu-img check of {} not clean", p.display());
    }
}

/// `qemu-img compare` of a qcow2 image against a raw file: asserts identical.
fn assert_compare(qcow2: &Path, raw: &Path) {
    if let Some(o) = qemu(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(qcow2), s(raw)],
    ) {
        assert!(
            o.status.success(),
            "qemu-img compare: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn have_qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok()
}

fn qemu_ok(tool: &str, args: &[&str]) {
    let o = Command::new(tool)
        .args(args)
        .output()
        .expect("run qemu tool");
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn read_all(img: &mut dyn BlockBackend) -> Vec<u8> {
    let mut v = vec![0u8; img.size() as usize];
    img.read_at(&mut v, 0).expect("read whole image");
    v
}

/// Writes at interesting offsets, mirroring into `model`.
fn write_patterns(img: &mut dyn BlockBackend, model: &mut [u8]) {
    let size = model.len() as u64;
    let writes: Vec<(u64, usize)> = vec![
        (0, 100),
        (65_535, 2),
        (100_000, 200_000),
        (5 << 20, 131_073),
        ((3 << 20) + 65_536, 65_536),
        (size - 1, 1),
        (size - 70_000, 5000),
    ];
    for (i, (off, len)) in writes.into_iter().enumerate() {
        let data = pattern(i as u64 + 1, len);
        img.write_at(&data, off).expect("write");
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
}

#[test]
fn qcow2_create_write_read_reopen() {
    let dir = TempDir::new("rw");
    let path = dir.path("disk.qcow2");
    let size = (20 << 20) + 3 * 4096;
    create_qcow2(&path, size).unwrap();
    assert_check_clean(&path);
    let mut model = vec![0u8; size as usize];
    {
        let mut img = open(&path, ImageFormat::Qcow2, false).unwrap();
        assert_eq!(img.size(), size);
        assert!(read_all(img.as_mut()).iter().all(|&b| b == 0));
        write_patterns(img.as_mut(), &mut model);
        assert!(read_all(img.as_mut()) == model);
        img.write_zeroes(4 << 20, 3 << 16).unwrap(); // full clusters, some never written
        img.write_zeroes(100_100, 10).unwrap(); // partial
        model[4 << 20..(4 << 20) + (3 << 16)].fill(0);
        model[100_100..100_110].fill(0);
        img.discard(0, 4096).unwrap(); // no-op
        img.flush().unwrap();
        assert!(read_all(img.as_mut()) == model);
    }
    let mut img = open(&path, ImageFormat::Qcow2, true).unwrap();
    assert!(read_all(img.as_mut()) == model);
    let raw = dir.path("expected.raw");
    std::fs::write(&raw, &model).unwrap();
    assert_check_clean(&path);
    assert_compare(&path, &raw);
    // Out-of-range requests are errors.
    let mut b = [0u8; 2];
    assert!(matches!(
        img.read_at(&mut b, size - 1),
        Err(ImageError::OutOfRange { .. })
    ));
}

#[test]
fn qcow2_without_flush_is_written_back_on_drop() {
    let dir = TempDir::new("drop");
    let path = dir.path("disk.qcow2");
    create_qcow2(&path, 8 << 20).unwrap();
    {
        let mut img = Qcow2Image::open(&path, false).unwrap();
        img.write_at(&[0xaa; 3000], 70_000).unwrap();
    }
    let mut img = Qcow2Image::open(&path, true).unwrap();
    let mut b = [0u8; 3000];
    img.read_at(&mut b, 70_000).unwrap();
    assert!(b.iter().all(|&x| x == 0xaa));
    assert_check_clean(&path);
}

fn overlay_test(base: &Path, base_fmt: ImageFormat, dir: &TempDir) {
    let base_before = std::fs::read(base).unwrap();
    let mut expected = {
        let mut b = open(base, base_fmt, true).unwrap();
        read_all(b.as_mut())
    };
    let ov = dir.path("overlay.qcow2");
    let t = std::time::Instant::now();
    create_qcow2_overlay(&ov, base, base_fmt).unwrap();
    eprintln!("create_qcow2_overlay took {:?}", t.elapsed());
    assert_check_clean(&ov);
    {
        let mut img = open(&ov, ImageFormat::Qcow2, false).unwrap();
        assert_eq!(img.size(), expected.len() as u64);
        assert!(
            read_all(img.as_mut()) == expected,
            "overlay reads fall through"
        );
        write_patterns(img.as_mut(), &mut expected);
        // Zero clusters over backing data, full and partial.
        img.write_zeroes(1 << 16, 2 << 16).unwrap();
        expected[1 << 16..3 << 16].fill(0);
        img.write_zeroes((6 << 20) + 5, 70_000).unwrap();
        expected[(6 << 20) + 5..(6 << 20) + 70_005].fill(0);
        assert!(read_all(img.as_mut()) == expected);
        img.flush().unwrap();
    }
    let mut img = open(&ov, ImageFormat::Qcow2, true).unwrap();
    assert!(read_all(img.as_mut()) == expected);
    assert!(
        std::fs::read(base).unwrap() == base_before,
        "base unchanged"
    );
    assert_check_clean(&ov);
    let raw = dir.path("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    assert_compare(&ov, &raw);
}

#[test]
fn overlay_on_raw_base() {
    let dir = TempDir::new("ovraw");
    let base = dir.path("base.raw");
    std::fs::write(&base, pattern(99, (8 << 20) + 512)).unwrap();
    overlay_test(&base, ImageFormat::Raw, &dir);
}

#[test]
fn overlay_on_qcow2_base_made_by_qemu() {
    let dir = TempDir::new("ovq");
    let base = dir.path("base.qcow2");
    if have_qemu_img() {
        qemu_ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&base), "8M"]);
        for cmd in [
            "write -P 0xab 0 64k",
            "write -P 0x11 100k 300k",
            "write -z 1M 64k",
        ] {
            qemu_ok("qemu-io", &["-f", "qcow2", "-c", cmd, s(&base)]);
        }
    } else {
        eprintln!("SKIPPING qemu-made base: using our own writer");
        create_qcow2(&base, 8 << 20).unwrap();
        let mut b = Qcow2Image::open(&base, false).unwrap();
        b.write_at(&pattern(5, 400_000), 0).unwrap();
    }
    overlay_test(&base, ImageFormat::Qcow2, &dir);
}

#[test]
fn overlay_of_overlay_and_relative_backing_name() {
    let dir = TempDir::new("chain");
    let base = dir.path("base.raw");
    std::fs::write(&base, pattern(1, 1 << 20)).unwrap();
    let mid = dir.path("mid.qcow2");
    create_qcow2_overlay(&mid, &base, ImageFormat::Raw).unwrap();
    {
        let mut m = Qcow2Image::open(&mid, false).unwrap();
        m.write_at(&[9; 10], 5).unwrap();
    }
    let top = dir.path("top.qcow2");
    create_qcow2_overlay(&top, &mid, ImageFormat::Qcow2).unwrap();
    let mut t = Qcow2Image::open(&top, true).unwrap();
    let mut b = [0u8; 20];
    t.read_at(&mut b, 0).unwrap();
    let mut want = pattern(1, 20);
    want[5..15].fill(9);
    assert_eq!(b.to_vec(), want);
    if have_qemu_img() {
        // Relative backing name without format: resolved from the image's directory, probed.
        let rel = dir.path("rel.qcow2");
        qemu_ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                "base.raw",
                "-F",
                "raw",
                s(&rel),
                "1M",
            ],
        );
        // Drop the backing-format extension (turn it into the end marker) to force probing.
        let mut bytes = std::fs::read(&rel).unwrap();
        let at = bytes[..4096]
            .windows(4)
            .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
            .expect("backing format extension");
        bytes[at..at + 4].fill(0);
        std::fs::write(&rel, &bytes).unwrap();
        let mut r = Qcow2Image::open(&rel, true).unwrap();
        r.read_at(&mut b, 0).unwrap();
        assert_eq!(b.to_vec(), pattern(1, 20));
    }
}

#[test]
fn reads_images_written_by_qemu_img() {
    if !have_qemu_img() {
        eprintln!("SKIPPING: qemu-img not installed");
        return;
    }
    let dir = TempDir::new("conv");
    let raw = dir.path("src.raw");
    let mut data = vec![0u8; 3 << 20];
    data[..200_000].copy_from_slice(&pattern(7, 200_000));
    data[(2 << 20) + 7..(2 << 20) + 7 + 300_000].copy_from_slice(&pattern(8, 300_000));
    std::fs::write(&raw, &data).unwrap();
    for opts in [
        "cluster_size=65536",
        "cluster_size=512",
        "cluster_size=2M",
        "compat=0.10",
    ] {
        let q = dir.path("conv.qcow2");
        let _ = std::fs::remove_file(&q);
        qemu_ok(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                opts,
                s(&raw),
                s(&q),
            ],
        );
        let mut img = Qcow2Image::open(&q, true).unwrap();
        assert!(read_all(&mut img) == data, "{opts}");
        drop(img);
        // Our writer on qemu's layout.
        let mut img = Qcow2Image::open(&q, false).unwrap();
        let mut model = data.clone();
        let p = pattern(9, 150_000);
        img.write_at(&p, 1_000_000).unwrap();
        model[1_000_000..1_150_000].copy_from_slice(&p);
        img.write_at(&p[..10], 5).unwrap();
        model[5..15].copy_from_slice(&p[..10]);
        img.flush().unwrap();
        drop(img);
        assert_check_clean(&q);
        let exp = dir.path("exp.raw");
        std::fs::write(&exp, &model).unwrap();
        assert_compare(&q, &exp);
    }
}

#[test]
fn writes_into_preallocated_zero_clusters() {
    if !have_qemu_img() {
        eprintln!("SKIPPING: qemu-img not installed");
        return;
    }
    let dir = TempDir::new("zalloc");
    let q = dir.path("z.qcow2");
    qemu_ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&q), "1M"]);
    // Allocated clusters turned into zero clusters that keep their host offset.
    qemu_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 9 0 192k",
            "-c",
            "write -z 0 128k",
            s(&q),
        ],
    );
    let mut img = Qcow2Image::open(&q, false).unwrap();
    let mut model = vec![0u8; 1 << 20];
    model[128 << 10..192 << 10].fill(9);
    assert!(read_all(&mut img) == model);
    img.write_at(&[4; 1000], 70_000).unwrap();
    model[70_000..71_000].fill(4);
    img.flush().unwrap();
    assert!(read_all(&mut img) == model);
    drop(img);
    assert_check_clean(&q); // the zero cluster's allocation was reused, nothing leaked
    let exp = dir.path("exp.raw");
    std::fs::write(&exp, &model).unwrap();
    assert_compare(&q, &exp);
}

#[test]
fn unsupported_qemu_features_are_clear_errors() {
    if !have_qemu_img() {
        eprintln!("SKIPPING: qemu-img not installed");
        return;
    }
    let dir = TempDir::new("unsup");
    let raw = dir.path("src.raw");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap(); // compressible
                                                       // Compressed clusters: open fine, reading them is Unsupported.
    let c = dir.path("c.qcow2");
    qemu_ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&raw), s(&c)],
    );
    let mut img = Qcow2Image::open(&c, true).unwrap();
    let mut b = [0u8; 16];
    assert!(matches!(
        img.read_at(&mut b, 0),
        Err(ImageError::Unsupported(_))
    ));
    // Extended L2 entries.
    let e = dir.path("e.qcow2");
    qemu_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            s(&e),
            "1M",
        ],
    );
    assert!(matches!(
        Qcow2Image::open(&e, true),
        Err(ImageError::Unsupported(_))
    ));
    // External data file.
    let x = dir.path("x.qcow2");
    let xd = dir.path("x.data");
    qemu_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", s(&xd)),
            s(&x),
            "1M",
        ],
    );
    assert!(matches!(
        Qcow2Image::open(&x, true),
        Err(ImageError::Unsupported(_))
    ));
    // Internal snapshot: read-only fine, writable refused.
    let snap = dir.path("snap.qcow2");
    create_qcow2(&snap, 1 << 20).unwrap();
    qemu_ok("qemu-img", &["snapshot", "-c", "s1", s(&snap)]);
    assert!(Qcow2Image::open(&snap, true).is_ok());
    assert!(matches!(
        Qcow2Image::open(&snap, false),
        Err(ImageError::Unsupported(_))
    ));
}

#[test]
fn read_only_open_refuses_writes() {
    let dir = TempDir::new("ro");
    let path = dir.path("d.qcow2");
    create_qcow2(&path, 1 << 20).unwrap();
    let mut img = open(&path, ImageFormat::Qcow2, true).unwrap();
    assert!(matches!(img.write_at(&[1], 0), Err(ImageError::ReadOnly)));
    assert!(matches!(
        img.write_zeroes(0, 512),
        Err(ImageError::ReadOnly)
    ));
    assert!(matches!(img.discard(0, 512), Err(ImageError::ReadOnly)));
    img.flush().unwrap();
    let rawp = dir.path("d.raw");
    std::fs::write(&rawp, [0u8; 4096]).unwrap();
    let mut r = open(&rawp, ImageFormat::Raw, true).unwrap();
    assert!(matches!(r.write_at(&[1], 0), Err(ImageError::ReadOnly)));
}

#[test]
fn raw_discard_and_write_zeroes_read_back_zeros() {
    let dir = TempDir::new("raw");
    let p = dir.path("d.raw");
    let data = pattern(4, 1 << 20);
    std::fs::write(&p, &data).unwrap();
    let mut r = open(&p, ImageFormat::Raw, false).unwrap();
    assert_eq!(r.size(), 1 << 20);
    assert!(read_all(r.as_mut()) == data);
    r.discard(4096, 65536).unwrap();
    r.write_zeroes(200_001, 12_345).unwrap();
    r.write_at(&[5; 3], (1 << 20) - 3).unwrap();
    r.flush().unwrap();
    let mut want = data.clone();
    want[4096..4096 + 65536].fill(0);
    want[200_001..212_346].fill(0);
    want[(1 << 20) - 3..].fill(5);
    assert!(read_all(r.as_mut()) == want);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
    let mut b = [0u8; 1];
    assert!(matches!(
        r.read_at(&mut b, 1 << 20),
        Err(ImageError::OutOfRange { .. })
    ));
}

#[test]
fn probe_format_detects_qcow2_and_raw() {
    let dir = TempDir::new("probe");
    let q = dir.path("a.qcow2");
    create_qcow2(&q, 1 << 20).unwrap();
    assert_eq!(probe_format(&q).unwrap(), ImageFormat::Qcow2);
    let r = dir.path("a.raw");
    std::fs::write(&r, [1u8; 3]).unwrap();
    assert_eq!(probe_format(&r).unwrap(), ImageFormat::Raw);
    let bad = dir.path("bad");
    std::fs::write(&bad, b"QFI\xfb\0\0\0\x09").unwrap();
    assert!(matches!(
        probe_format(&bad),
        Err(ImageError::Unsupported(_))
    ));
}

// ----- corrupt inputs -----

fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_be_bytes());
}
fn get64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// A valid small image with one allocated L2 table and data cluster.
fn valid_image(dir: &TempDir) -> Vec<u8> {
    let p = dir.path("valid.qcow2");
    create_qcow2(&p, 4 << 20).unwrap();
    {
        let mut img = Qcow2Image::open(&p, false).unwrap();
        img.write_at(&[0x5a; 1000], 70_000).unwrap();
        img.flush().unwrap();
    }
    std::fs::read(&p).unwrap()
}

fn open_bytes(
    dir: &TempDir,
    name: &str,
    bytes: &[u8],
    read_only: bool,
) -> Result<Qcow2Image, ImageError> {
    let p = dir.path(name);
    std::fs::write(&p, bytes).unwrap();
    Qcow2Image::open(&p, read_only)
}

fn read_err(r: Result<Qcow2Image, ImageError>) -> ImageError {
    match r {
        Err(e) => e,
        Ok(mut img) => {
            let mut b = vec![0u8; 4096];
            let off = 65536; // second cluster (allocated in valid_image)
            img.read_at(&mut b, off)
                .expect_err("read of corrupt mapping must fail")
        }
    }
}

#[test]
fn corrupt_images_give_clear_errors() {
    let dir = TempDir::new("corrupt");
    let good = valid_image(&dir);
    let l1_off = get64(&good, 40) as usize;
    let l2_off = get64(&good, l1_off) & L1MASK;
    let cs = 65536u64;
    let check = |name: &str, bytes: Vec<u8>, want: fn(&ImageError) -> bool| {
        let e = read_err(open_bytes(&dir, name, &bytes, true));
        eprintln!("{name}: {e}");
        assert!(want(&e), "{name}: unexpected error {e:?}");
    };
    let is_corrupt = |e: &ImageError| matches!(e, ImageError::Corrupt(_));
    let is_unsup = |e: &ImageError| matches!(e, ImageError::Unsupported(_));

    check("truncated", good[..50].to_vec(), is_corrupt);
    check("truncated-v3", good[..90].to_vec(), is_corrupt);
    check("empty", Vec::new(), is_corrupt);
    let mut b = good.clone();
    put32(&mut b, 20, 30);
    check("cluster-bits-30", b, is_corrupt);
    let mut b = good.clone();
    put32(&mut b, 20, 8);
    check("cluster-bits-8", b, is_corrupt);
    let mut b = good.clone();
    put32(&mut b, 36, u32::MAX);
    check("huge-l1", b, |e| {
        matches!(e, ImageError::Unsupported(_) | ImageError::Corrupt(_))
    });
    let mut b = good.clone();
    put32(&mut b, 36, 0);
    check("l1-too-small", b, is_corrupt);
    let mut b = good.clone();
    put64(&mut b, 40, 1 << 50);
    check("l1-offset-past-eof", b, is_corrupt);
    let mut b = good.clone();
    put64(&mut b, 40, 12345);
    check("l1-offset-unaligned", b, is_corrupt);
    let mut b = good.clone();
    put64(&mut b, 24, u64::MAX);
    check("size-huge", b, |e| {
        matches!(e, ImageError::Unsupported(_) | ImageError::Corrupt(_))
    });
    let mut b = good.clone();
    put64(&mut b, l1_off, (1 << 40) | (1 << 63));
    check("l1-entry-past-eof", b, is_corrupt);
    let mut b = good.clone();
    put64(&mut b, l1_off, l2_off + 512);
    check("l1-entry-unaligned", b, is_corrupt);
    let mut b = good.clone();
    put64(&mut b, l1_off, l1_off as u64);
    check("l1-entry-points-at-l1", b, is_corrupt);
    // L2 entry for guest cluster 1.
    let l2e = (l2_off + 8) as usize;
    let mut b = good.clone();
    put64(&mut b, l2e, (1 << 45) | (1 << 63));
    check("l2-entry-past-eof", b, is_corrupt);
    let mut b = good.clone();
    put64(&mut b, l2e, (get64(&good, l2e) & L1MASK) + 4096);
    check("l2-entry-unaligned", b, is_corrupt);
    let mut b = good.clone();
    put64(&mut b, l2e, 1 << 63); // offset 0 with COPIED: unallocated, reads zeros
    let mut img = open_bytes(&dir, "l2-entry-zero", &b, true).unwrap();
    let mut buf = [1u8; 16];
    img.read_at(&mut buf, 70_000).unwrap();
    assert_eq!(buf, [0; 16]);
    let mut b = good.clone();
    put64(&mut b, l2e, cs); // cluster 1 is the refcount table
    check("l2-entry-points-at-metadata", b, is_corrupt);
    let mut b = good.clone();
    put32(&mut b, 32, 1);
    check("encrypted", b, is_unsup);
    let mut b = good.clone();
    put64(&mut b, 72, 1 << 40);
    check("unknown-incompat", b, is_unsup);
    let mut b = good.clone();
    put32(&mut b, 4, 4);
    check("version-4", b, is_unsup);
    let mut b = good.clone();
    put32(&mut b, 100, 1 << 20);
    check("header-length-huge", b, is_corrupt);
    let mut b = good.clone();
    put32(&mut b, 112, 0x1234_5678);
    put32(&mut b, 116, u32::MAX);
    check("extension-too-long", b, is_corrupt);
    let mut b = good.clone();
    put64(&mut b, 8, 1 << 30);
    put32(&mut b, 16, 10);
    check("backing-name-outside", b, is_corrupt);

    // Refcount table garbage: read-only works (refcounts unused), writable open refuses.
    for (name, rt) in [
        ("rt-garbage", 0xdead_beef_u64),
        ("rt-past-eof", 1 << 40),
        ("rt-zero", 0),
    ] {
        let mut b = good.clone();
        put64(&mut b, 48, rt);
        assert!(open_bytes(&dir, name, &b, true).is_ok());
        let e = open_bytes(&dir, name, &b, false)
            .err()
            .expect("writable open must fail");
        eprintln!("{name} (writable): {e}");
        assert!(is_corrupt(&e));
    }
    // Refcount table entry pointing past EOF: write that needs allocation fails cleanly.
    let rt_off = get64(&good, 48) as usize;
    let mut b = good.clone();
    put64(&mut b, rt_off, 1 << 40);
    let mut img = open_bytes(&dir, "rb-past-eof", &b, false).unwrap();
    let e = img
        .write_at(&[1; 10], 3 << 20)
        .expect_err("alloc must fail");
    eprintln!("rb-past-eof: {e}");
    assert!(is_corrupt(&e));
    // Refcounts claiming every cluster (and beyond EOF) are in use.
    let rb_off = (get64(&good, rt_off) & L1MASK) as usize;
    let mut b = good.clone();
    for i in 0..(cs as usize / 2) {
        b[rb_off + 2 * i..rb_off + 2 * i + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    let mut img = open_bytes(&dir, "rb-full", &b, false).unwrap();
    let e = img
        .write_at(&[1; 10], 3 << 20)
        .expect_err("alloc must fail");
    eprintln!("rb-full: {e}");
    assert!(is_corrupt(&e));
    // Corrupt / dirty bits: read-only fine, writable refused.
    for bit in [1u64, 2] {
        let mut b = good.clone();
        put64(&mut b, 72, bit);
        assert!(open_bytes(&dir, "flag", &b, true).is_ok());
        assert!(open_bytes(&dir, "flag", &b, false).is_err());
    }
}

const L1MASK: u64 = 0x00ff_ffff_ffff_fe00;

#[test]
fn backing_chain_errors() {
    let dir = TempDir::new("backing");
    let base = dir.path("base.raw");
    std::fs::write(&base, [0u8; 65536]).unwrap();
    // Missing backing file.
    let ov = dir.path("ov.qcow2");
    create_qcow2_overlay(&ov, &base, ImageFormat::Raw).unwrap();
    std::fs::remove_file(&base).unwrap();
    let e = Qcow2Image::open(&ov, true).err().expect("missing backing");
    eprintln!("missing backing: {e}");
    assert!(matches!(e, ImageError::Backing { .. }));
    if !have_qemu_img() {
        eprintln!("SKIPPING loop/depth tests: qemu-img not installed");
        return;
    }
    // a -> b -> a
    let a = dir.path("a.qcow2");
    let b = dir.path("b.qcow2");
    qemu_ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&b), "1M"]);
    qemu_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            s(&b),
            "-F",
            "qcow2",
            s(&a),
            "1M",
        ],
    );
    qemu_ok(
        "qemu-img",
        &["rebase", "-u", "-b", s(&a), "-F", "qcow2", s(&b)],
    );
    let e = Qcow2Image::open(&a, true).err().expect("loop");
    eprintln!("loop: {e}");
    assert!(matches!(e, ImageError::BackingLoop(_)));
    // Self loop.
    let selfp = dir.path("self.qcow2");
    qemu_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "self.qcow2",
            "-F",
            "qcow2",
            s(&selfp),
            "1M",
        ],
    );
    assert!(matches!(
        Qcow2Image::open(&selfp, true),
        Err(ImageError::BackingLoop(_))
    ));
    // Too deep: 20 levels.
    let mut prev = dir.path("l0.qcow2");
    qemu_ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&prev), "1M"]);
    for i in 1..=20 {
        let next = dir.path(&format!("l{i}.qcow2"));
        qemu_ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                s(&prev),
                "-F",
                "qcow2",
                s(&next),
                "1M",
            ],
        );
        let r = Qcow2Image::open(&next, true);
        if i <= MAX_BACKING_DEPTH {
            assert!(r.is_ok(), "depth {i}: {:?}", r.err());
        } else {
            assert!(
                matches!(r, Err(ImageError::BackingChainTooDeep(_))),
                "depth {i}"
            );
        }
        prev = next;
    }
    // Unknown backing format.
    let vm = dir.path("vmdk.qcow2");
    qemu_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            s(&a),
            "-F",
            "vmdk",
            s(&vm),
            "1M",
        ],
    );
    let e = Qcow2Image::open(&vm, true).err().expect("vmdk");
    eprintln!("vmdk backing: {e}");
}

// ----- crash consistency -----

/// A file that "dies" after a budget of writes/syncs: every later operation fails, as if
/// the process had been killed at that point.
struct Dying {
    file: std::fs::File,
    budget: Arc<AtomicUsize>,
    used: Arc<AtomicUsize>,
}

impl Dying {
    fn spend(&self) -> std::io::Result<()> {
        let n = self.used.fetch_add(1, Ordering::SeqCst);
        if n >= self.budget.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("killed"));
        }
        Ok(())
    }
}

impl Storage for Dying {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if self.used.load(Ordering::SeqCst) > self.budget.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("killed"));
        }
        Storage::read_at(&self.file, buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.spend()?;
        Storage::write_at(&mut self.file, buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        Storage::len(&self.file)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.spend()?;
        Ok(()) // the page cache survives a process kill; skip the real fdatasync for speed
    }
}

/// Runs a workload of non-overlapping writes with periodic flushes on `path` with an
/// operation budget; returns (operations used, regions acknowledged by a successful flush).
fn crash_workload(path: &Path, budget: usize) -> (usize, Vec<(u64, Vec<u8>)>) {
    let used = Arc::new(AtomicUsize::new(0));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let dying = Dying {
        file,
        budget: Arc::new(AtomicUsize::new(budget)),
        used: used.clone(),
    };
    let mut durable = Vec::new();
    let mut pending = Vec::new();
    if let Ok(mut img) = qcow2::open_with_storage(Box::new(dying), false) {
        let size = img.size();
        for i in 0..24u64 {
            // Spread over several L2 tables / refcount blocks, unaligned lengths.
            let off = i * (size / 24) + (i % 3) * 333;
            let data = pattern(i + 100, 1000 + (i as usize * 4567) % 90_000);
            if img.write_at(&data, off).is_err() {
                break;
            }
            pending.push((off, data));
            if i % 5 == 4 {
                if img.flush().is_err() {
                    break;
                }
                durable.append(&mut pending);
            }
        }
        if img.flush().is_ok() {
            durable.append(&mut pending);
        }
        drop(img); // write-back on drop fails once the budget is spent
    }
    (used.load(Ordering::SeqCst), durable)
}

fn crash_test(template: &Path, dir: &TempDir) {
    let work = dir.path("work.qcow2");
    std::fs::copy(template, &work).unwrap();
    let (total, _) = crash_workload(&work, usize::MAX);
    assert_check_clean(&work);
    eprintln!(
        "{}: workload uses {total} storage operations",
        template.display()
    );
    let mut leaks_seen = 0;
    // Every crash point for small workloads, an even sample of ~120 otherwise.
    let step = (total / 120).max(1);
    let mut tested = 0;
    for budget in (0..=total).step_by(step).chain([total.saturating_sub(1)]) {
        tested += 1;
        std::fs::copy(template, &work).unwrap();
        let (_, durable) = crash_workload(&work, budget);
        if let Some(code) = qemu_check(&work) {
            assert!(
                code == 0 || code == 3,
                "budget {budget}: corruption (exit {code})"
            );
            if code == 3 {
                leaks_seen += 1;
            }
        }
        // Reopens, and everything acknowledged by flush is there.
        let mut img =
            Qcow2Image::open(&work, false).unwrap_or_else(|e| panic!("budget {budget}: {e}"));
        for (off, data) in &durable {
            let mut b = vec![0u8; data.len()];
            img.read_at(&mut b, *off).unwrap();
            assert!(&b == data, "budget {budget}: flushed data lost at {off}");
        }
        img.write_at(&[1; 100], 12345).unwrap();
        img.flush().unwrap();
        drop(img);
        if let Some(code) = qemu_check(&work) {
            assert!(
                code == 0 || code == 3,
                "budget {budget}: corruption after reuse"
            );
        }
    }
    eprintln!("{tested} crash points tested, {leaks_seen} left only leaked clusters");
}

#[test]
fn crash_consistency_own_image() {
    let dir = TempDir::new("crash");
    let t = dir.path("template.qcow2");
    create_qcow2(&t, 3 << 30).unwrap();
    crash_test(&t, &dir);
}

#[test]
fn crash_consistency_small_clusters_from_qemu() {
    if !have_qemu_img() {
        eprintln!("SKIPPING: qemu-img not installed");
        return;
    }
    let dir = TempDir::new("crash512");
    let t = dir.path("template.qcow2");
    // 512-byte clusters: many L2 tables and refcount blocks get allocated.
    qemu_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            s(&t),
            "4M",
        ],
    );
    crash_test(&t, &dir);
}

/// Kills a real child process (this test binary) while it writes, then checks the image.
#[test]
fn crash_consistency_sigkill() {
    if let Ok(p) = std::env::var("NUBO_IMAGES_CHILD_WRITER") {
        // Child mode: write forever with occasional flushes until killed.
        let mut img = Qcow2Image::open(Path::new(&p), false).unwrap();
        let size = img.size();
        let mut i = 0u64;
        loop {
            let off = (i * 1_234_567) % (size - 70_000);
            img.write_at(&pattern(i, 70_000), off).unwrap();
            if i % 7 == 0 {
                img.flush().unwrap();
            }
            if i == 20 {
                println!("ready");
            }
            i += 1;
        }
    }
    let dir = TempDir::new("sigkill");
    let p = dir.path("d.qcow2");
    let exe = std::env::current_exe().unwrap();
    for round in 0..3 {
        let _ = std::fs::remove_file(&p);
        create_qcow2(&p, 1 << 30).unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "tests::crash_consistency_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NUBO_IMAGES_CHILD_WRITER", &p)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150 + 100 * round));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        if let Some(code) = qemu_check(&p) {
            assert!(code == 0 || code == 3, "round {round}: corruption");
        }
        let mut img = Qcow2Image::open(&p, false).unwrap();
        img.write_at(&[1; 10], 0).unwrap();
        img.flush().unwrap();
    }
}

// ----- fuzz corpus and robustness -----

/// Small valid images used as the fuzz seed corpus (also committed under images/fuzz/corpus).
fn corpus_images(dir: &TempDir) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (name, cb, size) in [("c9", 9u32, 256 << 10), ("c12", 12, 2 << 20)] {
        let p = dir.path(name);
        qcow2::create_qcow2_with_cluster_bits(&p, size, cb).unwrap();
        out.push(std::fs::read(&p).unwrap());
        let mut img = Qcow2Image::open(&p, false).unwrap();
        img.write_at(&[0x5a; 700], 1000).unwrap();
        img.write_at(&[0xa5; 10], size - 10).unwrap();
        img.write_zeroes(0, 512).unwrap();
        drop(img);
        out.push(std::fs::read(&p).unwrap());
    }
    if have_qemu_img() {
        // A tiny overlay with a backing file name and format extension, written by qemu-img.
        std::fs::write(dir.path("base.img"), [0x42u8; 4096]).unwrap();
        let o = dir.path("ov");
        qemu_ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=512",
                "-u",
                "-b",
                "base.img",
                "-F",
                "raw",
                s(&o),
                "64K",
            ],
        );
        qemu_ok(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 3 1k 2k",
                "-c",
                "write -z 8k 1k",
                s(&o),
            ],
        );
        out.push(std::fs::read(&o).unwrap());
    }
    out
}

#[test]
fn fuzz_harness_survives_mutations() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let corpus_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/qcow2_open_read");
    if let Ok(rd) = std::fs::read_dir(&corpus_dir) {
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                seeds.push(b);
            }
        }
    }
    let dir = TempDir::new("fuzz");
    seeds.extend(corpus_images(&dir));
    let start = std::time::Instant::now();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut runs = 0;
    let with_selector = |sel: u64, d: &[u8]| {
        let mut e = sel.to_le_bytes().to_vec();
        e.extend_from_slice(d);
        e
    };
    for s in &seeds {
        fuzz_qcow2_open_read(s);
        for sel in [0, 0x0102_0304_0506_0708, u64::MAX] {
            fuzz_qcow2_extents(&with_selector(sel, s));
        }
    }
    while runs < 4000 && start.elapsed() < std::time::Duration::from_secs(8) {
        let mut d = seeds[(rnd() % seeds.len() as u64) as usize].clone();
        if d.is_empty() {
            continue;
        }
        for _ in 0..1 + rnd() % 8 {
            let r = rnd();
            let i = (r >> 8) as usize % d.len();
            match r % 6 {
                0 => d[i] = rnd() as u8,
                1 => d[i] ^= 1 << (rnd() % 8),
                2 if i + 8 <= d.len() => d[i..i + 8].copy_from_slice(&rnd().to_be_bytes()),
                // Hit header fields and table entries directly.
                3 if d.len() >= 112 => {
                    let f = [8usize, 16, 20, 24, 32, 36, 40, 48, 56, 60, 72, 96, 100]
                        [(r >> 40) as usize % 13];
                    let v =
                        [0u64, 1, 9, 21, 0xffff_ffff, u64::MAX, 1 << 16, 512][rnd() as usize % 8];
                    let w = if matches!(f, 8 | 24 | 40 | 48 | 72) {
                        8
                    } else {
                        4
                    };
                    d[f..f + w].copy_from_slice(&v.to_be_bytes()[8 - w..]);
                }
                4 => d.truncate(i.max(1)),
                _ => d[i] = d[i].wrapping_add(1),
            }
        }
        fuzz_qcow2_open_read(&d);
        fuzz_qcow2_extents(&with_selector(rnd(), &d));
        runs += 1;
    }
    eprintln!("fuzz: {runs} mutated inputs in {:?}", start.elapsed());
    assert!(runs >= 500, "too few fuzz iterations ({runs})");
}

/// Writes the seed corpus to images/fuzz/corpus (run manually with --ignored).
#[test]
#[ignore]
fn write_fuzz_corpus() {
    let dir = TempDir::new("corpus");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/qcow2_open_read");
    std::fs::create_dir_all(&out).unwrap();
    for (i, img) in corpus_images(&dir).into_iter().enumerate() {
        std::fs::write(out.join(format!("seed-{i}.qcow2")), img).unwrap();
    }
}

/// Rough throughput numbers (run with `--release --ignored --nocapture`).
#[test]
#[ignore]
fn bench_throughput() {
    let dir = TempDir::new("bench");
    let base = dir.path("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let ov = dir.path("ov.qcow2");
    let t = std::time::Instant::now();
    create_qcow2_overlay(&ov, &base, ImageFormat::Raw).unwrap();
    eprintln!("create_qcow2_overlay (1 GiB raw base): {:?}", t.elapsed());
    let mut img = open(&ov, ImageFormat::Qcow2, false).unwrap();
    let total = 256u64 << 20;
    for chunk in [4096usize, 131_072] {
        let buf = pattern(1, chunk);
        let base_off = if chunk == 4096 { 0 } else { 512 << 20 };
        let t = std::time::Instant::now();
        let mut off = 0;
        while off < total {
            img.write_at(&buf, base_off + off).unwrap();
            off += chunk as u64;
        }
        img.flush().unwrap();
        let w = t.elapsed();
        let mut rb = vec![0u8; chunk];
        let t = std::time::Instant::now();
        off = 0;
        while off < total {
            img.read_at(&mut rb, base_off + off).unwrap();
            off += chunk as u64;
        }
        let r = t.elapsed();
        let mib = (total >> 20) as f64;
        eprintln!(
            "{chunk}-byte requests, 256 MiB: write+flush {:.0} MiB/s, read {:.0} MiB/s",
            mib / w.as_secs_f64(),
            mib / r.as_secs_f64()
        );
    }
    drop(img);
    assert_check_clean(&ov);
}

#[test]
fn standalone_check_refuses_backing_files_without_opening_them() {
    let dir = TempDir::new("standalone");
    let base = dir.path("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let ov = dir.path("overlay.qcow2");
    create_qcow2_overlay(&ov, &base, ImageFormat::Raw).unwrap();
    // The backing file is gone: a library that opened it would fail with a backing
    // error; the standalone check refuses the image for naming it at all.
    std::fs::remove_file(&base).unwrap();
    let e = check_standalone_qcow2(&ov).unwrap_err();
    assert!(
        matches!(&e, ImageError::Unsupported(m) if m.contains("backing file")),
        "{e}"
    );
    let plain = dir.path("plain.qcow2");
    create_qcow2(&plain, 8 << 20).unwrap();
    assert_eq!(check_standalone_qcow2(&plain).unwrap(), 8 << 20);
    // Truncated after its metadata: a data cluster past the end is found.
    let mut img = Qcow2Image::open(&plain, false).unwrap();
    img.write_at(&[1u8; 4096], 4 << 20).unwrap();
    img.flush().unwrap();
    drop(img);
    let len = std::fs::metadata(&plain).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&plain)
        .unwrap();
    f.set_len(len - (64 << 10)).unwrap();
    let e = check_standalone_qcow2(&plain).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

/// An image opened over given files: the chain resolves to them in order,
/// without opening any path, and the count must match the chain.
#[test]
fn open_files_resolves_the_chain_to_given_files() {
    let dir = TempDir::new("files");
    let (base, mid, top) = (
        dir.path("base.raw"),
        dir.path("mid.qcow2"),
        dir.path("top.qcow2"),
    );
    std::fs::write(&base, vec![0x5au8; 1 << 20]).unwrap();
    create_qcow2_overlay(&mid, &base, ImageFormat::Raw).unwrap();
    create_qcow2_overlay(&top, &mid, ImageFormat::Qcow2).unwrap();
    let ro = |p: &Path| std::fs::File::open(p).unwrap();
    let rw = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    };

    let mut image = open_files(
        vec![rw(&top), ro(&mid), ro(&base)],
        ImageFormat::Qcow2,
        false,
    )
    .unwrap();
    let mut buf = [0u8; 512];
    image.read_at(&mut buf, 4096).unwrap();
    assert_eq!(buf, [0x5a; 512], "read through the chain");
    image.write_at(&[7u8; 512], 0).unwrap();
    image.flush().unwrap();
    drop(image);

    let short = open_files(vec![rw(&top), ro(&mid)], ImageFormat::Qcow2, false);
    let err = short
        .err()
        .expect("a missing backing descriptor")
        .to_string();
    assert!(err.contains("more descriptors"), "{err}");
    let long = open_files(
        vec![rw(&top), ro(&mid), ro(&base), ro(&base)],
        ImageFormat::Qcow2,
        false,
    );
    let err = long.err().expect("an extra descriptor").to_string();
    assert!(err.contains("4 descriptors"), "{err}");
    assert!(open_files(vec![], ImageFormat::Qcow2, true).is_err());

    let mut raw = open_files(vec![ro(&base)], ImageFormat::Raw, true).unwrap();
    assert_eq!(raw.size(), 1 << 20);
    raw.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0x5a; 512]);
    let two = open_files(vec![ro(&base), ro(&base)], ImageFormat::Raw, true);
    assert!(two.err().unwrap().to_string().contains("exactly one"));
}

mod resize;
