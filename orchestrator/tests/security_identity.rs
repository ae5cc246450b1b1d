//! Security hardening of identity, images and flavors (issue #9, items 3 to
//! 5), against the real `nubo` daemon:
//!
//! - a kernel or ramdisk image named by `kernel_id`/`ramdisk_id` must be
//!   visible to the booting project, as the boot image must;
//! - a token got from a token keeps the first token's expiry and audit chain
//!   and dies with it; a new password, a disabled user or project, a removed
//!   role assignment or a deleted role revoke tokens for good;
//! - a private flavor is seen and booted only by the projects on its access
//!   list (and admins), managed with Nova's `os-flavor-access`.
//!
//! Only the tests that boot a guest need KVM (they skip without it).

mod common;

use std::time::Duration;

use common::{Cloud, Opts, Resp};
use serde_json::{json, Value};
use vmm::tiny_guest::{elf, TinyEnd, TinyEntry};

const BUILD_LIMIT: Duration = Duration::from_secs(30);

/// Creates a project (as admin); returns its id.
fn project(c: &Cloud, admin: &str, name: &str) -> String {
    let r = c.req(
        "POST",
        "/identity/v3/projects",
        Some(admin),
        Some(&json!({ "project": { "name": name } })),
    );
    c.expect(&format!("create project {name}"), &r, 201);
    r.json()["project"]["id"].as_str().unwrap().to_string()
}

/// Creates a user (as admin); returns its id.
fn user(c: &Cloud, admin: &str, name: &str, password: &str) -> String {
    let r = c.req(
        "POST",
        "/identity/v3/users",
        Some(admin),
        Some(&json!({ "user": { "name": name, "password": password } })),
    );
    c.expect(&format!("create user {name}"), &r, 201);
    r.json()["user"]["id"].as_str().unwrap().to_string()
}

