//! Tests of the Image v2 API.

use serde_json::{json, Value};

use crate::identity::AuthContext;
use crate::image::api::list::parse_sort;
use crate::image::service::{lookup_visible, patch_key};
use tokio::io::AsyncReadExt;

#[test]
fn patch_paths_decode_to_one_key() {
    assert_eq!(patch_key(&json!("/name")).unwrap(), "name");
    assert_eq!(patch_key(&json!("/a~1b~0c")).unwrap(), "a/b~c");
    assert_eq!(patch_key(&json!(["name"])).unwrap(), "name");
    assert!(patch_key(&json!("name")).is_err());
    assert!(patch_key(&json!("/tags/0")).is_err());
    assert!(patch_key(&json!("/")).is_err());
}

#[test]
fn sort_parameters() {
    let q = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        parse_sort(&q(&[])).unwrap(),
        vec![("created_at".into(), true), ("id".into(), true)]
    );
    assert_eq!(
        parse_sort(&q(&[("sort", "name:asc,size")])).unwrap(),
        vec![
            ("name".into(), false),
            ("size".into(), true),
            ("id".into(), true)
        ]
    );
    assert_eq!(
        parse_sort(&q(&[("sort_key", "name"), ("sort_dir", "asc")])).unwrap(),
        vec![("name".into(), false), ("id".into(), false)]
    );
    assert!(parse_sort(&q(&[("sort_key", "bogus")])).is_err());
    assert!(parse_sort(&q(&[("sort_dir", "up")])).is_err());
}

// ------------------------------------------------------------ over HTTP

use std::time::Duration;

use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;

use crate::api_test::{self, Resp, Server};

async fn start(max_image_size: u64) -> Server {
    api_test::start("/image", max_image_size).await
}

impl Server {
    async fn patch(&self, path: &str, token: &str, ops: Value) -> Resp {
        self.call(
            "PATCH",
            path,
            token,
            Some("application/openstack-images-v2.1-json-patch"),
            ops.to_string().as_bytes(),
        )
        .await
    }

    async fn upload(&self, id: &str, token: &str, data: &[u8]) -> Resp {
        self.call(
            "PUT",
            &format!("/v2/images/{id}/file"),
            token,
            Some("application/octet-stream"),
            data,
        )
        .await
    }

    async fn create(&self, token: &str, body: Value) -> String {
        let r = self.post("/v2/images", token, body).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["id"].as_str().unwrap().to_string()
    }

    fn store_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect()
    }
}

