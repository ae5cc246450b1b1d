//! In-process tests of a server's volumes through the Compute API:
//! `os-volume_attachments` (hot-plugged on ACTIVE, plugged at the next start
//! on SHUTOFF, rollbacks), boot from volume, and volumes at server delete.
//! The host is the harness's fake (it records hot-plugs), volumes are made
//! through the Block Storage API on its fake driver.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api_test::{self, Server};
use crate::host::vmm::fake::{HotplugCall, HotplugOutcome};

/// The image servers boot from (the fake host never reads its file).
const IMAGE: &str = "00000000-0000-0000-0000-0000000000aa";

/// The harness with no prefix: paths name their service.
async fn start() -> Server {
    let s = api_test::start("", 1 << 20).await;
    s.db.lock()
        .execute(
            "INSERT INTO images (id, owner, status, visibility, disk_format, created_at, updated_at) \
             VALUES (?1, ?2, 'active', 'public', 'raw', '', '')",
            rusqlite::params![IMAGE, s.admin_project],
        )
        .unwrap();
    let flavor =
        json!({ "flavor": { "name": "tiny", "id": "tiny", "ram": 64, "vcpus": 1, "disk": 0 } });
    let r = s.post("/compute/v2.1/flavors", &s.admin, flavor).await;
    assert_eq!(r.status, 200);
    s
}

