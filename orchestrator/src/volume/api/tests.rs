//! In-process tests of the Block Storage API (through the shared harness
//! and its in-memory `file` backend), and of the attachment contract.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::api_test::{self, Resp, Server};
use crate::volume::attachments::{AttachmentStatus, ReserveRequest};

async fn start() -> Server {
    api_test::start("/volume", 1 << 20).await
}

fn fault(r: &Resp, name: &str) -> String {
    let v = r.json();
    assert!(v.get(name).is_some(), "expected a {name} fault, got {v}");
    v[name]["message"].as_str().unwrap_or_default().to_string()
}

fn vols(s: &Server) -> String {
    format!("/v3/{}/volumes", s.admin_project)
}

async fn create(s: &Server, body: Value) -> Resp {
    s.post(&vols(s), &s.admin, json!({ "volume": body })).await
}

async fn created(s: &Server, body: Value) -> Value {
    let r = create(s, body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["volume"].clone()
}

async fn show(s: &Server, token: &str, project: &str, id: &str) -> Resp {
    s.get(&format!("/v3/{project}/volumes/{id}"), token).await
}

/// Polls until the volume has `want` (or is gone, for `"gone"`).
async fn wait_for(s: &Server, id: &str, want: &str) -> Value {
    for _ in 0..200 {
        let r = show(s, &s.admin, &s.admin_project, id).await;
        if want == "gone" && r.status == 404 {
            return Value::Null;
        }
        if r.status == 200 && r.json()["volume"]["status"] == want {
            return r.json()["volume"].clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("volume {id} never became {want}");
}

async fn available(s: &Server, body: Value) -> Value {
    let v = created(s, body).await;
    wait_for(s, v["id"].as_str().unwrap(), "available").await
}

async fn action(s: &Server, id: &str, body: Value, mv: Option<&str>) -> Resp {
    let path = format!("{}/{id}/action", vols(s));
    match mv {
        None => s.post(&path, &s.admin, body).await,
        Some(v) => {
            let header = format!("volume {v}");
            s.call_with(
                "POST",
                &path,
                &s.admin,
                &[("OpenStack-API-Version", &header)],
                &body,
            )
            .await
        }
    }
}

#[tokio::test]
async fn versions_documents_and_microversions() {
    let s = start().await;
    // `GET /volume/` reaches this route once the daemon drops the slash.
    let r = s.get("", "").await;
    assert_eq!(r.status, 300);
    let v = &r.json()["versions"][0];
    assert_eq!(v["id"], "v3.0");
    assert_eq!(v["status"], "CURRENT");
    assert_eq!(v["version"], "3.42");
    assert_eq!(v["min_version"], "3.0");
    let r = s.get("/v3", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["versions"][0]["version"], "3.42");
    // A microversion above ours is 406; ours is echoed.
    let v = available(&s, json!({ "size": 1 })).await;
    let id = v["id"].as_str().unwrap();
    let r = action(
        &s,
        id,
        json!({ "os-extend": { "new_size": 2 } }),
        Some("3.99"),
    )
    .await;
    assert_eq!(r.status, 406, "{}", r.text());
    let r = action(
        &s,
        id,
        json!({ "os-extend": { "new_size": 2 } }),
        Some("3.42"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("openstack-api-version"), Some("volume 3.42"));
}

#[test]
fn the_catalog_lists_block_storage_twice_with_the_project() {
    let cat = crate::http::catalog::catalog("http://h", Some("p1"));
    let entries = cat.as_array().unwrap();
    for ty in ["block-storage", "volumev3"] {
        let e = entries.iter().find(|e| e["type"] == ty).expect(ty);
        assert_eq!(e["name"], "cinderv3");
        assert_eq!(e["endpoints"][0]["url"], "http://h/volume/v3/p1");
    }
    let ids: std::collections::BTreeSet<_> = entries.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), entries.len(), "service ids are unique");
}

#[tokio::test]
async fn create_show_list_update_delete() {
    let s = start().await;
    s.storage.hold_creates();
    let v = created(
        &s,
        json!({ "size": 1, "name": "v1", "description": "d", "metadata": { "a": "b" } }),
    )
    .await;
    assert_eq!(v["status"], "creating");
    let id = v["id"].as_str().unwrap().to_string();
    // Never available while the driver works.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let r = show(&s, &s.admin, &s.admin_project, &id).await;
    assert_eq!(r.json()["volume"]["status"], "creating");
    s.storage.release_creates();
    let v = wait_for(&s, &id, "available").await;
    assert_eq!(v["size"], 1);
    assert_eq!(v["bootable"], "false");
    assert_eq!(v["encrypted"], false);
    assert_eq!(v["multiattach"], false);
    assert_eq!(v["availability_zone"], "nova");
    assert_eq!(v["volume_type"], "__DEFAULT__");
    assert_eq!(v["attachments"], json!([]));
    assert_eq!(v["metadata"], json!({ "a": "b" }));
    assert_eq!(v["os-vol-tenant-attr:tenant_id"], s.admin_project);
    assert!(v.get("volume_image_metadata").is_none());
    assert!(s.storage.state().volumes.contains_key(&id));
    // Lists, by name and status.
    let r = s.get(&format!("{}?name=v1", vols(&s)), &s.admin).await;
    assert_eq!(r.json()["volumes"][0]["id"], id);
    assert!(r.json()["volumes"][0].get("status").is_none());
    let r = s
        .get(&format!("{}/detail?status=available", vols(&s)), &s.admin)
        .await;
    assert_eq!(r.json()["volumes"][0]["status"], "available");
    let r = s.get(&format!("{}?name=nope", vols(&s)), &s.admin).await;
    assert_eq!(r.json()["volumes"], json!([]));
    // Update and metadata.
    let r = s
        .put(
            &format!("{}/{id}", vols(&s)),
            &s.admin,
            json!({ "volume": { "name": "v2" } }),
        )
        .await;
    assert_eq!(r.json()["volume"]["name"], "v2");
    let r = s
        .post(
            &format!("{}/{id}/metadata", vols(&s)),
            &s.admin,
            json!({ "metadata": { "c": "d" } }),
        )
        .await;
    assert_eq!(r.json()["metadata"], json!({ "a": "b", "c": "d" }));
    let r = action(
        &s,
        &id,
        json!({ "os-set_bootable": { "bootable": true } }),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = show(&s, &s.admin, &s.admin_project, &id).await;
    assert_eq!(r.json()["volume"]["bootable"], "true");
    // A reader may look but not change.
    let r = s.delete(&format!("{}/{id}", vols(&s)), &s.rita).await;
    assert_eq!(r.status, 403);
    // Delete: deleting, then gone, data too.
    let r = s.delete(&format!("{}/{id}", vols(&s)), &s.admin).await;
    assert_eq!(r.status, 202, "{}", r.text());
    wait_for(&s, &id, "gone").await;
    assert!(!s.storage.state().volumes.contains_key(&id));
}

#[tokio::test]
async fn bad_input_is_400() {
    let s = start().await;
    for body in [
        json!({ "size": 0 }),
        json!({ "size": -1 }),
        json!({ "size": "x" }),
        json!({}),
        json!({ "size": 1, "availability_zone": "mars" }),
        json!({ "size": 1, "snapshot_id": "a", "source_volid": "b" }),
    ] {
        let r = create(&s, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        fault(&r, "badRequest");
    }
    let r = create(&s, json!({ "size": 1, "volume_type": "nope" })).await;
    assert_eq!(r.status, 404);
    let r = s.post(&vols(&s), &s.admin, json!({ "nope": 1 })).await;
    assert_eq!(r.status, 400);
    let r = s.get("/v3/someone-else/volumes", &s.admin).await;
    assert_eq!(r.status, 400);
    assert_eq!(fault(&r, "badRequest"), "Malformed request url");
}

#[tokio::test]
async fn another_projects_volume_is_404() {
    let s = start().await;
    let v = available(&s, json!({ "size": 1 })).await;
    let id = v["id"].as_str().unwrap();
    let r = show(&s, &s.alice, "other", id).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        fault(&r, "itemNotFound"),
        format!("Volume {id} could not be found.")
    );
    let r = s.delete(&format!("/v3/other/volumes/{id}"), &s.alice).await;
    assert_eq!(r.status, 404);
    let r = s.get("/v3/other/volumes", &s.alice).await;
    assert_eq!(r.json()["volumes"], json!([]));
    // The admin sees everyone's with all_tenants.
    let r = s
        .post(
            "/v3/other/volumes",
            &s.alice,
            json!({ "volume": { "size": 1 } }),
        )
        .await;
    assert_eq!(r.status, 202);
    let r = s
        .get(&format!("{}/detail?all_tenants=1", vols(&s)), &s.admin)
        .await;
    assert_eq!(r.json()["volumes"].as_array().unwrap().len(), 2);
    let r = s.get(&format!("{}/detail", vols(&s)), &s.admin).await;
    assert_eq!(r.json()["volumes"].as_array().unwrap().len(), 1);
    // A member's view has no admin attributes.
    let r = s.get("/v3/other/volumes/detail", &s.alice).await;
    assert!(r.json()["volumes"][0]
        .get("os-vol-tenant-attr:tenant_id")
        .is_none());
}

#[tokio::test]
async fn pagination_follows_volumes_links() {
    let s = start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(available(&s, json!({ "size": 1, "name": format!("v{i}") })).await["id"].clone());
    }
    let r = s.get(&format!("{}?limit=2", vols(&s)), &s.admin).await;
    let page = r.json();
    assert_eq!(page["volumes"].as_array().unwrap().len(), 2);
    assert_eq!(page["volumes"][0]["id"], ids[2], "newest first");
    let next = page["volumes_links"][0]["href"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.contains("marker="), "{next}");
    let path = format!("/{}", next.split_once("/volume/").unwrap().1);
    let r = s.get(&path, &s.admin).await;
    let page = r.json();
    assert_eq!(page["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(page["volumes"][0]["id"], ids[0]);
    assert!(page.get("volumes_links").is_none());
    let r = s.get(&format!("{}?marker=nope", vols(&s)), &s.admin).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_failed_create_is_error_with_a_message_and_its_delete_frees_quota() {
    let s = start().await;
    s.storage.fail_next_create("disk on fire");
    let v = created(&s, json!({ "size": 3 })).await;
    let id = v["id"].as_str().unwrap().to_string();
    wait_for(&s, &id, "error").await;
    let limits = s
        .get(&format!("/v3/{}/limits", s.admin_project), &s.admin)
        .await;
    let abs = &limits.json()["limits"]["absolute"];
    assert_eq!(abs["totalVolumesUsed"], 1);
    assert_eq!(abs["totalGigabytesUsed"], 3);
    let r = s
        .get(&format!("/v3/{}/messages", s.admin_project), &s.admin)
        .await;
    let msgs = r.json()["messages"].clone();
    assert!(
        msgs.as_array()
            .unwrap()
            .iter()
            .any(|m| m["resource_uuid"] == id
                && m["user_message"].as_str().unwrap().contains("disk on fire")),
        "{msgs}"
    );
    let r = s.delete(&format!("{}/{id}", vols(&s)), &s.admin).await;
    assert_eq!(r.status, 202);
    wait_for(&s, &id, "gone").await;
    let limits = s
        .get(&format!("/v3/{}/limits", s.admin_project), &s.admin)
        .await;
    let abs = &limits.json()["limits"]["absolute"];
    assert_eq!(abs["totalVolumesUsed"], 0);
    assert_eq!(abs["totalGigabytesUsed"], 0);
}

#[tokio::test]
async fn a_failed_delete_is_error_deleting() {
    let s = start().await;
    let v = available(&s, json!({ "size": 1 })).await;
    let id = v["id"].as_str().unwrap();
    s.storage.fail_next_delete("busy");
    let r = s.delete(&format!("{}/{id}", vols(&s)), &s.admin).await;
    assert_eq!(r.status, 202);
    wait_for(&s, id, "error_deleting").await;
    // An admin may force it.
    let r = action(&s, id, json!({ "os-force_delete": {} }), None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    wait_for(&s, id, "gone").await;
}

#[tokio::test]
async fn quotas_are_413_and_shown() {
    let s = start().await;
    let r = s
        .put(
            &format!("/v3/{}/os-quota-sets/other", s.admin_project),
            &s.admin,
            json!({ "quota_set": { "volumes": 1, "gigabytes": 5, "snapshots": 0 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["quota_set"]["volumes"], 1);
    // A member may not change quotas.
    let r = s
        .put(
            "/v3/other/os-quota-sets/other",
            &s.alice,
            json!({ "quota_set": { "volumes": 100 } }),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .post(
            "/v3/other/volumes",
            &s.alice,
            json!({ "volume": { "size": 6 } }),
        )
        .await;
    assert_eq!(r.status, 413);
    assert!(fault(&r, "overLimit").contains("gigabytes quota"));
    let r = s
        .post(
            "/v3/other/volumes",
            &s.alice,
            json!({ "volume": { "size": 2 } }),
        )
        .await;
    assert_eq!(r.status, 202);
    let id = r.json()["volume"]["id"].as_str().unwrap().to_string();
    let r = s
        .post(
            "/v3/other/volumes",
            &s.alice,
            json!({ "volume": { "size": 1 } }),
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(
        fault(&r, "overLimit"),
        "Maximum number of volumes allowed (1) exceeded for quota 'volumes'."
    );
    // Snapshots count too.
    for _ in 0..200 {
        let r = show(&s, &s.alice, "other", &id).await;
        if r.json()["volume"]["status"] == "available" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = s
        .post(
            "/v3/other/snapshots",
            &s.alice,
            json!({ "snapshot": { "volume_id": id } }),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // usage=true shows what is used.
    let r = s
        .get("/v3/other/os-quota-sets/other?usage=true", &s.alice)
        .await;
    let q = &r.json()["quota_set"];
    assert_eq!(q["volumes"]["in_use"], 1);
    assert_eq!(q["gigabytes"]["in_use"], 2);
    assert_eq!(q["gigabytes"]["limit"], 5);
    // Another project's quotas are not a member's business.
    let r = s
        .get(
            &format!("/v3/other/os-quota-sets/{}", s.admin_project),
            &s.alice,
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .get("/v3/other/os-quota-sets/other/defaults", &s.alice)
        .await;
    assert_eq!(r.json()["quota_set"]["volumes"], 10);
    let r = s.get("/v3/other/limits", &s.alice).await;
    let abs = &r.json()["limits"]["absolute"];
    assert_eq!(abs["maxTotalVolumes"], 1);
    assert_eq!(abs["maxTotalVolumeGigabytes"], 5);
    assert_eq!(abs["maxTotalSnapshots"], 0);
}

async fn wait_snap(s: &Server, id: &str, want: &str) {
    for _ in 0..200 {
        let r = s
            .get(&format!("/v3/{}/snapshots/{id}", s.admin_project), &s.admin)
            .await;
        if want == "gone" && r.status == 404 {
            return;
        }
        if r.status == 200 && r.json()["snapshot"]["status"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("snapshot {id} never became {want}");
}

#[tokio::test]
async fn snapshots_and_volumes_from_them() {
    let s = start().await;
    let v = available(&s, json!({ "size": 2 })).await;
    let vid = v["id"].as_str().unwrap().to_string();
    let snaps = format!("/v3/{}/snapshots", s.admin_project);
    let r = s
        .post(
            &snaps,
            &s.admin,
            json!({ "snapshot": { "volume_id": vid, "name": "s1", "force": false } }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let snap = r.json()["snapshot"].clone();
    assert_eq!(snap["status"], "creating");
    assert_eq!(snap["size"], 2);
    let sid = snap["id"].as_str().unwrap().to_string();
    wait_snap(&s, &sid, "available").await;
    let r = s.get(&format!("{snaps}/detail"), &s.admin).await;
    assert_eq!(r.json()["snapshots"][0]["id"], sid);
    // A volume with snapshots cannot go.
    let r = s.delete(&format!("{}/{vid}", vols(&s)), &s.admin).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        fault(&r, "badRequest"),
        format!("Invalid volume: {}", crate::volume::service::DELETE_REFUSED)
    );
    // From the snapshot: at least its size, same backend.
    let r = create(&s, json!({ "size": 1, "snapshot_id": sid })).await;
    assert_eq!(r.status, 400);
    let v2 = created(&s, json!({ "snapshot_id": sid })).await;
    assert_eq!(v2["size"], 2);
    assert_eq!(v2["snapshot_id"], sid);
    let v2id = v2["id"].as_str().unwrap().to_string();
    wait_for(&s, &v2id, "available").await;
    assert!(matches!(
        s.storage.state().volumes[&v2id].1,
        crate::host::storage::VolumeSource::Snapshot { .. }
    ));
    // A clone.
    let v3 = created(&s, json!({ "source_volid": vid })).await;
    assert_eq!(v3["size"], 2);
    wait_for(&s, v3["id"].as_str().unwrap(), "available").await;
    // Delete the snapshot, then the volume.
    let r = s.delete(&format!("{snaps}/{sid}"), &s.admin).await;
    assert_eq!(r.status, 202);
    wait_snap(&s, &sid, "gone").await;
    let r = s.delete(&format!("{}/{vid}", vols(&s)), &s.admin).await;
    assert_eq!(r.status, 202);
    wait_for(&s, &vid, "gone").await;
    let r = s.get(&format!("{snaps}/nope"), &s.admin).await;
    assert_eq!(r.status, 404);
    fault(&r, "itemNotFound");
}

#[tokio::test]
async fn types_choose_the_backend() {
    let s = start().await;
    let types = format!("/v3/{}/types", s.admin_project);
    let r = s
        .post(
            &types,
            &s.admin,
            json!({ "volume_type": { "name": "lvm", "os-volume-type-access:is_public": true } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tid = r.json()["volume_type"]["id"].as_str().unwrap().to_string();
    let r = s
        .post(
            &format!("{types}/{tid}/extra_specs"),
            &s.admin,
            json!({ "extra_specs": { "volume_backend_name": "lvm" } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A member cannot make types, and sees no extra specs.
    let r = s
        .post(
            "/v3/other/types",
            &s.alice,
            json!({ "volume_type": { "name": "x" } }),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s.get("/v3/other/types", &s.alice).await;
    let names: Vec<_> = r.json()["volume_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["__DEFAULT__", "lvm"]);
    assert!(r.json()["volume_types"][0].get("extra_specs").is_none());
    let r = s.get("/v3/other/types/default", &s.alice).await;
    assert_eq!(r.json()["volume_type"]["name"], "__DEFAULT__");
    // No lvm driver here: the volume ends in error, with why.
    let v = created(&s, json!({ "size": 1, "volume_type": "lvm" })).await;
    let id = v["id"].as_str().unwrap().to_string();
    wait_for(&s, &id, "error").await;
    let r = s
        .get(
            &format!("/v3/{}/messages?resource_uuid={id}", s.admin_project),
            &s.admin,
        )
        .await;
    assert!(r.json()["messages"][0]["user_message"]
        .as_str()
        .unwrap()
        .contains("No valid backend"));
    // A type in use cannot go; the default never.
    let r = s.delete(&format!("{types}/{tid}"), &s.admin).await;
    assert_eq!(r.status, 400);
    let r = s.delete(&format!("{}/{id}", vols(&s)), &s.admin).await;
    assert_eq!(r.status, 202);
    wait_for(&s, &id, "gone").await;
    let r = s.delete(&format!("{types}/{tid}"), &s.admin).await;
    assert_eq!(r.status, 202);
    let r = s.delete(&format!("{types}/__DEFAULT__"), &s.admin).await;
    assert_eq!(r.status, 400);
}

fn reserve_req(s: &Server, vid: &str, server: &str) -> ReserveRequest {
    ReserveRequest {
        project_id: s.admin_project.clone(),
        volume_id: vid.to_string(),
        server_id: server.to_string(),
        device: "/dev/vdb".into(),
        delete_on_termination: false,
        boot_index: None,
    }
}

async fn status_of(s: &Server, id: &str) -> Value {
    show(s, &s.admin, &s.admin_project, id).await.json()["volume"].clone()
}

/// The compute side's hook for the extend test.
#[derive(Default)]
struct Resizes(Mutex<Vec<(String, String, u64)>>);

impl crate::volume::OnlineResize for Resizes {
    fn resize(&self, server: &str, volume: &str, bytes: u64) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push((server.into(), volume.into(), bytes));
        Ok(())
    }
}

#[tokio::test]
async fn attachments_move_the_volume_through_its_statuses() {
    let s = start().await;
    let svc = volume_service(&s);
    let v = available(&s, json!({ "size": 1 })).await;
    let vid = v["id"].as_str().unwrap().to_string();
    // Another project's volume is 404 for compute too.
    let mut other = reserve_req(&s, &vid, "srv1");
    other.project_id = "other".into();
    assert_eq!(svc.reserve(&other).unwrap_err().status, 404);
    let a = svc.reserve(&reserve_req(&s, &vid, "srv1")).unwrap();
    assert_eq!(a.status, AttachmentStatus::Reserved);
    assert_eq!(a.serial, vid[..20]);
    assert!(a.target.path.to_string_lossy().contains(&vid));
    assert_eq!(status_of(&s, &vid).await["status"], "attaching");
    // Same server again: 409; another server: 400 (not multiattach).
    assert_eq!(
        svc.reserve(&reserve_req(&s, &vid, "srv1"))
            .unwrap_err()
            .status,
        409
    );
    let e = svc.reserve(&reserve_req(&s, &vid, "srv2")).unwrap_err();
    assert_eq!(e.status, 400, "{}", e.message);
    svc.attach_done(&a.id).unwrap();
    let shown = status_of(&s, &vid).await;
    assert_eq!(shown["status"], "in-use");
    assert_eq!(shown["attachments"][0]["server_id"], "srv1");
    assert_eq!(shown["attachments"][0]["attachment_id"], a.id);
    assert_eq!(shown["attachments"][0]["device"], "/dev/vdb");
    assert_eq!(svc.attachments_of_server("srv1").unwrap().len(), 1);
    // In use: no delete, no plain snapshot; a forced one is fine.
    let r = s.delete(&format!("{}/{vid}", vols(&s)), &s.admin).await;
    assert_eq!(r.status, 400);
    let snaps = format!("/v3/{}/snapshots", s.admin_project);
    let r = s
        .post(
            &snaps,
            &s.admin,
            json!({ "snapshot": { "volume_id": vid } }),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .post(
            &snaps,
            &s.admin,
            json!({ "snapshot": { "volume_id": vid, "force": true } }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let sid = r.json()["snapshot"]["id"].as_str().unwrap().to_string();
    wait_snap(&s, &sid, "available").await;
    // Extend while attached: 3.42 and compute's hook.
    let r = action(&s, &vid, json!({ "os-extend": { "new_size": 2 } }), None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = action(
        &s,
        &vid,
        json!({ "os-extend": { "new_size": 2 } }),
        Some("3.42"),
    )
    .await;
    assert_eq!(r.status, 400, "no hook yet: {}", r.text());
    let hook = Arc::new(Resizes::default());
    svc.set_online_resize(hook.clone());
    let r = action(
        &s,
        &vid,
        json!({ "os-extend": { "new_size": 2 } }),
        Some("3.42"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let shown = wait_for(&s, &vid, "in-use").await;
    assert_eq!(shown["size"], 2);
    assert_eq!(
        hook.0.lock().unwrap().as_slice(),
        [("srv1".to_string(), vid.clone(), 2u64 << 30)]
    );
    assert!(s.storage.state().extends.last().unwrap().2);
    // Detach: detaching, then available.
    assert_eq!(svc.begin_detach("srv9", &vid).unwrap_err().status, 404);
    let d = svc.begin_detach("srv1", &vid).unwrap();
    assert_eq!(status_of(&s, &vid).await["status"], "detaching");
    svc.detach_failed(&d.id, "guest holds it").unwrap();
    assert_eq!(status_of(&s, &vid).await["status"], "in-use");
    let d = svc.begin_detach("srv1", &vid).unwrap();
    svc.detach_done(&d.id).unwrap();
    let shown = status_of(&s, &vid).await;
    assert_eq!(shown["status"], "available");
    assert_eq!(shown["attachments"], json!([]));
    // A failed attach rolls back.
    let a = svc.reserve(&reserve_req(&s, &vid, "srv2")).unwrap();
    svc.attach_failed(&a.id, "no slot").unwrap();
    assert_eq!(status_of(&s, &vid).await["status"], "available");
    assert!(svc.attachments_of_server("srv2").unwrap().is_empty());
}

#[tokio::test]
async fn multiattach_types_allow_several_servers() {
    let s = start().await;
    let svc = volume_service(&s);
    let r = s
        .post(
            &format!("/v3/{}/types", s.admin_project),
            &s.admin,
            json!({ "volume_type": { "name": "shared",
                    "extra_specs": { "multiattach": "<is> True" } } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = available(&s, json!({ "size": 1, "volume_type": "shared" })).await;
    assert_eq!(v["multiattach"], true);
    let vid = v["id"].as_str().unwrap().to_string();
    let a1 = svc.reserve(&reserve_req(&s, &vid, "srv1")).unwrap();
    svc.attach_done(&a1.id).unwrap();
    let a2 = svc.reserve(&reserve_req(&s, &vid, "srv2")).unwrap();
    assert_eq!(status_of(&s, &vid).await["status"], "in-use");
    svc.attach_done(&a2.id).unwrap();
    assert_eq!(
        status_of(&s, &vid).await["attachments"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let d = svc.begin_detach("srv1", &vid).unwrap();
    assert_eq!(status_of(&s, &vid).await["status"], "in-use");
    svc.detach_done(&d.id).unwrap();
    assert_eq!(status_of(&s, &vid).await["status"], "in-use");
    let d = svc.begin_detach("srv2", &vid).unwrap();
    svc.detach_done(&d.id).unwrap();
    assert_eq!(status_of(&s, &vid).await["status"], "available");
}

#[tokio::test]
async fn extend_an_available_volume_and_reset_status() {
    let s = start().await;
    let v = available(&s, json!({ "size": 1 })).await;
    let vid = v["id"].as_str().unwrap().to_string();
    let r = action(&s, &vid, json!({ "os-extend": { "new_size": 1 } }), None).await;
    assert_eq!(r.status, 400);
    let r = action(&s, &vid, json!({ "os-extend": { "new_size": 3 } }), None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let shown = wait_for(&s, &vid, "available").await;
    assert_eq!(shown["size"], 3);
    assert_eq!(
        s.storage.state().extends.last().unwrap(),
        &(vid.clone(), 3u64 << 30, false)
    );
    let r = action(
        &s,
        &vid,
        json!({ "os-reset_status": { "status": "error" } }),
        None,
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(status_of(&s, &vid).await["status"], "error");
    let r = action(
        &s,
        &vid,
        json!({ "os-reset_status": { "status": "bogus" } }),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = s
        .post(
            &format!("/v3/other/volumes/{vid}/action"),
            &s.alice,
            json!({ "os-reset_status": { "status": "available" } }),
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn create_for_boot_copies_the_image_and_its_properties() {
    let s = start().await;
    let svc = volume_service(&s);
    let image = crate::util::new_id();
    s.db.lock()
        .execute(
            "INSERT INTO images (id, name, owner, status, visibility, disk_format, \
             container_format, size, virtual_size, properties, created_at, updated_at) \
             VALUES (?1, 'deb', ?2, 'active', 'private', 'qcow2', 'bare', 1000, 1073741824, \
             '{\"kernel_id\": \"k1\", \"os_command_line\": \"console=ttyS0\"}', 'now', 'now')",
            rusqlite::params![image, s.admin_project],
        )
        .unwrap();
    let id = svc
        .create_for_boot(&s.admin_project, &image, 2, "root")
        .await
        .unwrap();
    let meta = svc.image_metadata(&id).unwrap();
    assert_eq!(meta["kernel_id"], "k1");
    assert_eq!(meta["os_command_line"], "console=ttyS0");
    assert_eq!(meta["image_id"], image);
    assert_eq!(meta["disk_format"], "qcow2");
    assert_eq!(svc.size_gib(&id).unwrap(), 2);
    let shown = status_of(&s, &id).await;
    assert_eq!(shown["bootable"], "true");
    assert_eq!(shown["volume_image_metadata"]["image_name"], "deb");
    match &s.storage.state().volumes[&id].1 {
        crate::host::storage::VolumeSource::Image { path, format } => {
            assert!(path.ends_with(&image));
            assert_eq!(*format, images::ImageFormat::Qcow2);
        }
        other => panic!("{other:?}"),
    }
    // Through the API too; an image larger than the size asked is 400.
    let r = create(&s, json!({ "size": 1, "imageRef": image })).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = create(&s, json!({ "size": 1, "imageRef": crate::util::new_id() })).await;
    assert_eq!(r.status, 400);
    // A failed boot volume is a 400 with the reason.
    s.storage.fail_next_create("no space");
    let e = svc
        .create_for_boot(&s.admin_project, &image, 1, "root")
        .await
        .unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.message.contains("no space"), "{}", e.message);
    // delete_for_server removes it once detached.
    svc.delete_for_server(&id).await.unwrap();
    assert_eq!(svc.size_gib(&id).unwrap_err().status, 404);
}

#[tokio::test]
async fn reconcile_fails_interrupted_creates_and_finishes_deletes() {
    let s = start().await;
    let svc = volume_service(&s);
    let a = available(&s, json!({ "size": 1 })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = available(&s, json!({ "size": 1 })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    {
        let conn = s.db.lock();
        crate::volume::store::set_status(&conn, &a, "creating").unwrap();
        crate::volume::store::set_status(&conn, &b, "deleting").unwrap();
    }
    for t in svc.reconcile() {
        t.await.unwrap();
    }
    assert_eq!(status_of(&s, &a).await["status"], "error");
    wait_for(&s, &b, "gone").await;
}

fn volume_service(s: &Server) -> Arc<crate::volume::VolumeService> {
    s.volume.clone()
}