#[tokio::test]
async fn image_lifecycle() {
    let s = start(1 << 20).await;
    let t = &s.admin;
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let md5 = hex::encode(Md5::digest(&data));

    let r = s
        .post(
            "/v2/images",
            t,
            json!({
                "name": "img1", "disk_format": "raw", "container_format": "bare",
                "owner_specified.openstack.md5": md5, "tags": ["a", "b"], "min_ram": 64
            }),
        )
        .await;
    assert_eq!(r.status, 201);
    let img = r.json();
    let id = img["id"].as_str().unwrap().to_string();
    assert_eq!(img["status"], "queued");
    assert_eq!(img["visibility"], "shared");
    assert_eq!(img["owner"], s.admin_project.as_str());
    assert_eq!(img["checksum"], Value::Null);
    assert_eq!(img["owner_specified.openstack.md5"], md5.as_str());
    assert_eq!(img["self"], format!("/v2/images/{id}"));
    assert_eq!(img["file"], format!("/v2/images/{id}/file"));
    assert_eq!(img["tags"], json!(["a", "b"]));

    // No data yet.
    assert_eq!(s.get(&format!("/v2/images/{id}/file"), t).await.status, 204);

    let r = s.upload(&id, t, &data).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let img = s.get(&format!("/v2/images/{id}"), t).await.json();
    assert_eq!(img["status"], "active");
    assert_eq!(img["checksum"], md5.as_str());
    assert_eq!(img["size"], 70_000);
    assert_eq!(img["virtual_size"], 70_000);
    assert_eq!(img["os_hash_algo"], "sha512");
    assert_eq!(img["os_hash_value"].as_str().unwrap().len(), 128);
    // A second upload is refused.
    assert_eq!(s.upload(&id, t, &data).await.status, 409);

    let r = s.get(&format!("/v2/images/{id}/file"), t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-md5"), Some(md5.as_str()));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, data);

    // Patch: replace name, add and remove properties.
    let r = s
        .patch(
            &format!("/v2/images/{id}"),
            t,
            json!([
                {"op": "replace", "path": "/name", "value": "img2"},
                {"op": "add", "path": "/foo", "value": "bar"},
                {"op": "add", "path": "/tags", "value": ["x"]},
                {"op": "replace", "path": "/protected", "value": true},
                {"op": "remove", "path": "/owner_specified.openstack.md5"}
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let img = r.json();
    assert_eq!(img["name"], "img2");
    assert_eq!(img["foo"], "bar");
    assert_eq!(img["tags"], json!(["x"]));
    assert_eq!(img["protected"], true);
    assert!(img.get("owner_specified.openstack.md5").is_none());
    // Patch errors.
    let p = format!("/v2/images/{id}");
    let one = |op: Value| json!([op]);
    let cases = [
        (json!({"op": "remove", "path": "/nope"}), 409),
        (json!({"op": "replace", "path": "/nope", "value": "x"}), 409),
        (
            json!({"op": "replace", "path": "/status", "value": "x"}),
            403,
        ),
        (json!({"op": "remove", "path": "/name"}), 403),
        (
            json!({"op": "replace", "path": "/disk_format", "value": "qcow2"}),
            403,
        ),
        (json!({"op": "add", "path": "/num", "value": 1}), 400),
        (json!({"op": "move", "path": "/name", "value": "x"}), 400),
        (
            json!({"op": "replace", "path": "/min_ram", "value": -1}),
            400,
        ),
        (
            json!({"op": "replace", "path": "/visibility", "value": "nope"}),
            400,
        ),
    ];
    for (op, want) in cases {
        let r = s.patch(&p, t, one(op.clone())).await;
        assert_eq!(r.status, want, "{op}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = s
        .call("PATCH", &p, t, Some("application/json"), b"[]")
        .await;
    assert_eq!(r.status, 415);

    // Tags.
    assert_eq!(
        s.call("PUT", &format!("{p}/tags/y"), t, None, b"")
            .await
            .status,
        204
    );
    assert_eq!(
        s.call("DELETE", &format!("{p}/tags/x"), t, None, b"")
            .await
            .status,
        204
    );
    assert_eq!(
        s.call("DELETE", &format!("{p}/tags/x"), t, None, b"")
            .await
            .status,
        404
    );
    assert_eq!(s.get(&p, t).await.json()["tags"], json!(["y"]));

    // Protected: no delete.
    let r = s.call("DELETE", &p, t, None, b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["message"],
        format!("Image {id} is protected and cannot be deleted.")
    );
    let r = s
        .patch(
            &p,
            t,
            json!([{"op": "replace", "path": "/protected", "value": false}]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(s.store_files().contains(&id));
    assert_eq!(s.call("DELETE", &p, t, None, b"").await.status, 204);
    assert_eq!(s.get(&p, t).await.status, 404);
    assert!(s.store_files().is_empty());
    assert_eq!(s.call("DELETE", &p, t, None, b"").await.status, 404);
}

#[tokio::test]
async fn create_validation() {
    let s = start(1 << 20).await;
    let t = &s.admin;
    let cases = [
        (json!({"name": "x", "num": 1}), 400),
        (json!({"name": "x", "disk_format": "vmdk"}), 400),
        (json!({"name": "x", "container_format": "docker"}), 400),
        (json!({"name": "x", "visibility": "everyone"}), 400),
        (json!({"name": "x", "protected": "yes"}), 400),
        (json!({"name": "x", "min_disk": "1"}), 400),
        (json!({"name": "x", "status": "active"}), 403),
        (json!({"name": "x", "checksum": "00"}), 403),
        (json!({"name": "x", "os_hash_value": "00"}), 403),
        (json!({"name": "x", "deleted": "false"}), 403),
        (json!({"name": "x", "id": "not-a-uuid"}), 400),
        (json!(["x"]), 400),
    ];
    for (body, want) in cases {
        let r = s.post("/v2/images", t, body.clone()).await;
        assert_eq!(
            r.status,
            want,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e = r.json();
        assert_eq!(e["code"], want, "Glance-style error body: {e}");
    }
    let r = s
        .call("POST", "/v2/images", t, Some("application/json"), b"{bad")
        .await;
    assert_eq!(r.status, 400);
    // A client-chosen id; a second create with it conflicts.
    let id = "6A5B6C4E-1111-4222-8333-944445555666";
    let r = s.post("/v2/images", t, json!({"id": id})).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["id"], id.to_ascii_lowercase());
    assert_eq!(s.post("/v2/images", t, json!({"id": id})).await.status, 409);
    // Upload needs both formats.
    let r = s.upload(&id.to_ascii_lowercase(), t, b"data").await;
    assert_eq!(r.status, 400);
    // Readers cannot create; members cannot publish.
    assert_eq!(
        s.post("/v2/images", &s.rita, json!({"name": "r"}))
            .await
            .status,
        403
    );
    let r = s
        .post(
            "/v2/images",
            &s.alice,
            json!({"name": "p", "visibility": "public"}),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .post(
            "/v2/images",
            &s.alice,
            json!({"name": "p", "owner": "someone"}),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(s.get("/v2/images/nope", t).await.status, 404);
    assert_eq!(s.get("/v2/images", "bad-token").await.status, 401);
    let r = s.get("/v2/schemas/image", t).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "image");
}

#[tokio::test]
async fn failed_uploads_kill_the_image() {
    let s = start(64 * 1024).await;
    let t = &s.admin;
    // Corrupt qcow2.
    let id = s
        .create(
            t,
            json!({"name": "q", "disk_format": "qcow2", "container_format": "bare"}),
        )
        .await;
    let mut bad = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bad.extend(std::iter::repeat_n(0xffu8, 4000));
    let r = s.upload(&id, t, &bad).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["message"].as_str().unwrap().contains("qcow2"));
    let img = s.get(&format!("/v2/images/{id}"), t).await.json();
    assert_eq!(img["status"], "killed");
    assert_eq!(img["checksum"], Value::Null);
    assert!(s.store_files().is_empty(), "{:?}", s.store_files());
    // A killed image takes no more data.
    assert_eq!(s.upload(&id, t, &bad).await.status, 409);

    // Too large.
    let id = s
        .create(
            t,
            json!({"name": "big", "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let r = s.upload(&id, t, &vec![0u8; 64 * 1024 + 1]).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        s.get(&format!("/v2/images/{id}"), t).await.json()["status"],
        "killed"
    );
    assert!(s.store_files().is_empty(), "{:?}", s.store_files());

    // Wrong content type.
    let id = s
        .create(
            t,
            json!({"name": "ct", "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let r = s
        .call(
            "PUT",
            &format!("/v2/images/{id}/file"),
            t,
            Some("text/plain"),
            b"x",
        )
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(
        s.get(&format!("/v2/images/{id}"), t).await.json()["status"],
        "queued"
    );
}

#[tokio::test]
async fn visibility_and_ownership() {
    let s = start(1 << 20).await;
    let private = s
        .create(
            &s.admin,
            json!({"name": "adm-private", "visibility": "private"}),
        )
        .await;
    let public = s
        .create(
            &s.admin,
            json!({"name": "adm-public", "visibility": "public"}),
        )
        .await;
    let community = s
        .create(
            &s.admin,
            json!({"name": "adm-community", "visibility": "community"}),
        )
        .await;
    let mine = s.create(&s.alice, json!({"name": "alice-img"})).await;

    let a = &s.alice;
    assert_eq!(s.get(&format!("/v2/images/{private}"), a).await.status, 404);
    assert_eq!(s.get(&format!("/v2/images/{public}"), a).await.status, 200);
    assert_eq!(
        s.get(&format!("/v2/images/{community}"), a).await.status,
        200
    );
    let names = |v: Value| -> Vec<String> {
        let mut n: Vec<String> = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(s.get("/v2/images", a).await.json()),
        vec!["adm-public", "alice-img"]
    );
    assert_eq!(
        names(s.get("/v2/images?visibility=community", a).await.json()),
        vec!["adm-community"]
    );
    // Visible but not owned: 403 on changes; invisible: 404.
    let p = format!("/v2/images/{public}");
    assert_eq!(s.call("DELETE", &p, a, None, b"").await.status, 403);
    let ops = json!([{"op": "replace", "path": "/name", "value": "x"}]);
    assert_eq!(s.patch(&p, a, ops.clone()).await.status, 403);
    let p = format!("/v2/images/{private}");
    assert_eq!(s.call("DELETE", &p, a, None, b"").await.status, 404);
    assert_eq!(s.patch(&p, a, ops.clone()).await.status, 404);
    // Admin sees everything, and may change other projects' images.
    assert_eq!(names(s.get("/v2/images", &s.admin).await.json()).len(), 4);
    let p = format!("/v2/images/{mine}");
    assert_eq!(s.patch(&p, &s.admin, ops.clone()).await.status, 200);
    // Readers can read but not write.
    assert_eq!(s.get(&p, &s.rita).await.status, 404);
    assert_eq!(
        s.get(&format!("/v2/images/{private}"), &s.rita)
            .await
            .status,
        200
    );
    let p = format!("/v2/images/{private}");
    assert_eq!(s.patch(&p, &s.rita, ops).await.status, 403);
    assert_eq!(s.call("DELETE", &p, &s.rita, None, b"").await.status, 403);
}

#[tokio::test]
async fn list_filters_sorting_and_pagination() {
    let s = start(1 << 20).await;
    let t = &s.admin;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut body = json!({
            "name": format!("img{i}"),
            "disk_format": if i % 2 == 0 { "raw" } else { "qcow2" },
            "container_format": "bare",
            "tags": if i < 3 { json!(["small"]) } else { json!([]) },
            "kind": if i == 4 { "special" } else { "plain" },
        });
        if i == 6 {
            body["os_hidden"] = json!(true);
        }
        ids.push(s.create(t, body).await);
    }
    let data = vec![7u8; 1000];
    assert_eq!(s.upload(&ids[0], t, &data).await.status, 204);
    let names = |v: &Value| -> Vec<String> {
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = s.get("/v2/images?sort=name:asc", t).await.json();
    assert_eq!(r["first"], "/v2/images");
    assert_eq!(r["schema"], "/v2/schemas/images");
    assert!(r.get("next").is_none());
    assert_eq!(names(&r), ["img0", "img1", "img2", "img3", "img4", "img5"]);
    let r = s.get("/v2/images?os_hidden=true", t).await.json();
    assert_eq!(names(&r), ["img6"]);
    let r = s
        .get("/v2/images?sort_key=name&sort_dir=desc&disk_format=raw", t)
        .await
        .json();
    assert_eq!(names(&r), ["img4", "img2", "img0"]);
    let r = s.get("/v2/images?tag=small&sort=name:asc", t).await.json();
    assert_eq!(names(&r), ["img0", "img1", "img2"]);
    let r = s.get("/v2/images?kind=special", t).await.json();
    assert_eq!(names(&r), ["img4"]);
    let r = s.get("/v2/images?status=active", t).await.json();
    assert_eq!(names(&r), ["img0"]);
    let r = s
        .get("/v2/images?size_min=500&size_max=1000", t)
        .await
        .json();
    assert_eq!(names(&r), ["img0"]);
    let r = s.get("/v2/images?name=img3", t).await.json();
    assert_eq!(names(&r), ["img3"]);
    let r = s
        .get("/v2/images?name=in:img3,img5&sort=name", t)
        .await
        .json();
    assert_eq!(names(&r), ["img5", "img3"]);
    for bad in [
        "limit=x",
        "limit=-1",
        "sort_key=bogus",
        "marker=00000000-0000-4000-8000-000000000000",
        "protected=maybe",
        "visibility=everyone",
    ] {
        let r = s.get(&format!("/v2/images?{bad}"), t).await;
        assert_eq!(r.status, 400, "{bad}");
    }

    // Follow the next links, two at a time.
    let mut seen = Vec::new();
    let mut url = "/v2/images?limit=2&sort=name:asc".to_string();
    let mut pages = 0;
    loop {
        let r = s.get(&url, t).await;
        assert_eq!(r.status, 200, "{url}");
        let v = r.json();
        seen.extend(names(&v));
        pages += 1;
        match v.get("next").and_then(Value::as_str) {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["img0", "img1", "img2", "img3", "img4", "img5"]);
    // Default order: newest first (ties broken by id), with a marker.
    let all = s.get("/v2/images", t).await.json();
    let order: Vec<&str> = all["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let r = s
        .get(&format!("/v2/images?marker={}", order[1]), t)
        .await
        .json();
    let rest: Vec<&str> = r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest, order[2..]);
}

#[tokio::test]
async fn lookup_visible_follows_the_get_rules() {
    let s = start(1 << 20).await;
    let private = s
        .create(
            &s.admin,
            json!({"name": "p", "visibility": "private", "disk_format": "raw",
                "container_format": "bare", "min_disk": 2, "hw_x": "y"}),
        )
        .await;
    let public = s
        .create(&s.admin, json!({"name": "q", "visibility": "public"}))
        .await;
    let alice = AuthContext {
        user_id: "u".into(),
        user_name: "alice".into(),
        project_id: "other".into(),
        project_name: "other".into(),
        roles: vec!["member".into()],
    };
    let owner = AuthContext {
        project_id: s.admin_project.clone(),
        roles: vec!["reader".into()],
        ..alice.clone()
    };
    let conn = s.db.lock();
    assert_eq!(lookup_visible(&conn, &alice, &private).unwrap(), None);
    assert_eq!(lookup_visible(&conn, &alice, "nope").unwrap(), None);
    let row = lookup_visible(&conn, &alice, &public).unwrap().unwrap();
    assert_eq!(row.name.as_deref(), Some("q"));
    assert_eq!(row.status, "queued");
    let row = lookup_visible(&conn, &owner, &private).unwrap().unwrap();
    assert_eq!(row.disk_format.as_deref(), Some("raw"));
    assert_eq!(row.min_disk, 2);
    assert_eq!(row.size, None);
    assert_eq!(row.properties["hw_x"], "y");
    assert_eq!(row.owner, s.admin_project);
}

#[tokio::test]
async fn an_image_deleted_during_its_upload_stays_deleted() {
    let s = start(1 << 20).await;
    let t = &s.admin;
    let id = s
        .create(
            t,
            json!({"name": "d", "disk_format": "raw", "container_format": "bare"}),
        )
        .await;
    let total = 200_000usize;
    let mut up = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "PUT /image/v2/images/{id}/file HTTP/1.1\r\nHost: {}\r\nX-Auth-Token: {t}\r\n\
         Connection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n",
        s.addr
    );
    up.write_all(head.as_bytes()).await.unwrap();
    up.write_all(&vec![1u8; total / 2]).await.unwrap();
    let p = format!("/v2/images/{id}");
    let mut saw_saving = false;
    for _ in 0..200 {
        if s.get(&p, t).await.json()["status"] == "saving" {
            saw_saving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_saving);
    assert_eq!(s.call("DELETE", &p, t, None, b"").await.status, 204);
    up.write_all(&vec![1u8; total - total / 2]).await.unwrap();
    let mut raw = Vec::new();
    let _ = up.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 410"), "{text}");
    assert_eq!(s.get(&p, t).await.status, 404);
    assert!(s.store_files().is_empty(), "{:?}", s.store_files());
}
