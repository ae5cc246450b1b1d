use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use md5::{Digest, Md5};
use sha2::Sha512;

use super::*;

const ID: &str = "0b5e2c7a-3f1d-4c8e-9a6b-2d4f6e8a0c1e";

fn body(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, Infallible>> + Unpin {
    stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn store(dir: &tempfile::TempDir, max: u64) -> ImageStore {
    ImageStore::new(dir.path().join("images"), max).unwrap()
}

async fn upload_bytes(
    store: &ImageStore,
    format: DiskFormat,
    data: &[u8],
) -> Result<StoredImage, StoreError> {
    // Several chunks, to exercise incremental hashing.
    let chunks = data.chunks(1000).map(|c| c.to_vec()).collect();
    store.upload(ID, format, body(chunks)).await
}

fn have_qemu_img() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A valid qcow2 image of 4 MiB with some data, made by qemu-img if present.
fn make_qcow2(dir: &Path) -> PathBuf {
    let p = dir.join("valid.qcow2");
    if have_qemu_img() {
        let raw = dir.join("src.raw");
        let mut data = vec![0u8; 4 << 20];
        data[..5].copy_from_slice(b"hello");
        data[3 << 20..(3 << 20) + 5].copy_from_slice(b"world");
        std::fs::write(&raw, &data).unwrap();
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
    } else {
        eprintln!("qemu-img not installed: making the qcow2 image with the images crate");
        images::create_qcow2(&p, 4 << 20).unwrap();
    }
    p
}

#[test]
fn disk_format_parses_and_displays() {
    for s in ALLOWED_DISK_FORMATS {
        let f: DiskFormat = s.parse().unwrap();
        assert_eq!(f.to_string(), *s);
    }
    let e = "vmdk".parse::<DiskFormat>().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("vmdk") && msg.contains("raw, qcow2, aki, ari"),
        "{msg}"
    );
    assert!("QCOW2".parse::<DiskFormat>().is_err());
}

#[test]
fn ids_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1 << 20);
    assert_eq!(s.path(ID).unwrap(), dir.path().join("images").join(ID));
    for bad in [
        "",
        "../../etc/passwd",
        "0B5E2C7A-3F1D-4C8E-9A6B-2D4F6E8A0C1E",
        "0b5e2c7a3f1d4c8e9a6b2d4f6e8a0c1e",
        "0b5e2c7a-3f1d-4c8e-9a6b-2d4f6e8a0c1e.part",
        "0b5e2c7a-3f1d-4c8e-9a6b/2d4f6e8a0c1",
        "0b5e2c7a-3f1d-4c8e-9a6b-2d4f6e8a0c1\u{e9}",
    ] {
        assert!(
            matches!(s.path(bad), Err(StoreError::InvalidId(_))),
            "{bad:?}"
        );
        assert!(s.remove(bad).is_err());
    }
}

#[test]
fn new_removes_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join(format!("{ID}.part")), b"partial").unwrap();
    std::fs::write(images.join(ID), b"kept").unwrap();
    let _s = ImageStore::new(images.clone(), 1 << 20).unwrap();
    assert_eq!(files_in(&images), vec![ID.to_string()]);
}

