//! The build's own check of `kernel_id`/`ramdisk_id` visibility (the API
//! checks at `POST /servers`; an image's properties may change after).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::spec_for_image;
use crate::compute::model::Server;
use crate::compute::Compute;
use crate::config::Config;
use crate::db::Db;
use crate::identity::bootstrap;
use crate::image::files::ImageStore;

/// Image ids (the store takes UUIDs only).
const KERNEL: &str = "00000000-0000-0000-0000-00000000000a";
const RAMDISK: &str = "00000000-0000-0000-0000-00000000000b";
const OWN_KERNEL: &str = "00000000-0000-0000-0000-00000000000c";
const K_DISK: &str = "00000000-0000-0000-0000-00000000000d";
const R_DISK: &str = "00000000-0000-0000-0000-00000000000e";

fn compute(dir: &std::path::Path, db: Db) -> Arc<Compute> {
    let cfg = Arc::new(Config {
        state_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("address"),
        public_url: None,
        vmm_binary: dir.join("no-vmm"),
        default_kernel: Some(dir.join("default-kernel")),
        default_initrd: None,
        default_cmdline: String::new(),
        token_ttl: Duration::from_secs(3600),
        shutdown_timeout: Duration::from_secs(1),
        max_image_size: 1 << 20,
        overcommit: Default::default(),
        quotas: Default::default(),
        admin_password: None,
        vmm_uid_base: None,
        network: Default::default(),
        volume: Default::default(),
    });
    let images = Arc::new(ImageStore::new(dir.join("images"), 1 << 20).expect("store"));
    let vmm = Arc::new(crate::host::vmm::fake::FakeVmmHost::default());
    let network = crate::network::NetworkService::new(
        db.clone(),
        Arc::clone(&cfg),
        Arc::new(crate::host::net::fake::FakeNetHost::default()),
        crate::compute::host_name(),
    );
    let volume = crate::volume::VolumeService::new(db.clone(), Arc::clone(&cfg), Vec::new());
    Compute::new(db, cfg, vmm, images, network, volume)
}

fn image(conn: &Connection, id: &str, owner: &str, visibility: &str, fmt: &str, props: &str) {
    conn.execute(
        "INSERT INTO images (id, owner, status, visibility, disk_format, properties, created_at, updated_at) \
         VALUES (?1, ?2, 'active', ?3, ?4, ?5, '', '')",
        params![id, owner, visibility, fmt, props],
    )
    .expect("insert image");
}

fn server(user: &str, project: &str, image: &str) -> Server {
    Server {
        id: "s1".into(),
        name: "s1".into(),
        project_id: project.into(),
        user_id: user.into(),
        image_id: image.into(),
        flavor_id: "f".into(),
        vcpus: 1,
        ram: 64,
        disk: 0,
        status: "BUILD".into(),
        task_state: None,
        power_state: 0,
        fault: None,
        metadata: "{}".into(),
        created_at: String::new(),
        updated_at: String::new(),
        launched_at: None,
    }
}

#[test]
fn the_build_boots_only_kernels_and_ramdisks_the_servers_project_may_see() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open_in_memory().expect("db");
    let (admin, admin_project, user) = {
        let conn = db.lock();
        bootstrap::seed(&conn, "pw").expect("seed");
        let (admin, project): (String, String) = conn
            .query_row(
                "SELECT id, default_project_id FROM users WHERE name = 'admin'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("admin");
        conn.execute_batch(
            "INSERT INTO projects (id, name, domain_id) VALUES ('p2', 'p2', 'default');
             INSERT INTO users (id, name, domain_id) VALUES ('u2', 'u2', 'default');
             INSERT INTO role_assignments (user_id, project_id, role_id)
                 SELECT 'u2', 'p2', id FROM roles WHERE name = 'member';",
        )
        .expect("p2 and u2");
        image(&conn, KERNEL, &project, "private", "aki", "{}");
        image(&conn, RAMDISK, &project, "private", "ari", "{}");
        image(&conn, OWN_KERNEL, "p2", "private", "aki", "{}");
        let k = format!(r#"{{"kernel_id": "{KERNEL}"}}"#);
        image(&conn, K_DISK, "p2", "private", "raw", &k);
        let r = format!(r#"{{"kernel_id": "{OWN_KERNEL}", "ramdisk_id": "{RAMDISK}"}}"#);
        image(&conn, R_DISK, "p2", "private", "raw", &r);
        (admin, project, "u2".to_string())
    };
    let c = compute(dir.path(), db.clone());
    let disk = PathBuf::from("/nonexistent/disk.qcow2");

    for (image, key, hidden) in [
        (K_DISK, "kernel_id", KERNEL),
        (R_DISK, "ramdisk_id", RAMDISK),
    ] {
        let err = spec_for_image(&c, &server(&user, "p2", image), disk.clone())
            .expect_err("another project's private image must not boot");
        assert_eq!(err, format!("{key}: image {hidden} does not exist"));
    }
    // The owner's admin boots it; once public, so does p2.
    let spec = spec_for_image(&c, &server(&admin, &admin_project, K_DISK), disk.clone())
        .expect("the admin may use every image");
    assert!(spec.vm.kernel.ends_with(KERNEL), "{spec:?}");
    db.lock()
        .execute(
            "UPDATE images SET visibility = 'public' WHERE id = ?1",
            [RAMDISK],
        )
        .expect("publish");
    let spec = spec_for_image(&c, &server(&user, "p2", R_DISK), disk).expect("a public ramdisk");
    assert!(spec.vm.kernel.ends_with(OWN_KERNEL), "{spec:?}");
    assert!(
        spec.vm
            .initrd
            .as_ref()
            .is_some_and(|p| p.ends_with(RAMDISK)),
        "{spec:?}"
    );
}