fn text(r: &crate::api_test::Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Polls `path` until `check` holds (panics after 10 s).
async fn wait_for(
    s: &Server,
    path: &str,
    token: &str,
    check: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.get(path, token).await;
        let body = if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        };
        if check(r.status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never got there: {} {body}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new 1 GiB volume of `project` (as `token`), once available.
async fn volume(s: &Server, token: &str, project: &str) -> String {
    let r = s
        .post(
            &format!("/volume/v3/{project}/volumes"),
            token,
            json!({ "volume": { "size": 1, "name": "v" } }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", text(&r));
    let id = r.json()["volume"]["id"].as_str().unwrap().to_string();
    let path = format!("/volume/v3/{project}/volumes/{id}");
    wait_for(s, &path, token, |_, v| v["volume"]["status"] == "available").await;
    id
}

/// Waits until the admin project's volume has `status`.
async fn volume_status(s: &Server, project: &str, id: &str, status: &str) -> Value {
    let path = format!("/volume/v3/{project}/volumes/{id}");
    wait_for(s, &path, &s.admin, |_, v| v["volume"]["status"] == status).await["volume"].clone()
}

/// The server's view, once it has `status` and no task.
async fn server_status(s: &Server, id: &str, status: &str) -> Value {
    let path = format!("/compute/v2.1/servers/{id}");
    wait_for(s, &path, &s.admin, |_, v| {
        v["server"]["status"] == status && v["server"]["OS-EXT-STS:task_state"].is_null()
    })
    .await["server"]
        .clone()
}

/// Creates a server from `server` fields as the admin; returns its id.
async fn create(s: &Server, fields: Value) -> String {
    let r = s
        .post(
            "/compute/v2.1/servers",
            &s.admin,
            json!({ "server": fields }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", text(&r));
    r.json()["server"]["id"].as_str().unwrap().to_string()
}

/// An ACTIVE server booted from the image.
async fn active_server(s: &Server) -> String {
    let id = create(
        s,
        json!({ "name": "a", "imageRef": IMAGE, "flavorRef": "tiny" }),
    )
    .await;
    server_status(s, &id, "ACTIVE").await;
    id
}

async fn action(s: &Server, id: &str, body: Value) {
    let r = s
        .post(
            &format!("/compute/v2.1/servers/{id}/action"),
            &s.admin,
            body,
        )
        .await;
    assert_eq!(r.status, 202, "{}", text(&r));
}

async fn attach(s: &Server, server: &str, vol: &str) -> crate::api_test::Resp {
    s.post(
        &format!("/compute/v2.1/servers/{server}/os-volume_attachments"),
        &s.admin,
        json!({ "volumeAttachment": { "volumeId": vol } }),
    )
    .await
}

async fn detach(s: &Server, server: &str, vol: &str) -> crate::api_test::Resp {
    let path = format!("/compute/v2.1/servers/{server}/os-volume_attachments/{vol}");
    s.call("DELETE", &path, &s.admin, None, b"").await
}

async fn delete_server(s: &Server, id: &str) {
    let path = format!("/compute/v2.1/servers/{id}");
    let r = s.call("DELETE", &path, &s.admin, None, b"").await;
    assert_eq!(r.status, 204);
    wait_for(s, &path, &s.admin, |st, _| st == 404).await;
}

fn serial(vol: &str) -> String {
    crate::volume::attachments::serial_of(vol)
}

#[tokio::test]
async fn a_volume_is_hot_plugged_into_an_active_server_and_unplugged() {
    let s = start().await;
    let id = active_server(&s).await;
    let vol = volume(&s, &s.admin, &s.admin_project).await;
    let r = attach(&s, &id, &vol).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        r.json(),
        json!({ "volumeAttachment": {
            "id": vol, "serverId": id, "volumeId": vol, "device": "/dev/vdb"
        } })
    );
    let added = s.vmm.hotplug_calls();
    assert!(
        matches!(&added[..], [HotplugCall::Add { server_id, disk, .. }]
            if server_id == &id && disk.id.as_deref() == Some(serial(&vol).as_str()) && !disk.read_only),
        "{added:?}"
    );
    volume_status(&s, &s.admin_project, &vol, "in-use").await;
    let server = server_status(&s, &id, "ACTIVE").await;
    assert_eq!(
        server["os-extended-volumes:volumes_attached"],
        json!([{ "id": vol }])
    );
    let list = s
        .get(
            &format!("/compute/v2.1/servers/{id}/os-volume_attachments"),
            &s.admin,
        )
        .await;
    assert_eq!(list.json()["volumeAttachments"][0]["device"], "/dev/vdb");
    let one = s
        .get(
            &format!("/compute/v2.1/servers/{id}/os-volume_attachments/{vol}"),
            &s.admin,
        )
        .await;
    assert_eq!(one.json()["volumeAttachment"]["volumeId"], vol.as_str());
    // Attached twice: refused.
    assert_eq!(attach(&s, &id, &vol).await.status, 400);

    let r = detach(&s, &id, &vol).await;
    assert_eq!(r.status, 202, "{}", text(&r));
    assert!(matches!(s.vmm.hotplug_calls().last(),
        Some(HotplugCall::Remove { id: dev, .. }) if *dev == serial(&vol)));
    volume_status(&s, &s.admin_project, &vol, "available").await;
    assert!(s.vmm.disks(&id).iter().all(|d| d.id.is_none()));
    assert_eq!(detach(&s, &id, &vol).await.status, 404);
}

#[tokio::test]
async fn a_shutoff_servers_volume_is_plugged_at_its_next_start() {
    let s = start().await;
    let id = active_server(&s).await;
    action(&s, &id, json!({ "os-stop": null })).await;
    server_status(&s, &id, "SHUTOFF").await;
    let vol = volume(&s, &s.admin, &s.admin_project).await;
    let r = attach(&s, &id, &vol).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(s.vmm.hotplug_calls().is_empty());
    volume_status(&s, &s.admin_project, &vol, "in-use").await;

    action(&s, &id, json!({ "os-start": null })).await;
    server_status(&s, &id, "ACTIVE").await;
    let disks = s.vmm.disks(&id);
    assert_eq!(disks.len(), 2, "{disks:?}");
    assert_eq!(disks[0].id, None, "the boot disk first");
    assert_eq!(disks[1].id.as_deref(), Some(serial(&vol).as_str()));
    // A hard reboot plugs the same.
    action(&s, &id, json!({ "reboot": { "type": "HARD" } })).await;
    server_status(&s, &id, "ACTIVE").await;
    assert_eq!(s.vmm.disks(&id), disks);

    // Detached while SHUTOFF: gone at the next start.
    action(&s, &id, json!({ "os-stop": null })).await;
    server_status(&s, &id, "SHUTOFF").await;
    assert_eq!(detach(&s, &id, &vol).await.status, 202);
    action(&s, &id, json!({ "os-start": null })).await;
    server_status(&s, &id, "ACTIVE").await;
    assert_eq!(s.vmm.disks(&id).len(), 1);
    assert!(s.vmm.hotplug_calls().is_empty());
}

#[tokio::test]
async fn failed_hot_plugs_roll_back() {
    let s = start().await;
    let id = active_server(&s).await;
    let vol = volume(&s, &s.admin, &s.admin_project).await;
    s.vmm
        .set_hotplug(HotplugOutcome::Fails("no free PCI slot".into()));
    let r = attach(&s, &id, &vol).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(text(&r).contains("no free PCI slot"), "{}", text(&r));
    volume_status(&s, &s.admin_project, &vol, "available").await;

    s.vmm.set_hotplug(HotplugOutcome::Works);
    assert_eq!(attach(&s, &id, &vol).await.status, 200);
    s.vmm.set_hotplug(HotplugOutcome::TimesOut);
    let r = detach(&s, &id, &vol).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(text(&r).contains("did not release it"), "{}", text(&r));
    volume_status(&s, &s.admin_project, &vol, "in-use").await;
    let list = s
        .get(
            &format!("/compute/v2.1/servers/{id}/os-volume_attachments"),
            &s.admin,
        )
        .await;
    assert_eq!(
        list.json()["volumeAttachments"].as_array().unwrap().len(),
        1
    );
    // Deleting the server detaches it anyway.
    delete_server(&s, &id).await;
    volume_status(&s, &s.admin_project, &vol, "available").await;
}

#[tokio::test]
async fn another_projects_volume_cannot_be_attached() {
    let s = start().await;
    let id = active_server(&s).await;
    let theirs = volume(&s, &s.alice, "other").await;
    let r = attach(&s, &id, &theirs).await;
    assert_eq!(r.status, 404, "{}", text(&r));
    assert!(s.vmm.hotplug_calls().is_empty());
    // Nor may they attach to a server they cannot see.
    let r = s
        .post(
            &format!("/compute/v2.1/servers/{id}/os-volume_attachments"),
            &s.alice,
            json!({ "volumeAttachment": { "volumeId": theirs } }),
        )
        .await;
    assert_eq!(r.status, 404, "{}", text(&r));
}

#[tokio::test]
async fn a_server_boots_from_a_volume_and_leaves_it_unless_told() {
    let s = start().await;
    let vol = volume(&s, &s.admin, &s.admin_project).await;
    let id = create(
        &s,
        json!({ "name": "bfv", "imageRef": "", "flavorRef": "tiny",
            "block_device_mapping_v2": [{ "boot_index": 0, "uuid": vol,
                "source_type": "volume", "destination_type": "volume" }] }),
    )
    .await;
    let server = server_status(&s, &id, "ACTIVE").await;
    assert_eq!(server["image"], "", "{server}");
    assert_eq!(
        server["os-extended-volumes:volumes_attached"],
        json!([{ "id": vol }])
    );
    let disks = s.vmm.disks(&id);
    assert_eq!(disks.len(), 1, "no boot disk of the host: {disks:?}");
    assert_eq!(disks[0].id.as_deref(), Some(serial(&vol).as_str()));
    let list = s
        .get(
            &format!("/compute/v2.1/servers/{id}/os-volume_attachments"),
            &s.admin,
        )
        .await;
    assert_eq!(list.json()["volumeAttachments"][0]["device"], "/dev/vda");
    let r = detach(&s, &id, &vol).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("Cannot detach a root device volume"));
    // A volume in use cannot boot another server.
    let r = s
        .post(
            "/compute/v2.1/servers",
            &s.admin,
            json!({ "server": { "name": "b", "flavorRef": "tiny",
                "block_device_mapping_v2": [{ "boot_index": 0, "uuid": vol,
                    "source_type": "volume", "destination_type": "volume" }] } }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", text(&r));

    delete_server(&s, &id).await;
    volume_status(&s, &s.admin_project, &vol, "available").await;
}

#[tokio::test]
async fn delete_on_termination_deletes_the_root_volume() {
    let s = start().await;
    let vol = volume(&s, &s.admin, &s.admin_project).await;
    let id = create(
        &s,
        json!({ "name": "bfv", "flavorRef": "tiny",
            "block_device_mapping_v2": [{ "boot_index": "0", "uuid": vol,
                "source_type": "volume", "destination_type": "volume",
                "delete_on_termination": true }] }),
    )
    .await;
    server_status(&s, &id, "ACTIVE").await;
    delete_server(&s, &id).await;
    let path = format!("/volume/v3/{}/volumes/{vol}", s.admin_project);
    wait_for(&s, &path, &s.admin, |st, _| st == 404).await;
}

#[tokio::test]
async fn a_server_boots_from_a_new_volume_made_from_an_image() {
    let s = start().await;
    // The image's properties become the volume's volume_image_metadata,
    // which the server boots with.
    s.db.lock()
        .execute(
            "UPDATE images SET properties = ?1 WHERE id = ?2",
            rusqlite::params![
                r#"{"os_command_line": "console=ttyS0 root=/dev/vda bfv"}"#,
                IMAGE
            ],
        )
        .unwrap();
    let id = create(
        &s,
        json!({ "name": "bfv", "imageRef": "", "flavorRef": "tiny",
            "block_device_mapping_v2": [{ "boot_index": 0, "uuid": IMAGE,
                "source_type": "image", "destination_type": "volume",
                "volume_size": 1, "delete_on_termination": true }] }),
    )
    .await;
    let server = server_status(&s, &id, "ACTIVE").await;
    assert_eq!(server["image"], "", "{server}");
    let vols = server["os-extended-volumes:volumes_attached"].clone();
    let vol = vols[0]["id"].as_str().expect("a root volume").to_string();
    let v = volume_status(&s, &s.admin_project, &vol, "in-use").await;
    assert_eq!(v["size"], 1, "{v}");
    assert_eq!(
        s.vmm.disks(&id)[0].id.as_deref(),
        Some(serial(&vol).as_str())
    );
    delete_server(&s, &id).await;
    let path = format!("/volume/v3/{}/volumes/{vol}", s.admin_project);
    wait_for(&s, &path, &s.admin, |st, _| st == 404).await;
}

#[tokio::test]
async fn bad_block_device_mappings_are_refused() {
    let s = start().await;
    for bdm in [
        json!({ "boot_index": 0, "uuid": IMAGE, "source_type": "image", "destination_type": "volume" }),
        json!({ "boot_index": 0, "source_type": "blank", "destination_type": "volume", "volume_size": 1 }),
        json!({ "boot_index": 0, "uuid": "nope", "source_type": "volume", "destination_type": "volume" }),
    ] {
        let r = s
            .post(
                "/compute/v2.1/servers",
                &s.admin,
                json!({ "server": { "name": "x", "flavorRef": "tiny",
                    "block_device_mapping_v2": [bdm] } }),
            )
            .await;
        assert!(
            r.status == 400 || r.status == 404,
            "{bdm}: {} {}",
            r.status,
            text(&r)
        );
    }
    let r = s.get("/compute/v2.1/servers", &s.admin).await;
    assert_eq!(
        r.json()["servers"],
        json!([]),
        "failed creates leave no server"
    );
}

#[tokio::test]
async fn extending_an_attached_volume_tells_the_running_guest() {
    let s = start().await;
    // As `serve` wires it.
    s.volume.set_online_resize(std::sync::Arc::new(
        crate::compute::volumes::VmmResize::new(s.vmm.clone()),
    ));
    let id = active_server(&s).await;
    let vol = volume(&s, &s.admin, &s.admin_project).await;
    assert_eq!(attach(&s, &id, &vol).await.status, 200);
    let r = s
        .call_with(
            "POST",
            &format!("/volume/v3/{}/volumes/{vol}/action", s.admin_project),
            &s.admin,
            &[("OpenStack-API-Version", "volume 3.42")],
            &json!({ "os-extend": { "new_size": 2 } }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", text(&r));
    let v = volume_status(&s, &s.admin_project, &vol, "in-use").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.vmm.hotplug_calls().iter().any(|c| {
        matches!(c, HotplugCall::Resize { server_id, id: dev, size }
            if server_id == &id && *dev == serial(&vol) && *size == 2 << 30)
    }) {
        assert!(
            Instant::now() < deadline,
            "no resize: {:?} {v}",
            s.vmm.hotplug_calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a daemon restart, a running guest gets what its attachments say:
/// a volume attached while the daemon was away (or lost by the VMM) is
/// plugged, a device of a volume no longer attached is unplugged, an
/// interrupted detach is finished.
#[tokio::test]
async fn reconcile_replugs_a_running_servers_volumes() {
    use crate::host::vmm::VmmHost;
    use crate::volume::attachments::ReserveRequest;
    let s = start().await;
    let id = active_server(&s).await;
    let (kept, lost, leaving) = (
        volume(&s, &s.admin, &s.admin_project).await,
        volume(&s, &s.admin, &s.admin_project).await,
        volume(&s, &s.admin, &s.admin_project).await,
    );
    for v in [&kept, &leaving] {
        assert_eq!(attach(&s, &id, v).await.status, 200);
    }
    // Recorded as attached, but the VMM never got it.
    let a = s
        .volume
        .reserve(&ReserveRequest {
            project_id: s.admin_project.clone(),
            volume_id: lost.clone(),
            server_id: id.clone(),
            device: "/dev/vdd".into(),
            delete_on_termination: false,
            boot_index: None,
        })
        .unwrap();
    s.volume.attach_done(&a.id).unwrap();
    // A detach the restart interrupted.
    s.volume.begin_detach(&id, &leaving).unwrap();
    // A device of no attachment.
    let mut stale = crate::compute::volumes::disk_of(&a);
    stale.id = Some("stale-device".into());
    s.vmm.hot_add_disk(&id, &stale, &[]).unwrap();

    crate::compute::volumes::replug(&s.compute, &id).await;
    let ids: Vec<Option<String>> = s.vmm.disks(&id).into_iter().map(|d| d.id).collect();
    assert_eq!(
        ids,
        vec![None, Some(serial(&kept)), Some(serial(&lost))],
        "{:?}",
        s.vmm.hotplug_calls()
    );
    volume_status(&s, &s.admin_project, &leaving, "available").await;
    volume_status(&s, &s.admin_project, &lost, "in-use").await;
}