#[tokio::test]
async fn upload_hashes_and_stores() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1 << 20);
    let stored = s
        .upload(
            ID,
            DiskFormat::Raw,
            body(vec![b"he".to_vec(), vec![], b"llo".to_vec()]),
        )
        .await
        .unwrap();
    assert_eq!(stored.size, 5);
    assert_eq!(stored.md5, "5d41402abc4b2a76b9719d911017c592");
    assert_eq!(
        stored.sha512,
        "9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca7\
         2323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043"
    );
    assert_eq!(stored.virtual_size, Some(5));
    assert_eq!(stored.path, s.path(ID).unwrap());
    assert_eq!(std::fs::read(&stored.path).unwrap(), b"hello");
    assert_eq!(files_in(s.dir()), vec![ID.to_string()]);

    // A larger upload in many chunks: same hashes as the crates over the whole data.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let stored = upload_bytes(&s, DiskFormat::Raw, &data).await.unwrap();
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.md5, hex::encode(Md5::digest(&data)));
    assert_eq!(stored.sha512, hex::encode(Sha512::digest(&data)));
    assert_eq!(std::fs::read(&stored.path).unwrap(), data);

    // Download.
    let (mut f, len) = s.open_for_download(ID).await.unwrap();
    assert_eq!(len, data.len() as u64);
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut f, &mut back)
        .await
        .unwrap();
    assert_eq!(back, data);

    // Remove, twice.
    s.remove(ID).unwrap();
    s.remove(ID).unwrap();
    assert!(files_in(s.dir()).is_empty());
    assert!(matches!(
        s.open_for_download(ID).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn upload_exactly_at_the_limit_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 3000);
    let stored = upload_bytes(&s, DiskFormat::Raw, &[1u8; 3000])
        .await
        .unwrap();
    assert_eq!(stored.size, 3000);
}

#[tokio::test]
async fn too_large_upload_is_aborted_midway() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 2500);
    // The stream would go on forever: the limit must stop it.
    let chunks = stream::repeat_with(|| Ok::<_, Infallible>(Bytes::from(vec![1u8; 1000])));
    let e = s.upload(ID, DiskFormat::Raw, chunks).await.unwrap_err();
    assert!(matches!(e, StoreError::TooLarge { limit: 2500 }), "{e}");
    assert!(files_in(s.dir()).is_empty());
}

#[tokio::test]
async fn client_error_midway_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1 << 20);
    let chunks = stream::iter(vec![
        Ok(Bytes::from_static(b"some data")),
        Err("connection reset by peer"),
        Ok(Bytes::from_static(b"never read")),
    ]);
    let e = s.upload(ID, DiskFormat::Raw, chunks).await.unwrap_err();
    match e {
        StoreError::Client(m) => assert!(m.contains("connection reset"), "{m}"),
        other => panic!("expected a client error, got {other}"),
    }
    assert!(files_in(s.dir()).is_empty());
}

#[tokio::test]
async fn dropped_upload_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(store(&dir, 1 << 20));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    let chunks = Box::pin(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let task = {
        let s = s.clone();
        tokio::spawn(async move { s.upload(ID, DiskFormat::Raw, chunks).await })
    };
    tx.send(Ok(Bytes::from_static(b"first chunk")))
        .await
        .unwrap();
    let part = s.dir().join(format!("{ID}.part"));
    let mut waited = 0;
    while !(part.exists() && std::fs::metadata(&part).unwrap().len() > 0) {
        assert!(waited < 500, "the partial file never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    // A second upload of the same image meanwhile is refused.
    let e = s
        .upload(ID, DiskFormat::Raw, body(vec![b"x".to_vec()]))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::UploadInProgress(_)), "{e}");
    assert!(part.exists(), "the refused upload removed the other's file");

    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(files_in(s.dir()).is_empty());
    drop(tx);
}

#[tokio::test]
async fn empty_raw_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1 << 20);
    let e = s
        .upload(ID, DiskFormat::Raw, body(vec![]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::InvalidFormat { claimed: DiskFormat::Raw, reason } if reason.contains("empty")),
        "{e}"
    );
    assert!(files_in(s.dir()).is_empty());
}

#[tokio::test]
async fn raw_that_is_another_format_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1 << 20);
    let qcow2 = std::fs::read(make_qcow2(dir.path())).unwrap();
    let mut vdi = vec![0u8; 512];
    vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
    for (data, name) in [
        (qcow2, "qcow2"),
        (b"QFI\xfbgarbage".to_vec(), "qcow2"),
        (b"KDMV\x01\0\0\0".to_vec(), "VMDK"),
        (b"vhdxfile and more".to_vec(), "VHDX"),
        (vdi, "VDI"),
    ] {
        let e = upload_bytes(&s, DiskFormat::Raw, &data).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::InvalidFormat { claimed: DiskFormat::Raw, reason } if reason.contains(name)),
            "{name}: {e}"
        );
        assert!(files_in(s.dir()).is_empty());
    }
}

