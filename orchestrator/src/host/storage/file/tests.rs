use super::*;

const GIB: u64 = 1 << 30;

fn driver() -> (tempfile::TempDir, FileDriver) {
    let tmp = tempfile::tempdir().unwrap();
    let d = FileDriver::new(tmp.path().join("volumes")).unwrap();
    (tmp, d)
}

fn write(d: &FileDriver, id: &str, off: u64, data: &[u8]) {
    let t = d.target(id).unwrap();
    let mut img = images::open(&t.path, t.format, false).unwrap();
    img.write_at(data, off).unwrap();
    img.flush().unwrap();
}

fn read(d: &FileDriver, id: &str, off: u64, len: usize) -> Vec<u8> {
    let t = d.target(id).unwrap();
    let mut img = images::open(&t.path, t.format, true).unwrap();
    let mut b = vec![0u8; len];
    img.read_at(&mut b, off).unwrap();
    b
}

fn size(d: &FileDriver, id: &str) -> u64 {
    let t = d.target(id).unwrap();
    images::open(&t.path, t.format, true).unwrap().size()
}

fn names(d: &FileDriver) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn snap(volume: &str) -> VolumeSource {
    VolumeSource::Snapshot {
        snapshot_id: "s1".into(),
        volume_id: volume.into(),
    }
}

#[test]
fn empty_volume_is_sparse_and_reads_zeros() {
    let (_t, d) = driver();
    let started = std::time::Instant::now();
    let t = d.create("v1", GIB, &VolumeSource::Empty).unwrap();
    eprintln!("empty 1 GiB volume in {:?}", started.elapsed());
    assert_eq!(t.path, d.dir().join("volume-v1.qcow2"));
    assert_eq!(t.format, ImageFormat::Qcow2);
    assert!(t.backing.is_empty());
    assert!(fs::metadata(&t.path).unwrap().len() < 4 << 20);
    assert_eq!(size(&d, "v1"), GIB);
    assert!(read(&d, "v1", GIB - 4096, 4096).iter().all(|&b| b == 0));
    assert_eq!(d.target("v1").unwrap(), t);
    assert!(d.create("v1", GIB, &VolumeSource::Empty).is_err());
    assert!(matches!(d.target("nope"), Err(StorageError::NotFound(_))));
}

#[test]
fn bad_ids_and_sizes_are_refused() {
    let (_t, d) = driver();
    for id in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
        assert!(d.create(id, GIB, &VolumeSource::Empty).is_err(), "{id}");
        assert!(d.delete(id).is_err());
    }
    assert!(d.create("v", 0, &VolumeSource::Empty).is_err());
    assert_eq!(names(&d), Vec::<String>::new());
}

#[test]
fn volume_from_image_is_a_copy() {
    let (t, d) = driver();
    let img = t.path().join("image.qcow2");
    images::create_qcow2(&img, 64 << 20).unwrap();
    {
        let mut i = images::open(&img, ImageFormat::Qcow2, false).unwrap();
        i.write_at(b"boot sector", 0).unwrap();
        i.write_at(b"tail", (64 << 20) - 4).unwrap();
    }
    let src = VolumeSource::Image {
        path: img.clone(),
        format: ImageFormat::Qcow2,
    };
    let started = std::time::Instant::now();
    let tg = d.create("v1", GIB, &src).unwrap();
    eprintln!(
        "1 GiB volume from a 64 MiB image in {:?}",
        started.elapsed()
    );
    assert!(tg.backing.is_empty());
    fs::remove_file(&img).unwrap();
    assert_eq!(read(&d, "v1", 0, 11), b"boot sector");
    assert_eq!(read(&d, "v1", (64 << 20) - 4, 4), b"tail");
    assert_eq!(size(&d, "v1"), GIB);
    // A raw image too; a missing one or one larger than the volume fails cleanly.
    let raw = t.path().join("image.raw");
    fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    d.create(
        "v2",
        GIB,
        &VolumeSource::Image {
            path: raw,
            format: ImageFormat::Raw,
        },
    )
    .unwrap();
    assert_eq!(read(&d, "v2", 0, 4), vec![7u8; 4]);
    let before = names(&d);
    let big = t.path().join("big.qcow2");
    images::create_qcow2(&big, 2 * GIB).unwrap();
    for src in [
        VolumeSource::Image {
            path: big,
            format: ImageFormat::Qcow2,
        },
        VolumeSource::Image {
            path: t.path().join("missing"),
            format: ImageFormat::Raw,
        },
    ] {
        assert!(d.create("v3", GIB, &src).is_err());
        assert_eq!(names(&d), before, "a failed create left files");
    }
}

