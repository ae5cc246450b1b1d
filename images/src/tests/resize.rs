//! Growing qcow2 images and converting disks.

use super::*;

const MIB: u64 = 1 << 20;

#[test]
fn qcow2_grow_keeps_data_and_new_range_reads_zeros() {
    let dir = TempDir::new("grow");
    let p = dir.path("a.qcow2");
    create_qcow2(&p, 8 * MIB).unwrap();
    let mut model = vec![0u8; (8 * MIB) as usize];
    {
        let mut img = open(&p, ImageFormat::Qcow2, false).unwrap();
        write_patterns(img.as_mut(), &mut model);
        img.resize(64 * MIB).unwrap();
        assert_eq!(img.size(), 64 * MIB);
        // Write into the new range while open.
        img.write_at(&pattern(99, 4096), 60 * MIB).unwrap();
        img.flush().unwrap();
    }
    assert_check_clean(&p);
    let mut img = open(&p, ImageFormat::Qcow2, true).unwrap();
    assert_eq!(img.size(), 64 * MIB);
    let all = read_all(img.as_mut());
    assert_eq!(&all[..model.len()], &model[..]);
    let tail = &all[model.len()..];
    let at = (60 * MIB - 8 * MIB) as usize;
    assert!(tail[..at].iter().all(|&b| b == 0));
    assert_eq!(&tail[at..at + 4096], &pattern(99, 4096)[..]);
    assert!(tail[at + 4096..].iter().all(|&b| b == 0));
}

#[test]
fn qcow2_grow_beyond_one_l1_cluster_moves_the_l1_table() {
    let dir = TempDir::new("growl1");
    let p = dir.path("a.qcow2");
    // 4 KiB clusters: one L2 maps 2 MiB, one L1 cluster 512 entries = 1 GiB.
    crate::qcow2::create_qcow2_with_cluster_bits(&p, 1 << 30, 12).unwrap();
    {
        let mut img = open(&p, ImageFormat::Qcow2, false).unwrap();
        img.write_at(&pattern(1, 8192), 5 * MIB).unwrap();
        img.write_at(&pattern(2, 100), (1 << 30) - 100).unwrap();
        img.flush().unwrap();
    }
    resize(&p, ImageFormat::Qcow2, 3 << 30).unwrap();
    assert_check_clean(&p);
    {
        let mut img = open(&p, ImageFormat::Qcow2, false).unwrap();
        assert_eq!(img.size(), 3 << 30);
        let mut b = vec![0u8; 8192];
        img.read_at(&mut b, 5 * MIB).unwrap();
        assert_eq!(b, pattern(1, 8192));
        let mut b = vec![0u8; 100];
        img.read_at(&mut b, (1 << 30) - 100).unwrap();
        assert_eq!(b, pattern(2, 100));
        img.read_at(&mut b, (2 << 30) + 12345).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        img.write_at(&pattern(3, 100), (3 << 30) - 100).unwrap();
        img.flush().unwrap();
    }
    assert_check_clean(&p);
    if let Some(o) = qemu("qemu-img", &["info", "--output=json", s(&p)]) {
        let info = String::from_utf8_lossy(&o.stdout);
        assert!(
            info.contains(&format!("\"virtual-size\": {}", 3u64 << 30)),
            "{info}"
        );
    }
    let mut img = open(&p, ImageFormat::Qcow2, true).unwrap();
    let mut b = vec![0u8; 100];
    img.read_at(&mut b, (3 << 30) - 100).unwrap();
    assert_eq!(b, pattern(3, 100));
}

#[test]
fn grow_refuses_shrink_and_read_only() {
    let dir = TempDir::new("growbad");
    let p = dir.path("a.qcow2");
    create_qcow2(&p, 8 * MIB).unwrap();
    assert!(matches!(
        resize(&p, ImageFormat::Qcow2, 4 * MIB),
        Err(ImageError::Unsupported(_))
    ));
    let mut ro = open(&p, ImageFormat::Qcow2, true).unwrap();
    assert!(matches!(ro.resize(16 * MIB), Err(ImageError::ReadOnly)));
    resize(&p, ImageFormat::Qcow2, 8 * MIB).unwrap();
    assert_check_clean(&p);
}

#[test]
fn overlay_grown_past_its_backing_reads_zeros_there() {
    let dir = TempDir::new("growov");
    let base = dir.path("base.raw");
    std::fs::write(&base, pattern(7, (2 * MIB) as usize)).unwrap();
    let ov = dir.path("ov.qcow2");
    create_qcow2_overlay(&ov, &base, ImageFormat::Raw).unwrap();
    resize(&ov, ImageFormat::Qcow2, 6 * MIB).unwrap();
    assert_check_clean(&ov);
    let mut img = open(&ov, ImageFormat::Qcow2, true).unwrap();
    let all = read_all(img.as_mut());
    assert_eq!(
        &all[..(2 * MIB) as usize],
        &pattern(7, (2 * MIB) as usize)[..]
    );
    assert!(all[(2 * MIB) as usize..].iter().all(|&b| b == 0));
}