#[tokio::test]
async fn valid_qcow2_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 64 << 20);
    let data = std::fs::read(make_qcow2(dir.path())).unwrap();
    let stored = upload_bytes(&s, DiskFormat::Qcow2, &data).await.unwrap();
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.virtual_size, Some(4 << 20));
    assert_eq!(stored.sha512, hex::encode(Sha512::digest(&data)));
    // And the stored image opens and reads.
    let mut disk = images::open(&stored.path, images::ImageFormat::Qcow2, true).unwrap();
    let mut b = [0u8; 5];
    disk.read_at(&mut b, 0).unwrap();
    if have_qemu_img() {
        assert_eq!(&b, b"hello");
    }
    assert!(validate_format(&stored.path, DiskFormat::Qcow2).is_ok());
    // A qcow2 image is not a kernel or a ramdisk.
    assert!(validate_format(&stored.path, DiskFormat::Aki).is_err());
    assert!(validate_format(&stored.path, DiskFormat::Ari).is_err());
}

#[tokio::test]
async fn qcow2_with_backing_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 64 << 20);
    let base = make_qcow2(dir.path());
    let overlay = dir.path().join("overlay.qcow2");
    images::create_qcow2_overlay(&overlay, &base, images::ImageFormat::Qcow2).unwrap();
    let mut variants = vec![std::fs::read(&overlay).unwrap()];
    if have_qemu_img() {
        // A backing file that does not exist: must be refused before anything opens it.
        let q = dir.path().join("qemu-overlay.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "/nonexistent/host/file",
            "-F",
            "raw",
            q.to_str().unwrap(),
            "1M",
        ]);
        variants.push(std::fs::read(&q).unwrap());
    }
    for data in variants {
        let e = upload_bytes(&s, DiskFormat::Qcow2, &data)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::InvalidFormat { claimed: DiskFormat::Qcow2, reason } if reason.contains("backing file")),
            "{e}"
        );
        assert!(files_in(s.dir()).is_empty());
    }
}

#[tokio::test]
async fn corrupt_qcow2_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 64 << 20);
    let valid = std::fs::read(make_qcow2(dir.path())).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("magic only", b"QFI\xfb".to_vec()),
        ("truncated header", valid[..40].to_vec()),
        ("not qcow2 at all", b"hello".to_vec()),
    ];
    let mut garbage = b"QFI\xfb\0\0\0\x03".to_vec();
    garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    // No backing file in the garbage, so the image library's checks are exercised.
    garbage[8..20].fill(0);
    cases.push(("garbage header", garbage));
    let mut bad_l1 = valid.clone();
    bad_l1[40..48].copy_from_slice(&u64::MAX.to_be_bytes()); // l1_table_offset
    cases.push(("L1 table out of the file", bad_l1));
    let mut bad_cluster = valid.clone();
    bad_cluster[20..24].copy_from_slice(&40u32.to_be_bytes()); // cluster_bits
    cases.push(("cluster bits", bad_cluster));
    cases.push(("truncated image", valid[..valid.len() / 2].to_vec()));
    // Every single-byte corruption of the header must be handled (accepted or not).
    for at in (0..104).step_by(3) {
        let mut v = valid.clone();
        v[at] ^= 0xa5;
        let _ = validate_format_bytes(dir.path(), &v);
    }

    for (what, data) in cases {
        let e = upload_bytes(&s, DiskFormat::Qcow2, &data)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                StoreError::InvalidFormat {
                    claimed: DiskFormat::Qcow2,
                    ..
                }
            ),
            "{what}: {e}"
        );
        assert!(files_in(s.dir()).is_empty(), "{what}");
    }
}