#[test]
fn snapshot_then_volume_from_it_sees_old_data() {
    let (_t, d) = driver();
    d.create("v1", GIB, &VolumeSource::Empty).unwrap();
    write(&d, "v1", 4096, b"old");
    d.create_snapshot("v1", "s1", false).unwrap();
    write(&d, "v1", 4096, b"new");
    let t = d.target("v1").unwrap();
    assert_eq!(t.backing, vec![d.dir().join("snapshot-s1.qcow2")]);
    assert_eq!(read(&d, "v1", 4096, 3), b"new");
    // From the snapshot, larger.
    let t2 = d.create("v2", 2 * GIB, &snap("v1")).unwrap();
    assert_eq!(t2.backing, vec![d.dir().join("snapshot-s1.qcow2")]);
    assert_eq!(read(&d, "v2", 4096, 3), b"old");
    assert_eq!(size(&d, "v2"), 2 * GIB);
    assert!(read(&d, "v2", 2 * GIB - 10, 10).iter().all(|&b| b == 0));
    // Smaller than the snapshot: refused, nothing left.
    let before = names(&d);
    assert!(d.create("v3", GIB / 2, &snap("v1")).is_err());
    assert_eq!(names(&d), before);
    // Unknown snapshot.
    assert!(matches!(
        d.create(
            "v3",
            GIB,
            &VolumeSource::Snapshot {
                snapshot_id: "zz".into(),
                volume_id: "v1".into()
            }
        ),
        Err(StorageError::NotFound(_))
    ));
    // Attached: refused with a reason.
    assert!(matches!(
        d.create_snapshot("v1", "s2", true),
        Err(StorageError::Unsupported(_))
    ));
    assert!(matches!(
        d.create_snapshot("nope", "s2", false),
        Err(StorageError::NotFound(_))
    ));
    assert!(d.create_snapshot("v1", "s1", false).is_err());
}

#[test]
fn snapshot_survives_its_volume_and_is_collected_last() {
    let (_t, d) = driver();
    d.create("v1", GIB, &VolumeSource::Empty).unwrap();
    write(&d, "v1", 0, b"one");
    d.create_snapshot("v1", "s1", false).unwrap();
    d.create("v2", GIB, &snap("v1")).unwrap();
    // Volume first: the snapshot keeps its data.
    d.delete("v1").unwrap();
    d.delete("v1").unwrap();
    assert!(d.snapshot_path("s1").exists());
    d.create("v3", GIB, &snap("v1")).unwrap();
    assert_eq!(read(&d, "v3", 0, 3), b"one");
    // Snapshot deleted while v2 and v3 still use it: tombstoned, file kept.
    d.delete_snapshot("v1", "s1").unwrap();
    assert!(d.snapshot_path("s1").exists());
    assert!(d.tombstone_path("s1").exists());
    assert_eq!(read(&d, "v2", 0, 3), b"one");
    d.delete("v2").unwrap();
    assert!(d.snapshot_path("s1").exists());
    d.delete("v3").unwrap();
    assert_eq!(names(&d), Vec::<String>::new());
    d.delete_snapshot("v1", "s1").unwrap();
}

#[test]
fn chains_of_snapshots_are_collected_bottom_up() {
    let (_t, d) = driver();
    d.create("v1", GIB, &VolumeSource::Empty).unwrap();
    write(&d, "v1", 0, b"a");
    d.create_snapshot("v1", "s1", false).unwrap();
    write(&d, "v1", 1, b"b");
    d.create_snapshot("v1", "s2", false).unwrap();
    let t = d.target("v1").unwrap();
    assert_eq!(
        t.backing,
        vec![d.snapshot_path("s2"), d.snapshot_path("s1")]
    );
    assert_eq!(read(&d, "v1", 0, 2), b"ab");
    // Deleting s1 keeps it (s2 backs onto it); deleting s2 keeps both (v1).
    d.delete_snapshot("v1", "s1").unwrap();
    assert!(d.snapshot_path("s1").exists());
    d.delete_snapshot("v1", "s2").unwrap();
    assert!(d.snapshot_path("s2").exists());
    assert_eq!(read(&d, "v1", 0, 2), b"ab");
    // The volume goes: the whole chain goes.
    d.delete("v1").unwrap();
    assert_eq!(names(&d), Vec::<String>::new());
}

