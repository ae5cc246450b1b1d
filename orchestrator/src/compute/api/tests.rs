//! In-process tests of the Compute API (through the shared harness). Their
//! servers run on the harness's fake host: no KVM, no `nubo-vmm`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api_test::{self, Server};
use crate::host::vmm::fake::{StartOutcome, CONSOLE_LINE};

/// The image servers boot from (the fake host never reads its file).
const IMAGE: &str = "00000000-0000-0000-0000-0000000000aa";

async fn start() -> Server {
    api_test::start("/compute", 1 << 20).await
}

#[tokio::test]
async fn policy_refusals_are_in_novas_words() {
    let s = start().await;
    let r = s
        .post(
            "/v2.1/servers",
            &s.rita,
            json!({ "server": { "name": "a", "imageRef": "x", "flavorRef": "1" } }),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["forbidden"]["message"],
        "Policy doesn't allow a reader to change servers."
    );
    let path = format!("/v2.1/os-quota-sets/{}", s.admin_project);
    let r = s.get(&path, &s.alice).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["forbidden"]["message"],
        "Policy doesn't allow os_compute_api:os-quota-sets:show to be performed."
    );
    let flavor = json!({ "flavor": { "name": "f", "ram": 64, "vcpus": 1, "disk": 0 } });
    let r = s.post("/v2.1/flavors", &s.alice, flavor).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn a_private_flavor_is_for_the_projects_on_its_list() {
    let s = start().await;
    let flavor = json!({ "flavor": {
        "name": "tiny", "id": "tiny", "ram": 64, "vcpus": 1, "disk": 0,
        "os-flavor-access:is_public": false
    } });
    assert_eq!(s.post("/v2.1/flavors", &s.admin, flavor).await.status, 200);
    assert_eq!(s.get("/v2.1/flavors/tiny", &s.alice).await.status, 404);
    let r = s
        .post(
            "/v2.1/flavors/tiny/action",
            &s.admin,
            json!({ "addTenantAccess": { "tenant": "other" } }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.get("/v2.1/flavors/tiny", &s.alice).await.status, 200);
}

#[tokio::test]
async fn quota_sets_are_read_and_set_through_the_shared_quota() {
    let s = start().await;
    let path = format!("/v2.1/os-quota-sets/{}", s.admin_project);
    let r = s.get(&path, &s.admin).await;
    assert_eq!(r.json()["quota_set"]["instances"], 10);
    let r = s
        .call(
            "PUT",
            &path,
            &s.admin,
            Some("application/json"),
            json!({ "quota_set": { "instances": 3 } })
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["quota_set"]["instances"], 3);
    let r = s.get("/v2.1/limits", &s.admin).await;
    assert_eq!(r.json()["limits"]["absolute"]["maxTotalInstances"], 3);
}

/// A public raw image and a public flavor `tiny` to boot servers with.
async fn image_and_flavor(s: &Server) {
    s.db.lock()
        .execute(
            "INSERT INTO images (id, owner, status, visibility, disk_format, created_at, updated_at) \
             VALUES (?1, ?2, 'active', 'public', 'raw', '', '')",
            rusqlite::params![IMAGE, s.admin_project],
        )
        .unwrap();
    let flavor =
        json!({ "flavor": { "name": "tiny", "id": "tiny", "ram": 64, "vcpus": 1, "disk": 0 } });
    assert_eq!(s.post("/v2.1/flavors", &s.admin, flavor).await.status, 200);
}

/// Creates a server as the admin; returns its id.
async fn create_server(s: &Server, name: &str) -> String {
    let body = json!({ "server": { "name": name, "imageRef": IMAGE, "flavorRef": "tiny" } });
    let r = s.post("/v2.1/servers", &s.admin, body).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["server"]["id"].as_str().unwrap().to_string()
}

/// The server's view, once it has `status` and no task (panics after 10 s).
async fn wait_status(s: &Server, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let server = s.get(&format!("/v2.1/servers/{id}"), &s.admin).await.json()["server"].clone();
        if server["status"] == status && server["OS-EXT-STS:task_state"].is_null() {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "server {id} never became {status}: {server}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts a server action; expects 202.
async fn action(s: &Server, id: &str, body: Value) {
    let r = s
        .post(
            &format!("/v2.1/servers/{id}/action"),
            &s.admin,
            body.clone(),
        )
        .await;
    assert_eq!(
        r.status,
        202,
        "{body}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

#[tokio::test]
async fn a_server_is_built_stopped_started_rebooted_and_deleted() {
    let s = start().await;
    image_and_flavor(&s).await;
    let id = create_server(&s, "a").await;
    let server = wait_status(&s, &id, "ACTIVE").await;
    assert_eq!(server["OS-EXT-STS:power_state"], 1, "{server}");
    assert!(s.vmm.is_running(&id));

    action(&s, &id, json!({ "os-stop": null })).await;
    let server = wait_status(&s, &id, "SHUTOFF").await;
    assert_eq!(server["OS-EXT-STS:power_state"], 4, "{server}");
    assert!(!s.vmm.is_running(&id));

    action(&s, &id, json!({ "os-start": null })).await;
    wait_status(&s, &id, "ACTIVE").await;
    assert!(s.vmm.is_running(&id));

    for kind in ["SOFT", "HARD"] {
        action(&s, &id, json!({ "reboot": { "type": kind } })).await;
        wait_status(&s, &id, "ACTIVE").await;
        assert!(s.vmm.is_running(&id));
    }
    let r = s
        .get(&format!("/v2.1/servers/{id}/os-instance-actions"), &s.admin)
        .await;
    let actions: Vec<String> = r.json()["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_string())
        .collect();
    for want in ["create", "stop", "start", "reboot"] {
        assert!(
            actions.iter().any(|a| a == want),
            "{want} missing from {actions:?}"
        );
    }

    let r = s
        .post(
            &format!("/v2.1/servers/{id}/action"),
            &s.admin,
            json!({ "os-getConsoleOutput": { "length": 10 } }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["output"], format!("{CONSOLE_LINE}\n"));

    let r = s
        .call(
            "DELETE",
            &format!("/v2.1/servers/{id}"),
            &s.admin,
            None,
            b"",
        )
        .await;
    assert_eq!(r.status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get(&format!("/v2.1/servers/{id}"), &s.admin).await.status != 404 {
        assert!(Instant::now() < deadline, "server {id} was never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!s.vmm.has_instance(&id));
}

#[tokio::test]
async fn a_failed_build_is_an_error_with_a_fault() {
    let s = start().await;
    image_and_flavor(&s).await;
    s.vmm
        .set_starts(StartOutcome::Fails("no such kernel".into()));
    let id = create_server(&s, "broken").await;
    let server = wait_status(&s, &id, "ERROR").await;
    let message = server["fault"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "Build of instance {id} aborted: the VMM of server {id} exited (status 1)"
        )) && message.contains("no such kernel"),
        "{server}"
    );
    assert!(!s.vmm.is_running(&id));
}

#[tokio::test]
async fn a_guest_that_powers_off_makes_its_server_shutoff() {
    let s = start().await;
    image_and_flavor(&s).await;
    // Before it was seen running...
    s.vmm.set_starts(StartOutcome::PowersOff);
    let early = create_server(&s, "early").await;
    let server = wait_status(&s, &early, "SHUTOFF").await;
    assert!(server["fault"].is_null(), "{server}");
    // ... and later, noticed by the power-state sync.
    s.vmm.set_starts(StartOutcome::Runs);
    let id = create_server(&s, "later").await;
    wait_status(&s, &id, "ACTIVE").await;
    s.vmm.power_off(&id);
    wait_status(&s, &id, "SHUTOFF").await;
}
