use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;

const GIB: u64 = 1 << 30;
const VGS: &str = "vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free nubo-vg";
const LVS: &str = "lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,lv_attr,pool_lv,data_percent nubo-vg";

type Script = Arc<Mutex<VecDeque<(String, Result<String, CmdError>)>>>;

/// Answers each command from a script, checking its exact argv.
struct Scripted(Script);

impl Runner for Scripted {
    fn run(&self, argv: &[String]) -> Result<String, CmdError> {
        let (want, answer) = self
            .0
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected command: {}", argv.join(" ")));
        assert_eq!(argv.join(" "), want);
        answer
    }
}

fn ok(s: &str) -> Result<String, CmdError> {
    Ok(s.to_string())
}

fn fail(stderr: &str) -> Result<String, CmdError> {
    Err(CmdError {
        code: Some(5),
        stderr: stderr.into(),
    })
}

fn vgs() -> Result<String, CmdError> {
    ok(r#"{"report":[{"vg":[{"vg_name":"nubo-vg","vg_size":"4290772992","vg_free":"0"}]}]}"#)
}

/// An lvs report with the pool and `lvs` (name, size, attr).
fn lvs(extra: &[(&str, u64, &str)]) -> Result<String, CmdError> {
    let mut rows = vec![
        r#"{"lv_name":"pool","lv_size":"4000000000","lv_attr":"twi-aotz--","pool_lv":"","data_percent":"25.00"}"#.to_string(),
    ];
    for (n, s, a) in extra {
        rows.push(format!(
            r#"{{"lv_name":"{n}","lv_size":"{s}","lv_attr":"{a}","pool_lv":"pool","data_percent":"0.00"}}"#
        ));
    }
    ok(&format!(r#"{{"report":[{{"lv":[{}]}}]}}"#, rows.join(",")))
}

const ACTIVE: &str = "Vwi-a-tz--";

/// A driver made against `script` (construction's commands included), and the script.
fn driver(after_new: Vec<(&str, Result<String, CmdError>)>) -> (LvmDriver, Script) {
    let mut steps = vec![(VGS.to_string(), vgs()), (LVS.to_string(), lvs(&[]))];
    steps.extend(after_new.into_iter().map(|(a, r)| (a.to_string(), r)));
    let script: Script = Arc::new(Mutex::new(steps.into()));
    let d = LvmDriver::with_runner("nubo-vg", "pool", Box::new(Scripted(script.clone()))).unwrap();
    (d, script)
}

fn done(script: &Script) {
    let left = script.lock().unwrap();
    assert!(left.is_empty(), "commands not run: {left:?}");
}

#[test]
fn new_checks_the_vg_and_makes_a_missing_pool() {
    let script: Script = Arc::new(Mutex::new(
        vec![
            (VGS.to_string(), vgs()),
            (LVS.to_string(), ok(r#"{"report":[{"lv":[]}]}"#)),
            ("lvcreate -T -l 95%FREE nubo-vg/pool".to_string(), ok("")),
        ]
        .into(),
    ));
    LvmDriver::with_runner("nubo-vg", "pool", Box::new(Scripted(script.clone()))).unwrap();
    done(&script);
    // A missing VG.
    let script: Script = Arc::new(Mutex::new(
        vec![(
            VGS.to_string(),
            fail("  Volume group \"nubo-vg\" not found"),
        )]
        .into(),
    ));
    let e = LvmDriver::with_runner("nubo-vg", "pool", Box::new(Scripted(script)))
        .err()
        .unwrap();
    assert!(e.to_string().contains("not found"), "{e}");
    // Names that would be options or paths.
    for bad in ["-x", "a/b", ""] {
        assert!(LvmDriver::with_runner(bad, "pool", Box::new(Scripted(Arc::default()))).is_err());
    }
}

#[test]
fn create_empty_and_target() {
    let (d, s) = driver(vec![
        (LVS, lvs(&[])),
        (
            "lvcreate -T nubo-vg/pool -V 1073741824b -n volume-v1",
            ok(""),
        ),
    ]);
    let t = d.create("v1", GIB, &VolumeSource::Empty).unwrap();
    assert_eq!(t.path, PathBuf::from("/dev/nubo-vg/volume-v1"));
    assert_eq!(t.format, ImageFormat::Raw);
    assert!(t.backing.is_empty());
    done(&s);
}

#[test]
fn target_activates_an_inactive_lv() {
    let (d, s) = driver(vec![
        (LVS, lvs(&[("volume-v1", GIB, "Vwi---tz--")])),
        ("lvchange -ay -K nubo-vg/volume-v1", ok("")),
        (LVS, lvs(&[])),
    ]);
    d.target("v1").unwrap();
    assert!(matches!(d.target("v1"), Err(StorageError::NotFound(_))));
    done(&s);
}

#[test]
fn failed_create_removes_the_lv_and_no_space_is_reported() {
    let (d, s) = driver(vec![
        (LVS, lvs(&[])),
        (
            "lvcreate -T nubo-vg/pool -V 1073741824b -n volume-v1",
            fail("  Insufficient free space: 1 extents needed"),
        ),
        (LVS, lvs(&[])),
    ]);
    assert!(matches!(
        d.create("v1", GIB, &VolumeSource::Empty),
        Err(StorageError::NoSpace(_))
    ));
    done(&s);
    // From an image that cannot be opened: the LV is never made (the
    // clean-up finds nothing to remove).
    let (d, s) = driver(vec![(LVS, lvs(&[])), (LVS, lvs(&[]))]);
    let e = d
        .create(
            "v1",
            GIB,
            &VolumeSource::Image {
                path: "/nonexistent/image".into(),
                format: ImageFormat::Raw,
            },
        )
        .unwrap_err();
    assert!(matches!(e, StorageError::Failed { .. }), "{e}");
    done(&s);
    // From a snapshot, failing after the LV exists: removed again.
    let (d, s) = driver(vec![
        (LVS, lvs(&[])),
        (LVS, lvs(&[("_snapshot-s1", GIB, ACTIVE)])),
        ("lvcreate -s -kn -n volume-v2 nubo-vg/_snapshot-s1", ok("")),
        (
            LVS,
            lvs(&[("_snapshot-s1", GIB, ACTIVE), ("volume-v2", GIB, ACTIVE)]),
        ),
        (
            "lvextend -L 2147483648b nubo-vg/volume-v2",
            fail("  some error"),
        ),
        (
            LVS,
            lvs(&[("_snapshot-s1", GIB, ACTIVE), ("volume-v2", GIB, ACTIVE)]),
        ),
        ("lvremove -f nubo-vg/volume-v2", ok("")),
    ]);
    let e = d
        .create(
            "v2",
            2 * GIB,
            &VolumeSource::Snapshot {
                snapshot_id: "s1".into(),
                volume_id: "v1".into(),
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("some error"), "{e}");
    done(&s);
}

#[test]
fn snapshots_and_clones_are_thin_snapshots() {
    let (d, s) = driver(vec![
        (LVS, lvs(&[("volume-v1", GIB, ACTIVE)])),
        ("lvcreate -s -kn -n _snapshot-s1 nubo-vg/volume-v1", ok("")),
        // Clone, same size.
        (LVS, lvs(&[("volume-v1", GIB, ACTIVE)])),
        (LVS, lvs(&[("volume-v1", GIB, ACTIVE)])),
        ("lvcreate -s -kn -n volume-v2 nubo-vg/volume-v1", ok("")),
        (
            LVS,
            lvs(&[("volume-v1", GIB, ACTIVE), ("volume-v2", GIB, ACTIVE)]),
        ),
        // From the snapshot, larger.
        (LVS, lvs(&[])),
        (LVS, lvs(&[("_snapshot-s1", GIB, ACTIVE)])),
        ("lvcreate -s -kn -n volume-v3 nubo-vg/_snapshot-s1", ok("")),
        (LVS, lvs(&[("volume-v3", GIB, ACTIVE)])),
        ("lvextend -L 3221225472b nubo-vg/volume-v3", ok("")),
        // Smaller than the snapshot: refused before anything is made.
        (LVS, lvs(&[])),
        (LVS, lvs(&[("_snapshot-s1", GIB, ACTIVE)])),
        (LVS, lvs(&[])),
        // Snapshot of a missing volume.
        (LVS, lvs(&[])),
    ]);
    d.create_snapshot("v1", "s1", true).unwrap();
    d.create(
        "v2",
        GIB,
        &VolumeSource::Volume {
            volume_id: "v1".into(),
        },
    )
    .unwrap();
    let from_snap = VolumeSource::Snapshot {
        snapshot_id: "s1".into(),
        volume_id: "v1".into(),
    };
    d.create("v3", 3 * GIB, &from_snap).unwrap();
    assert!(d.create("v4", GIB / 2, &from_snap).is_err());
    assert!(matches!(
        d.create_snapshot("v9", "s2", false),
        Err(StorageError::NotFound(_))
    ));
    done(&s);
}

#[test]
fn extend_delete_and_capacity() {
    let (d, s) = driver(vec![
        // extend (twice the lvs: the check, then grow's).
        (LVS, lvs(&[("volume-v1", GIB, ACTIVE)])),
        (LVS, lvs(&[("volume-v1", GIB, ACTIVE)])),
        ("lvextend -L 2147483648b nubo-vg/volume-v1", ok("")),
        // Already that large: nothing to do.
        (LVS, lvs(&[("volume-v1", 2 * GIB, ACTIVE)])),
        (LVS, lvs(&[("volume-v1", 2 * GIB, ACTIVE)])),
        // Shrink: refused.
        (LVS, lvs(&[("volume-v1", 2 * GIB, ACTIVE)])),
        // delete, and delete again (missing = Ok).
        (LVS, lvs(&[("volume-v1", 2 * GIB, ACTIVE)])),
        ("lvremove -f nubo-vg/volume-v1", ok("")),
        (LVS, lvs(&[])),
        (LVS, lvs(&[("_snapshot-s1", GIB, ACTIVE)])),
        ("lvremove -f nubo-vg/_snapshot-s1", ok("")),
        (LVS, lvs(&[])),
    ]);
    d.extend("v1", 2 * GIB, true).unwrap();
    d.extend("v1", 2 * GIB, false).unwrap();
    assert!(d.extend("v1", GIB, false).is_err());
    d.delete("v1").unwrap();
    d.delete("v1").unwrap();
    d.delete_snapshot("v1", "s1").unwrap();
    let c = d.capacity().unwrap();
    assert_eq!(c.total_bytes, 4_000_000_000);
    assert_eq!(c.free_bytes, 3_000_000_000);
    assert_eq!(d.backend_name(), "lvm");
    done(&s);
}

/// The real thing, in the testbed's L1 (`NUBO_LVM_VG` names a VG made by
/// `tests/testbed/ctl/volume-fixture.sh`): `cargo test -p orchestrator --lib
/// lvm::tests::real -- --ignored`.
#[test]
#[ignore = "needs lvm2 and a volume group named by NUBO_LVM_VG (the testbed's L1)"]
fn real_lvm_volume_group() {
    let Ok(vg) = std::env::var("NUBO_LVM_VG") else {
        eprintln!("NUBO_LVM_VG not set: skipping");
        return;
    };
    let t0 = Instant::now();
    let d = LvmDriver::new(&vg, "nubo-pool").unwrap();
    eprintln!("driver ready (pool made if missing) in {:?}", t0.elapsed());
    for id in ["t1", "t2", "t3", "t4"] {
        d.delete(id).unwrap();
    }
    d.delete_snapshot("t1", "ts1").unwrap();
    let t0 = Instant::now();
    let t = d.create("t1", GIB, &VolumeSource::Empty).unwrap();
    eprintln!("empty 1 GiB volume in {:?}", t0.elapsed());
    let rw = |path: &std::path::Path, off: u64, data: Option<&[u8]>, len: usize| {
        let mut img = images::open(path, ImageFormat::Raw, data.is_none()).unwrap();
        match data {
            Some(d) => {
                img.write_at(d, off).unwrap();
                img.flush().unwrap();
                Vec::new()
            }
            None => {
                let mut b = vec![0u8; len];
                img.read_at(&mut b, off).unwrap();
                b
            }
        }
    };
    rw(&t.path, 4096, Some(b"first"), 0);
    d.create_snapshot("t1", "ts1", false).unwrap();
    rw(&t.path, 4096, Some(b"later"), 0);
    let snap = VolumeSource::Snapshot {
        snapshot_id: "ts1".into(),
        volume_id: "t1".into(),
    };
    let t2 = d.create("t2", 2 * GIB, &snap).unwrap();
    assert_eq!(rw(&t2.path, 4096, None, 5), b"first");
    let t3 = d
        .create(
            "t3",
            GIB,
            &VolumeSource::Volume {
                volume_id: "t1".into(),
            },
        )
        .unwrap();
    assert_eq!(rw(&t3.path, 4096, None, 5), b"later");
    // From an image.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.qcow2");
    images::create_qcow2(&img, GIB).unwrap();
    {
        let mut i = images::open(&img, ImageFormat::Qcow2, false).unwrap();
        i.write_at(b"image data", GIB - 10).unwrap();
    }
    let t0 = Instant::now();
    let t4 = d
        .create(
            "t4",
            GIB,
            &VolumeSource::Image {
                path: img,
                format: ImageFormat::Qcow2,
            },
        )
        .unwrap();
    eprintln!(
        "1 GiB volume from a 1 GiB (sparse) qcow2 image in {:?}",
        t0.elapsed()
    );
    assert_eq!(rw(&t4.path, GIB - 10, None, 10), b"image data");
    // Extend keeps data.
    d.extend("t1", 2 * GIB, false).unwrap();
    let dev = images::open(&t.path, ImageFormat::Raw, true).unwrap();
    assert_eq!(dev.size(), 2 * GIB);
    drop(dev);
    assert_eq!(rw(&t.path, 4096, None, 5), b"later");
    // Delete in any order: the snapshot's children keep their data.
    d.delete("t1").unwrap();
    d.delete_snapshot("t1", "ts1").unwrap();
    assert_eq!(rw(&t2.path, 4096, None, 5), b"first");
    // A failed create leaves no LV.
    let huge = VolumeSource::Snapshot {
        snapshot_id: "nonexistent".into(),
        volume_id: "t1".into(),
    };
    assert!(d.create("t5", GIB, &huge).is_err());
    assert!(d.lv("volume-t5").unwrap().is_none());
    let c = d.capacity().unwrap();
    eprintln!("capacity {c:?}");
    assert!(c.total_bytes > 0);
    for id in ["t2", "t3", "t4"] {
        d.delete(id).unwrap();
    }
    assert!(matches!(d.target("t2"), Err(StorageError::NotFound(_))));
}