#[test]
fn clone_is_independent_of_its_source() {
    let (_t, d) = driver();
    d.create("v1", GIB, &VolumeSource::Empty).unwrap();
    write(&d, "v1", 0, b"src");
    let t = d
        .create(
            "v2",
            2 * GIB,
            &VolumeSource::Volume {
                volume_id: "v1".into(),
            },
        )
        .unwrap();
    assert_eq!(t.backing, vec![d.snapshot_path("clone-v2")]);
    assert_eq!(d.target("v1").unwrap().backing, t.backing);
    write(&d, "v1", 0, b"SRC");
    write(&d, "v2", 0, b"dst");
    assert_eq!(read(&d, "v1", 0, 3), b"SRC");
    assert_eq!(read(&d, "v2", 0, 3), b"dst");
    assert_eq!(size(&d, "v2"), 2 * GIB);
    d.delete("v1").unwrap();
    assert!(d.snapshot_path("clone-v2").exists());
    d.delete("v2").unwrap();
    assert_eq!(names(&d), Vec::<String>::new());
    assert!(matches!(
        d.create(
            "v3",
            GIB,
            &VolumeSource::Volume {
                volume_id: "v1".into()
            }
        ),
        Err(StorageError::NotFound(_))
    ));
    assert_eq!(names(&d), Vec::<String>::new());
}

#[test]
fn extend_offline_and_attached() {
    let (_t, d) = driver();
    d.create("v1", GIB, &VolumeSource::Empty).unwrap();
    write(&d, "v1", GIB - 3, b"end");
    d.extend("v1", 3 * GIB, false).unwrap();
    assert_eq!(size(&d, "v1"), 3 * GIB);
    assert_eq!(read(&d, "v1", GIB - 3, 3), b"end");
    assert!(read(&d, "v1", 3 * GIB - 8, 8).iter().all(|&b| b == 0));
    // Attached: the VMM grows the file; the driver leaves it alone.
    d.extend("v1", 4 * GIB, true).unwrap();
    assert_eq!(size(&d, "v1"), 3 * GIB);
    assert!(d.extend("v1", GIB, false).is_err());
    assert!(matches!(
        d.extend("nope", GIB, false),
        Err(StorageError::NotFound(_))
    ));
}

#[test]
fn new_cleans_up_after_a_crash() {
    let (_t, d) = driver();
    d.create("v1", GIB, &VolumeSource::Empty).unwrap();
    write(&d, "v1", 0, b"keep");
    // A create that died before its rename, a snapshot that died after its link.
    fs::write(d.tmp_path("volume-v9.qcow2"), b"partial").unwrap();
    fs::hard_link(d.volume_path("v1"), d.snapshot_path("s1")).unwrap();
    let dir = d.dir().to_path_buf();
    drop(d);
    let d = FileDriver::new(dir).unwrap();
    assert_eq!(names(&d), vec!["volume-v1.qcow2".to_string()]);
    assert_eq!(read(&d, "v1", 0, 4), b"keep");
}

#[test]
fn capacity_is_the_filesystems() {
    let (_t, d) = driver();
    let c = d.capacity().unwrap();
    assert!(c.total_bytes > 0 && c.free_bytes <= c.total_bytes);
    assert_eq!(d.backend_name(), "file");
}

/// Timings for the README (issue #12's benchmarks): `cargo test --release -p
/// orchestrator --lib file::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: writes a 1 GiB image"]
fn bench_create_1gib_empty_and_from_image() {
    let (t, d) = driver();
    let img = t.path().join("full.raw");
    {
        let f = fs::File::create(&img).unwrap();
        f.set_len(GIB).unwrap();
        let mut i = images::open(&img, ImageFormat::Raw, false).unwrap();
        let chunk: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 253) as u8 | 1).collect();
        for n in 0..(GIB / chunk.len() as u64) {
            i.write_at(&chunk, n * chunk.len() as u64).unwrap();
        }
        i.flush().unwrap();
    }
    let t0 = std::time::Instant::now();
    d.create("empty", GIB, &VolumeSource::Empty).unwrap();
    eprintln!("BENCH file empty 1 GiB: {:?}", t0.elapsed());
    let src = VolumeSource::Image {
        path: img,
        format: ImageFormat::Raw,
    };
    let t0 = std::time::Instant::now();
    d.create("full", GIB, &src).unwrap();
    eprintln!("BENCH file from a full 1 GiB raw image: {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    d.create(
        "clone",
        GIB,
        &VolumeSource::Volume {
            volume_id: "full".into(),
        },
    )
    .unwrap();
    eprintln!("BENCH file clone of a 1 GiB volume: {:?}", t0.elapsed());
}
