//! In-process tests of the Compute API (through the shared harness).

use serde_json::json;

use crate::api_test::{self, Server};

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