#[tokio::test]
async fn truncated_and_compressed_qcow2_are_rejected() {
    if !have_qemu_img() {
        eprintln!("SKIPPING: qemu-img not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 64 << 20);
    // Truncated: the image library opens it (it checks data clusters only when read).
    let valid = std::fs::read(make_qcow2(dir.path())).unwrap();
    let cut = &valid[..valid.len() - (64 << 10)];
    let e = upload_bytes(&s, DiskFormat::Qcow2, cut).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::InvalidFormat { reason, .. } if reason.contains("truncated")),
        "{e}"
    );
    // Compressed clusters: valid qcow2, but the VMM cannot read them.
    let raw = dir.path().join("c.raw");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let c = dir.path().join("c.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        c.to_str().unwrap(),
    ]);
    let data = std::fs::read(&c).unwrap();
    let e = upload_bytes(&s, DiskFormat::Qcow2, &data)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::InvalidFormat { reason, .. } if reason.contains("compressed")),
        "{e}"
    );
    assert!(files_in(s.dir()).is_empty());
}

fn validate_format_bytes(dir: &Path, data: &[u8]) -> Result<(), String> {
    let p = dir.join("probe.bin");
    std::fs::write(&p, data).unwrap();
    validate_format(&p, DiskFormat::Qcow2)
}

#[tokio::test]
async fn kernel_and_ramdisk_magics() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1 << 20);

    let mut bzimage = vec![0u8; 4096];
    bzimage[510] = 0x55;
    bzimage[511] = 0xaa;
    bzimage[0x202..0x206].copy_from_slice(b"HdrS");
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(256, 0);
    for k in [&bzimage, &elf] {
        upload_bytes(&s, DiskFormat::Aki, k).await.unwrap();
        s.remove(ID).unwrap();
    }
    let mut no_hdrs = bzimage.clone();
    no_hdrs[0x202] = b'X';
    let mut no_sig = bzimage.clone();
    no_sig[510] = 0;
    for bad in [
        no_hdrs,
        no_sig,
        bzimage[..300].to_vec(),
        b"\x1f\x8b\x08\0".to_vec(),
    ] {
        let e = upload_bytes(&s, DiskFormat::Aki, &bad).await.unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidFormat {
                    claimed: DiskFormat::Aki,
                    ..
                }
            ),
            "{e}"
        );
        assert!(files_in(s.dir()).is_empty());
    }

    let ramdisks: [&[u8]; 9] = [
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
        b"07070100000001",
        b"07070200000001",
        b"\x02\x21\x4c\x18\x00",
        b"\x04\x22\x4d\x18\x64",
        b"\xfd7zXZ\x00\x00\x04",
        b"\x28\xb5\x2f\xfd\x00",
        b"BZh91AY&SY",
        b"070701",
    ];
    for r in ramdisks {
        upload_bytes(&s, DiskFormat::Ari, r).await.unwrap();
        s.remove(ID).unwrap();
    }
    for bad in [&b"070707"[..], b"\x7fELF", b"\x1f", b"hello", &bzimage] {
        let e = upload_bytes(&s, DiskFormat::Ari, bad).await.unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::InvalidFormat {
                    claimed: DiskFormat::Ari,
                    ..
                }
            ),
            "{e}"
        );
    }
    assert!(files_in(s.dir()).is_empty());
}

/// Unmounts a tmpfs when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn full_file_system_is_no_space_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "nubo-test",
            mnt.to_str().unwrap(),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPING: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIPPING: cannot run mount: {e}");
            return;
        }
    }
    let _mount = Mount(mnt.clone());
    let s = ImageStore::new(mnt.join("images"), 64 << 20).unwrap();
    let chunks = (0..40).map(|_| vec![0x42u8; 64 << 10]).collect();
    let e = s
        .upload(ID, DiskFormat::Raw, body(chunks))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NoSpace), "{e}");
    assert!(files_in(s.dir()).is_empty());
    // The space is free again: a small upload succeeds.
    upload_bytes(&s, DiskFormat::Raw, &[7u8; 100_000])
        .await
        .unwrap();
}