/// The id of the role named `name`.
fn role_id(c: &Cloud, admin: &str, name: &str) -> String {
    let r = c.req(
        "GET",
        &format!("/identity/v3/roles?name={name}"),
        Some(admin),
        None,
    );
    c.expect(&format!("find role {name}"), &r, 200);
    r.json()["roles"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no role {name}: {r}"))
        .to_string()
}

/// The role assignment's URL.
fn assignment(project: &str, user: &str, role: &str) -> String {
    format!("/identity/v3/projects/{project}/users/{user}/roles/{role}")
}

/// Grants `role` on `project` to `user` (as admin).
fn grant(c: &Cloud, admin: &str, project: &str, user: &str, role: &str) {
    let r = c.req("PUT", &assignment(project, user, role), Some(admin), None);
    c.expect("grant a role", &r, 204);
}

/// A new project with a new user holding `member` on it; returns the
/// project id, the user id and a token of the user on the project.
fn member_project(c: &Cloud, admin: &str, name: &str) -> (String, String, String) {
    let p = project(c, admin, name);
    let uname = format!("{name}-user");
    let password = format!("pw-of-{uname}");
    let u = user(c, admin, &uname, &password);
    grant(c, admin, &p, &u, &role_id(c, admin, "member"));
    let t = c.token_for(&uname, &password, name);
    (p, u, t)
}

/// Whether `token` is accepted (an authenticated identity call).
fn accepted(c: &Cloud, token: &str) -> bool {
    let r = c.req("GET", "/identity/v3/auth/projects", Some(token), None);
    match r.status {
        200 => true,
        401 => false,
        _ => panic!("unexpected answer checking a token: {r}"),
    }
}

/// `POST /identity/v3/auth/tokens` with the token method; returns the new
/// token and its body.
fn rescope(c: &Cloud, token: &str, project: &str) -> (String, Value) {
    let body = json!({ "auth": {
        "identity": { "methods": ["token"], "token": { "id": token } },
        "scope": { "project": { "id": project } }
    } });
    let r = c.req("POST", "/identity/v3/auth/tokens", None, Some(&body));
    c.expect("a token from a token", &r, 201);
    let t = r.header("x-subject-token").unwrap().to_string();
    (t, r.json())
}

/// Revokes `subject` with the `by` token.
fn revoke_token(c: &Cloud, by: &str, subject: &str) {
    let r = c.raw(
        "DELETE",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", by), ("X-Subject-Token", subject)],
        None,
    );
    c.expect("revoke a token", &r, 204);
}

fn audit_ids(body: &Value) -> Vec<String> {
    body["token"]["audit_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- item 3

/// Uploads an image of `body` with `data`, as `token`; returns its id.
fn image_with(c: &Cloud, token: &str, body: Value, data: &[u8]) -> String {
    let id = c.image_record_with(token, body);
    let r = c.upload(token, &id, data);
    c.expect("upload", &r, 204);
    id
}

/// A private kernel (or ramdisk) of one project cannot be booted by another
/// through `kernel_id`/`ramdisk_id` on an image of its own: `POST /servers`
/// answers 400 as for an unknown image, as it does for a hidden `imageRef`.
/// A project's own kernel still boots.
#[test]
fn kernel_and_ramdisk_of_another_project_are_not_bootable() {
    let c = Cloud::start(Opts::default());
    let admin = c.admin_token();
    let flavor = c.flavor(&admin, "tiny", 1, 64);
    let kernel = elf(TinyEntry::Long64, TinyEnd::Halt);
    let secret_kernel = image_with(
        &c,
        &admin,
        json!({ "name": "secret-kernel", "disk_format": "aki", "container_format": "aki",
                "visibility": "private" }),
        &kernel,
    );
    let mut ramdisk = b"\x1f\x8b\x08\x00secret ramdisk bytes".to_vec();
    ramdisk.resize(4096, 0);
    let secret_ramdisk = image_with(
        &c,
        &admin,
        json!({ "name": "secret-ramdisk", "disk_format": "ari", "container_format": "ari",
                "visibility": "private" }),
        &ramdisk,
    );
    let (_, _, t2) = member_project(&c, &admin, "p2");
    for id in [&secret_kernel, &secret_ramdisk] {
        let r = c.image(&t2, id);
        c.expect("p2 shows admin's private kernel or ramdisk", &r, 404);
    }

    let steal_kernel = image_with(
        &c,
        &t2,
        json!({ "name": "steal-kernel", "disk_format": "raw", "container_format": "bare",
                "kernel_id": secret_kernel }),
        &[0u8; 4096],
    );
    let r = c.create_server_resp(&t2, "thief", &steal_kernel, &flavor);
    c.expect("p2 boots admin's private kernel", &r, 400);
    assert!(
        r.text()
            .contains(&format!("Image {secret_kernel} could not be found")),
        "{r}"
    );

    let own_kernel = image_with(
        &c,
        &t2,
        json!({ "name": "own-kernel", "disk_format": "aki", "container_format": "aki" }),
        &kernel,
    );
    let steal_ramdisk = image_with(
        &c,
        &t2,
        json!({ "name": "steal-ramdisk", "disk_format": "raw", "container_format": "bare",
                "kernel_id": own_kernel, "ramdisk_id": secret_ramdisk }),
        &[0u8; 4096],
    );
    let r = c.create_server_resp(&t2, "thief2", &steal_ramdisk, &flavor);
    c.expect("p2 boots admin's private ramdisk", &r, 400);
    assert!(
        r.text()
            .contains(&format!("Image {secret_ramdisk} could not be found")),
        "{r}"
    );
    let r = c.req("GET", "/compute/v2.1/servers", Some(&t2), None);
    c.expect("p2 lists servers", &r, 200);
    assert_eq!(r.json()["servers"], json!([]), "no server was created: {r}");

    // The project's own kernel boots, also as seen by the build (which
    // checks visibility again, as the server's user on its project).
    if !common::kvm_available() {
        return;
    }
    let own = image_with(
        &c,
        &t2,
        json!({ "name": "own-disk", "disk_format": "raw", "container_format": "bare",
                "kernel_id": own_kernel }),
        &[0u8; 4096],
    );
    let id = c.create_server(&t2, "honest", &own, &flavor);
    c.wait_status(&t2, &id, "ACTIVE", &["BUILD"], BUILD_LIMIT);
}

// ---------------------------------------------------------------- item 4

/// A token got from a token keeps the first token's expiry and audit chain
/// (`audit_ids` = [its own id, the first token's id]); revoking the first
/// token revokes every token got from it, and revoking a token got from it
/// leaves the first one alone.
#[test]
fn token_from_token_keeps_expiry_and_chain_and_dies_with_its_origin() {
    let c = Cloud::start(Opts::default());
    let (t0, b0) = c.auth("admin", common::ADMIN_PASSWORD, "admin");
    let project = b0["token"]["project"]["id"].as_str().unwrap().to_string();
    let expires = b0["token"]["expires_at"].clone();
    let a0 = audit_ids(&b0);
    assert_eq!(a0.len(), 1, "a password token has one audit id: {b0}");
    std::thread::sleep(Duration::from_millis(1100));

    let (t1, b1) = rescope(&c, &t0, &project);
    assert_eq!(
        b1["token"]["expires_at"], expires,
        "a token from a token expires with its origin: {b1}"
    );
    let a1 = audit_ids(&b1);
    assert_eq!(a1.len(), 2, "{b1}");
    assert_ne!(a1[0], a0[0], "a new token has its own audit id: {b1}");
    assert_eq!(a1[1], a0[0], "and the chain's: {b1}");
    assert!(
        b1["token"]["methods"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("token"))),
        "{b1}"
    );
    let (t2, b2) = rescope(&c, &t1, &project);
    assert_eq!(b2["token"]["expires_at"], expires, "{b2}");
    let a2 = audit_ids(&b2);
    assert_eq!(a2.len(), 2, "{b2}");
    assert_eq!(
        a2[1], a0[0],
        "the chain's id is the first token's, at any depth: {b2}"
    );
    // Validation shows the same chain.
    let r = c.raw(
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &t0), ("X-Subject-Token", &t2)],
        None,
    );
    c.expect("validate the grandchild", &r, 200);
    assert_eq!(audit_ids(&r.json()), a2, "{r}");

    let other = c.admin_token();
    revoke_token(&c, &other, &t0);
    for (what, t) in [("origin", &t0), ("child", &t1), ("grandchild", &t2)] {
        assert!(!accepted(&c, t), "the {what} must die with its origin");
    }
    assert!(accepted(&c, &other), "an unrelated token lives on");

    // Revoking a token got from a token leaves its origin alone.
    let (t3, _) = rescope(&c, &other, &project);
    revoke_token(&c, &other, &t3);
    assert!(!accepted(&c, &t3));
    assert!(
        accepted(&c, &other),
        "the origin of a revoked child lives on"
    );
}

