//! In-process tests of the Identity API (through the shared harness).

use serde_json::{json, Value};

use crate::api_test::{self, Server};

async fn start() -> Server {
    api_test::start("/identity", 1 << 20).await
}

async fn patch(s: &Server, path: &str, token: &str, body: Value) -> api_test::Resp {
    s.call(
        "PATCH",
        path,
        token,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn a_reader_is_refused_in_keystones_words() {
    let s = start().await;
    let r = s
        .post(
            "/v3/projects",
            &s.rita,
            json!({ "project": { "name": "p2" } }),
        )
        .await;
    assert_eq!(r.status, 403);
    let e = &r.json()["error"];
    assert_eq!(e["title"], "Forbidden");
    assert!(e["message"].as_str().unwrap().contains("admin required"));
}

#[tokio::test]
async fn a_project_is_created_changed_and_deleted_once_it_holds_no_server() {
    let s = start().await;
    let r = s
        .post(
            "/v3/projects",
            &s.admin,
            json!({ "project": { "name": "p2" } }),
        )
        .await;
    assert_eq!(r.status, 201);
    let id = r.json()["project"]["id"].as_str().unwrap().to_string();
    let dup = s
        .post(
            "/v3/projects",
            &s.admin,
            json!({ "project": { "name": "p2" } }),
        )
        .await;
    assert_eq!(dup.status, 409);
    let r = patch(
        &s,
        &format!("/v3/projects/{id}"),
        &s.admin,
        json!({ "project": { "description": "second", "enabled": false } }),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["project"]["description"], "second");
    assert_eq!(r.json()["project"]["enabled"], false);
    s.db.lock()
        .execute(
            "INSERT INTO servers (id, name, project_id, user_id, image_id, flavor_id, vcpus, \
             ram, disk, status, created_at, updated_at) \
             VALUES ('s1', 's1', ?1, 'u', 'i', 'f', 1, 64, 0, 'SHUTOFF', 'now', 'now')",
            [&id],
        )
        .unwrap();
    let path = format!("/v3/projects/{id}");
    let r = s.call("DELETE", &path, &s.admin, None, b"").await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("still has 1 server(s)"));
    s.db.lock()
        .execute("DELETE FROM servers WHERE id = 's1'", [])
        .unwrap();
    let r = s.call("DELETE", &path, &s.admin, None, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(s.get(&path, &s.admin).await.status, 404);
}

#[tokio::test]
async fn the_catalog_lists_every_service_from_the_one_list() {
    let s = start().await;
    let r = s.get("/v3/auth/catalog", &s.alice).await;
    assert_eq!(r.status, 200);
    let types: Vec<String> = r.json()["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "identity",
            "compute",
            "image",
            "network",
            "block-storage",
            "volumev3"
        ]
    );
    // Block Storage's URL carries the token's project.
    let url = r.json()["catalog"][5]["endpoints"][0]["url"].clone();
    assert!(url.as_str().unwrap().ends_with("/volume/v3/other"), "{url}");
    let r = s.get("/v3/services", &s.admin).await;
    assert_eq!(r.json()["services"].as_array().unwrap().len(), 6);
}