#[test]
fn convert_copies_through_the_chain_and_stays_sparse() {
    let dir = TempDir::new("convert");
    let base = dir.path("base.qcow2");
    create_qcow2(&base, 32 * MIB).unwrap();
    let mut model = vec![0u8; (32 * MIB) as usize];
    {
        let mut img = open(&base, ImageFormat::Qcow2, false).unwrap();
        write_patterns(img.as_mut(), &mut model);
    }
    let ov = dir.path("ov.qcow2");
    create_qcow2_overlay(&ov, &base, ImageFormat::Qcow2).unwrap();
    {
        let mut img = open(&ov, ImageFormat::Qcow2, false).unwrap();
        let d = pattern(42, 70_000);
        img.write_at(&d, 20 * MIB).unwrap();
        model[(20 * MIB) as usize..(20 * MIB) as usize + d.len()].copy_from_slice(&d);
    }
    // Into a larger qcow2.
    let dst = dir.path("dst.qcow2");
    create_qcow2(&dst, 64 * MIB).unwrap();
    {
        let mut out = open(&dst, ImageFormat::Qcow2, false).unwrap();
        let st = convert(&ov, ImageFormat::Qcow2, out.as_mut()).unwrap();
        assert!(st.read < 32 * MIB, "{st:?}");
        assert!(st.written < 2 * MIB, "{st:?}");
    }
    assert_check_clean(&dst);
    let file_len = std::fs::metadata(&dst).unwrap().len();
    assert!(file_len < 4 * MIB, "target not sparse: {file_len}");
    let mut out = open(&dst, ImageFormat::Qcow2, true).unwrap();
    let all = read_all(out.as_mut());
    assert_eq!(&all[..model.len()], &model[..]);
    assert!(all[model.len()..].iter().all(|&b| b == 0));
    // Into a raw file: sparse too.
    let raw = dir.path("dst.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    {
        let mut out = open(&raw, ImageFormat::Raw, false).unwrap();
        convert(&ov, ImageFormat::Qcow2, out.as_mut()).unwrap();
    }
    assert_eq!(std::fs::read(&raw).unwrap(), model);
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&raw).unwrap().blocks() * 512 < 4 * MIB);
    assert_compare(&ov, &raw);
}

#[test]
fn convert_refuses_a_smaller_target() {
    let dir = TempDir::new("convsmall");
    let src = dir.path("s.qcow2");
    create_qcow2(&src, 8 * MIB).unwrap();
    let dst = dir.path("d.qcow2");
    create_qcow2(&dst, 4 * MIB).unwrap();
    let mut out = open(&dst, ImageFormat::Qcow2, false).unwrap();
    assert!(matches!(
        convert(&src, ImageFormat::Qcow2, out.as_mut()),
        Err(ImageError::InvalidArgument(_))
    ));
}

#[test]
fn known_zero_sees_holes_and_unallocated_clusters() {
    let dir = TempDir::new("knownzero");
    let raw = dir.path("base.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(16 * MIB).unwrap();
    drop(f);
    {
        let mut r = open(&raw, ImageFormat::Raw, false).unwrap();
        r.write_at(&[1u8; 4096], 8 * MIB).unwrap();
        r.flush().unwrap();
        assert!(r.known_zero(0, 4 * MIB).unwrap());
        assert!(!r.known_zero(7 * MIB, 2 * MIB).unwrap());
        assert!(r.known_zero(0, 17 * MIB).is_err());
    }
    let ov = dir.path("ov.qcow2");
    create_qcow2_overlay(&ov, &raw, ImageFormat::Raw).unwrap();
    resize(&ov, ImageFormat::Qcow2, 32 * MIB).unwrap();
    let mut q = open(&ov, ImageFormat::Qcow2, false).unwrap();
    // Unallocated over the base's hole, over its data, and past its end.
    assert!(q.known_zero(0, 4 * MIB).unwrap());
    assert!(!q.known_zero(8 * MIB, 4096).unwrap());
    assert!(q.known_zero(20 * MIB, 12 * MIB).unwrap());
    // Data in the overlay; zero clusters hiding the base's data.
    q.write_at(&[2u8; 10], MIB).unwrap();
    assert!(!q.known_zero(0, 4 * MIB).unwrap());
    q.write_zeroes(8 * MIB, 64 << 10).unwrap();
    assert!(q.known_zero(8 * MIB, 64 << 10).unwrap());
}

#[test]
fn grows_an_image_made_by_qemu_img() {
    if !have_qemu_img() {
        eprintln!("SKIPPING: no qemu-img");
        return;
    }
    let dir = TempDir::new("growqemu");
    let p = dir.path("q.qcow2");
    qemu_ok("qemu-img", &["create", "-q", "-f", "qcow2", s(&p), "100M"]);
    qemu_ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 1M 64k", s(&p)],
    );
    resize(&p, ImageFormat::Qcow2, 10 << 30).unwrap();
    assert_check_clean(&p);
    let mut img = open(&p, ImageFormat::Qcow2, false).unwrap();
    assert_eq!(img.size(), 10 << 30);
    let mut b = vec![0u8; 65536];
    img.read_at(&mut b, MIB).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
    img.write_at(&[1u8; 512], (10 << 30) - 512).unwrap();
    drop(img);
    assert_check_clean(&p);
    qemu_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x01 10737417728 512",
            "-c",
            "read -P 0x5a 1M 64k",
            s(&p),
        ],
    );
}