/// A new password, a disabled user or project, a removed role assignment, a
/// deleted role, project or user revoke the tokens they stood for, for good:
/// enabling the user or project again does not bring them back.
#[test]
fn identity_changes_revoke_tokens() {
    let c = Cloud::start(Opts::default());
    let admin = c.admin_token();
    let (p2, u2, _) = member_project(&c, &admin, "p2");
    let p3 = project(&c, &admin, "p3");
    grant(&c, &admin, &p3, &u2, &role_id(&c, &admin, "member"));
    let mut password = "pw-of-p2-user".to_string();
    let user_url = format!("/identity/v3/users/{u2}");
    let patch_user = |body: Value| {
        let r = c.req(
            "PATCH",
            &user_url,
            Some(&admin),
            Some(&json!({ "user": body })),
        );
        c.expect("update u2", &r, 200);
    };

    // A new password.
    let t = c.token_for("p2-user", &password, "p2");
    password = "a-new-password".into();
    patch_user(json!({ "password": password }));
    assert!(
        !accepted(&c, &t),
        "a new password revokes the user's tokens"
    );

    // Disabling the user, then enabling it again.
    let t = c.token_for("p2-user", &password, "p2");
    patch_user(json!({ "enabled": false }));
    patch_user(json!({ "enabled": true }));
    assert!(
        !accepted(&c, &t),
        "disabling the user revokes its tokens for good"
    );

    // Disabling the project, then enabling it again; tokens on other
    // projects live on.
    let t = c.token_for("p2-user", &password, "p2");
    let t3 = c.token_for("p2-user", &password, "p3");
    for enabled in [false, true] {
        let r = c.req(
            "PATCH",
            &format!("/identity/v3/projects/{p2}"),
            Some(&admin),
            Some(&json!({ "project": { "enabled": enabled } })),
        );
        c.expect("enable or disable p2", &r, 200);
    }
    assert!(
        !accepted(&c, &t),
        "disabling the project revokes tokens on it for good"
    );
    assert!(accepted(&c, &t3), "a token on another project lives on");

    // Removing one of two roles on p2 revokes the tokens on p2 only.
    let reader = role_id(&c, &admin, "reader");
    grant(&c, &admin, &p2, &u2, &reader);
    let t = c.token_for("p2-user", &password, "p2");
    let r = c.req("DELETE", &assignment(&p2, &u2, &reader), Some(&admin), None);
    c.expect("remove reader on p2", &r, 204);
    assert!(
        !accepted(&c, &t),
        "removing a role on the project revokes the user's tokens there"
    );
    assert!(accepted(&c, &t3), "a token on another project lives on");

    // Deleting a role revokes the tokens of its holders where they held it.
    let r = c.req(
        "POST",
        "/identity/v3/roles",
        Some(&admin),
        Some(&json!({ "role": { "name": "auditor" } })),
    );
    c.expect("create role auditor", &r, 201);
    let auditor = r.json()["role"]["id"].as_str().unwrap().to_string();
    grant(&c, &admin, &p2, &u2, &auditor);
    let t = c.token_for("p2-user", &password, "p2");
    let r = c.req(
        "DELETE",
        &format!("/identity/v3/roles/{auditor}"),
        Some(&admin),
        None,
    );
    c.expect("delete role auditor", &r, 204);
    assert!(
        !accepted(&c, &t),
        "deleting a role revokes its holders' tokens"
    );
    assert!(accepted(&c, &t3), "a token on another project lives on");

    // Deleting the project, then the user (these held before: a token's
    // project and user must exist; now they are revoked as well).
    let t = c.token_for("p2-user", &password, "p2");
    let r = c.req(
        "DELETE",
        &format!("/identity/v3/projects/{p3}"),
        Some(&admin),
        None,
    );
    c.expect("delete p3", &r, 204);
    assert!(
        !accepted(&c, &t3),
        "deleting a project revokes tokens on it"
    );
    assert!(accepted(&c, &t), "a token on another project lives on");
    let r = c.req("DELETE", &user_url, Some(&admin), None);
    c.expect("delete u2", &r, 204);
    assert!(!accepted(&c, &t), "deleting a user revokes its tokens");
    assert!(accepted(&c, &admin), "the admin's token lives on");
}

// ---------------------------------------------------------------- item 5

fn flavor_ids(r: &Resp) -> Vec<String> {
    r.json()["flavors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `POST /flavors/{id}/action`.
fn flavor_action(c: &Cloud, token: &str, flavor: &str, body: Value) -> Resp {
    c.req(
        "POST",
        &format!("/compute/v2.1/flavors/{flavor}/action"),
        Some(token),
        Some(&body),
    )
}

/// `GET /compute/v2.1{path}` as `token`, expecting `status`.
fn compute_get(c: &Cloud, token: &str, path: &str, what: &str, status: u16) -> Resp {
    let r = c.req("GET", &format!("/compute/v2.1{path}"), Some(token), None);
    c.expect(what, &r, status);
    r
}

/// `{"flavor_access": [...]}` of `flavor` for `projects`.
fn access_body(flavor: &str, projects: &[&str]) -> Value {
    let list: Vec<Value> = projects
        .iter()
        .map(|p| json!({ "flavor_id": flavor, "tenant_id": p }))
        .collect();
    json!({ "flavor_access": list })
}

/// A private flavor is listed, shown and booted only by admins and the
/// projects on its access list, which an admin manages with Nova's
/// `os-flavor-access` (`addTenantAccess`, `removeTenantAccess`, the list).
#[test]
fn private_flavors_are_for_projects_with_access() {
    let c = Cloud::start(Opts::default());
    let admin = c.admin_token();
    let public = c.flavor(&admin, "public", 1, 64);
    let r = c.req(
        "POST",
        "/compute/v2.1/flavors",
        Some(&admin),
        Some(
            &json!({ "flavor": { "name": "private", "vcpus": 1, "ram": 64, "disk": 0,
                                  "os-flavor-access:is_public": false } }),
        ),
    );
    c.expect("create a private flavor", &r, 200);
    assert_eq!(r.json()["flavor"]["os-flavor-access:is_public"], false);
    let private = r.json()["flavor"]["id"].as_str().unwrap().to_string();
    let image = image_with(
        &c,
        &admin,
        json!({ "name": "public-disk", "disk_format": "raw", "container_format": "bare",
                "visibility": "public" }),
        &[0u8; 4096],
    );
    let (p2, _, t2) = member_project(&c, &admin, "p2");
    let (_, _, t3) = member_project(&c, &admin, "p3");
    let show = format!("/flavors/{private}");

    // Without access: not listed, not shown, not bootable.
    let not_listed = |t: &str, who: &str| {
        for list in ["/flavors", "/flavors/detail"] {
            let r = compute_get(&c, t, list, &format!("{who} lists {list}"), 200);
            let ids = flavor_ids(&r);
            assert!(ids.contains(&public), "{who}: {r}");
            assert!(
                !ids.contains(&private),
                "{who} lists the private flavor: {r}"
            );
        }
        compute_get(&c, t, &show, &format!("{who} shows it"), 404);
        let specs = format!("{show}/os-extra_specs");
        compute_get(&c, t, &specs, &format!("{who} reads its specs"), 404);
        let r = c.create_server_resp(t, "no-access", &image, &private);
        c.expect(&format!("{who} boots the private flavor"), &r, 400);
        assert!(
            r.text()
                .contains(&format!("Flavor {private} could not be found")),
            "{r}"
        );
    };
    not_listed(&t2, "p2 before the grant");
    not_listed(&t3, "p3");

    // Granting access to p2, and what is refused on the way.
    let add = |tenant: &str| json!({ "addTenantAccess": { "tenant": tenant } });
    let r = flavor_action(&c, &admin, &private, add(&p2));
    c.expect("addTenantAccess p2", &r, 200);
    assert_eq!(r.json(), access_body(&private, &[&p2]));
    for (what, token, flavor, body, status) in [
        ("addTenantAccess p2 again", &admin, &private, add(&p2), 409),
        ("no such project", &admin, &private, add("nope"), 400),
        ("on a public flavor", &admin, &public, add(&p2), 409),
        ("by a member", &t2, &private, add(&p2), 403),
        (
            "an unknown action",
            &admin,
            &private,
            json!({ "resize": {} }),
            400,
        ),
        (
            "no tenant",
            &admin,
            &private,
            json!({ "addTenantAccess": {} }),
            400,
        ),
    ] {
        let r = flavor_action(&c, token, flavor, body);
        c.expect(what, &r, status);
    }
    let access = format!("{show}/os-flavor-access");
    let r = compute_get(&c, &admin, &access, "the access list", 200);
    assert_eq!(r.json(), access_body(&private, &[&p2]));
    compute_get(&c, &t2, &access, "a member reads the access list", 403);
    let public_access = format!("/flavors/{public}/os-flavor-access");
    compute_get(&c, &admin, &public_access, "a public flavor's list", 404);

    // p2 now lists, shows and boots it; p3 still does not.
    let r = compute_get(&c, &t2, "/flavors/detail", "p2 lists flavors", 200);
    assert!(flavor_ids(&r).contains(&private), "{r}");
    compute_get(&c, &t2, &show, "p2 shows the private flavor", 200);
    let r = c.create_server_resp(&t2, "with-access", &image, &private);
    c.expect("p2 boots the private flavor", &r, 202);
    not_listed(&t3, "p3 after p2's grant");

    // The admin sees every flavor, and filters with is_public.
    let list = |q: &str| {
        let r = compute_get(&c, &admin, &format!("/flavors{q}"), q, 200);
        flavor_ids(&r)
    };
    assert!(list("").contains(&private));
    assert!(list("?is_public=None").contains(&private));
    assert!(!list("?is_public=true").contains(&private));
    assert_eq!(list("?is_public=false"), vec![private.clone()]);
    compute_get(&c, &admin, "/flavors?is_public=maybe", "bad is_public", 400);
    compute_get(&c, &admin, &show, "admin shows the private flavor", 200);

    // Taking access back.
    let remove = json!({ "removeTenantAccess": { "tenant": p2 } });
    let r = flavor_action(&c, &admin, &private, remove.clone());
    c.expect("removeTenantAccess p2", &r, 200);
    assert_eq!(r.json(), access_body(&private, &[]));
    let r = flavor_action(&c, &admin, &private, remove);
    c.expect("removeTenantAccess p2 again", &r, 404);
    compute_get(&c, &t2, &show, "p2 shows it after the removal", 404);
}
