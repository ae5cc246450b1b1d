//! Tests of security groups: [`service::resolve_rules`] and the default
//! group on a bare database, then the API over HTTP on the shared harness.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::model::SecurityGroupRule;
use super::{service, store};
use crate::api_test::{self, Resp, Server};
use crate::db::Db;
use crate::host::net::plan::{Direction, Ipv4Net, Remote, SgRule};

// ------------------------------------------------------ on the database

fn rule(group: &str, id: &str, direction: &str, ethertype: &str) -> SecurityGroupRule {
    SecurityGroupRule {
        id: id.to_string(),
        security_group_id: group.to_string(),
        project_id: "p".to_string(),
        direction: direction.to_string(),
        ethertype: ethertype.to_string(),
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: None,
        description: String::new(),
        revision_number: 0,
        created_at: "2026-01-01T00:00:00Z".to_string(),
        updated_at: "2026-01-01T00:00:00Z".to_string(),
        belongs_to_default_sg: false,
    }
}

fn group(conn: &rusqlite::Connection, id: &str) {
    let g = super::model::SecurityGroup {
        id: id.to_string(),
        project_id: "p".to_string(),
        name: id.to_string(),
        description: String::new(),
        is_default: false,
        revision_number: 0,
        created_at: "2026-01-01T00:00:00Z".to_string(),
        updated_at: "2026-01-01T00:00:00Z".to_string(),
    };
    assert!(store::insert_group(conn, &g).unwrap());
}

#[test]
fn the_default_group_is_made_once_with_neutrons_four_rules() {
    let db = Db::open_in_memory().unwrap();
    let conn = db.lock();
    let id = service::ensure_default_group(&conn, "p").unwrap();
    assert_eq!(service::ensure_default_group(&conn, "p").unwrap(), id);
    assert_ne!(service::ensure_default_group(&conn, "q").unwrap(), id);
    let rules = store::rules_of_groups(&conn, std::slice::from_ref(&id)).unwrap();
    let mut shapes: Vec<(String, String, Option<String>)> = rules
        .iter()
        .map(|r| {
            (
                r.direction.clone(),
                r.ethertype.clone(),
                r.remote_group_id.clone(),
            )
        })
        .collect();
    shapes.sort();
    assert_eq!(
        shapes,
        vec![
            ("egress".into(), "IPv4".into(), None),
            ("egress".into(), "IPv6".into(), None),
            ("ingress".into(), "IPv4".into(), Some(id.clone())),
            ("ingress".into(), "IPv6".into(), Some(id.clone())),
        ]
    );
    assert!(rules
        .iter()
        .all(|r| r.belongs_to_default_sg && r.protocol.is_none()));
    // Not a reason to keep a project: the default group is lazy. It counts
    // in the quota usage, though.
    assert_eq!(service::groups_in_project(&conn, "p").unwrap(), 0);
    assert_eq!(service::quota_usage(&conn, "p").unwrap(), (1, 4));
    assert_eq!(
        service::quota_limit(&conn, "p", service::QUOTA_SECURITY_GROUP).unwrap(),
        10
    );
    assert_eq!(
        service::quota_limit(&conn, "p", service::QUOTA_SECURITY_GROUP_RULE).unwrap(),
        100
    );
    // A second default row cannot exist, whatever the path.
    let dup = conn.execute(
        "INSERT INTO security_groups (id, project_id, name, is_default, created_at, updated_at) \
         VALUES ('x', 'p', 'default', 1, '', '')",
        [],
    );
    assert!(dup.is_err());
    // Inside a caller's transaction too (a savepoint, not a transaction).
    let tx = rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let r = service::ensure_default_group(&tx, "r").unwrap();
    tx.commit().unwrap();
    assert!(store::load_group(&conn, &r).unwrap().unwrap().is_default);
    service::remove_default_group(&conn, "r").unwrap();
    assert!(store::load_group(&conn, &r).unwrap().is_none());
}

#[test]
fn resolve_rules_gives_ipv4_rules_resolved_deduplicated_and_sorted() {
    let db = Db::open_in_memory().unwrap();
    let conn = db.lock();
    group(&conn, "ga");
    group(&conn, "gb");
    group(&conn, "gc");
    let mut ssh = rule("ga", "r3", "ingress", "IPv4");
    ssh.protocol = Some("tcp".into());
    (ssh.port_range_min, ssh.port_range_max) = (Some(22), Some(22));
    ssh.remote_ip_prefix = Some("10.0.0.5/24".into());
    let mut ssh_again = ssh.clone();
    ssh_again.id = "r9".into();
    ssh_again.security_group_id = "gb".into();
    let mut ping = rule("gb", "r1", "ingress", "IPv4");
    ping.protocol = Some("icmp".into());
    ping.port_range_min = Some(8);
    let mut vrrp = rule("ga", "r2", "egress", "IPv4");
    vrrp.protocol = Some("112".into());
    let mut from_c = rule("ga", "r4", "ingress", "IPv4");
    from_c.remote_group_id = Some("gc".into());
    let v6 = rule("ga", "r0", "egress", "IPv6");
    let other_group = rule("gc", "r5", "egress", "IPv4");
    // The same as `vrrp` (anywhere is no prefix): once.
    let mut vrrp_anywhere = vrrp.clone();
    vrrp_anywhere.id = "r8".into();
    vrrp_anywhere.remote_ip_prefix = Some("0.0.0.0/0".into());
    for r in [
        &ssh,
        &ssh_again,
        &ping,
        &vrrp,
        &from_c,
        &v6,
        &other_group,
        &vrrp_anywhere,
    ] {
        store::insert_rule(&conn, r).unwrap();
    }
    let members = |g: &str| -> Vec<Ipv4Addr> {
        assert_eq!(g, "gc");
        vec![Ipv4Addr::new(10, 0, 0, 7)]
    };
    let got = service::resolve_rules(&conn, &["ga".into(), "gb".into()], &members).unwrap();
    assert_eq!(
        got,
        vec![
            SgRule {
                id: "r1".into(),
                direction: Direction::Ingress,
                protocol: Some(1),
                port_range: Some((8, 256)),
                remote: Remote::Any,
            },
            SgRule {
                id: "r2".into(),
                direction: Direction::Egress,
                protocol: Some(112),
                port_range: None,
                remote: Remote::Any,
            },
            SgRule {
                id: "r3".into(),
                direction: Direction::Ingress,
                protocol: Some(6),
                port_range: Some((22, 22)),
                remote: Remote::Prefix(Ipv4Net {
                    addr: Ipv4Addr::new(10, 0, 0, 0),
                    prefix_len: 24
                }),
            },
            SgRule {
                id: "r4".into(),
                direction: Direction::Ingress,
                protocol: None,
                port_range: None,
                remote: Remote::Group {
                    group_id: "gc".into(),
                    members: vec![Ipv4Addr::new(10, 0, 0, 7)],
                },
            },
        ]
    );
    assert!(service::resolve_rules(&conn, &[], &members)
        .unwrap()
        .is_empty());
}

#[test]
fn group_visibility() {
    let db = Db::open_in_memory().unwrap();
    let conn = db.lock();
    group(&conn, "ga");
    assert!(service::group_visible(&conn, "p", false, "ga").unwrap());
    assert!(!service::group_visible(&conn, "q", false, "ga").unwrap());
    assert!(service::group_visible(&conn, "q", true, "ga").unwrap());
    assert!(!service::group_visible(&conn, "p", true, "nope").unwrap());
    assert_eq!(service::groups_in_project(&conn, "p").unwrap(), 1);
}

// ------------------------------------------------------------ over HTTP

async fn start() -> Server {
    api_test::start("/network", 1 << 20).await
}

impl Server {
    /// The caller's groups (making its default group).
    async fn groups(&self, token: &str, query: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v2.0/security-groups{query}"), token)
            .await;
        assert_eq!(r.status, 200, "{r}");
        r.json()["security_groups"].as_array().unwrap().clone()
    }

    async fn default_group(&self, token: &str) -> Value {
        self.groups(token, "?name=default")
            .await
            .into_iter()
            .find(|g| g["name"] == "default")
            .unwrap()
    }

    async fn new_group(&self, token: &str, name: &str) -> Value {
        let r = self
            .post(
                "/v2.0/security-groups",
                token,
                json!({ "security_group": { "name": name, "description": "d" } }),
            )
            .await;
        assert_eq!(r.status, 201, "{r}");
        r.json()["security_group"].clone()
    }

    async fn new_rule(&self, token: &str, fields: Value) -> Resp {
        self.post(
            "/v2.0/security-group-rules",
            token,
            json!({ "security_group_rule": fields }),
        )
        .await
    }
}

/// The message of a Neutron error body, checking its shape.
fn neutron_message(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{r}");
    let e = &r.json()["NeutronError"];
    assert!(e["type"].is_string(), "{r}");
    e["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn each_project_gets_one_default_group_with_neutrons_fields() {
    let s = start().await;
    let groups = s.groups(&s.alice, "").await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert_eq!(g["name"], "default");
    assert_eq!(g["description"], "Default security group");
    assert_eq!(g["project_id"], "other");
    assert_eq!(g["tenant_id"], "other");
    assert_eq!(g["stateful"], true);
    assert_eq!(g["shared"], false);
    assert_eq!(g["tags"], json!([]));
    assert!(g["revision_number"].is_i64());
    assert!(g["created_at"].is_string() && g["updated_at"].is_string());
    let id = g["id"].as_str().unwrap();
    let rules = g["security_group_rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4);
    for r in rules {
        assert_eq!(r["security_group_id"], id);
        assert_eq!(r["belongs_to_default_sg"], true);
        assert_eq!(r["protocol"], Value::Null);
        assert_eq!(r["remote_ip_prefix"], Value::Null);
        assert_eq!(r["normalized_cidr"], Value::Null);
        assert_eq!(r["remote_address_group_id"], Value::Null);
        assert_eq!(r["port_range_min"], Value::Null);
        assert_eq!(r["tenant_id"], "other");
        let remote = if r["direction"] == "ingress" {
            json!(id)
        } else {
            Value::Null
        };
        assert_eq!(r["remote_group_id"], remote, "{r}");
    }
    // Listing again, or concurrently, makes no second one.
    let lists: Vec<_> = (0..6).map(|_| s.groups(&s.alice, "")).collect();
    for l in futures_util::future::join_all(lists).await {
        assert_eq!(l.len(), 1);
        assert_eq!(l[0]["id"], id);
    }
    // The rules list has them too, filtered by group and direction.
    let r = s
        .get(
            &format!("/v2.0/security-group-rules?security_group_id={id}&direction=ingress"),
            &s.alice,
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.json()["security_group_rules"].as_array().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn custom_groups_get_egress_rules_and_are_filtered() {
    let s = start().await;
    let web = s.new_group(&s.alice, "web").await;
    assert_eq!(web["description"], "d");
    let rules = web["security_group_rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert!(rules
        .iter()
        .all(|r| r["direction"] == "egress" && r["belongs_to_default_sg"] == false));
    // Creating a group made the default one first.
    assert_eq!(s.groups(&s.alice, "").await.len(), 2);
    assert_eq!(s.groups(&s.alice, "?name=web").await.len(), 1);
    let id = web["id"].as_str().unwrap();
    let by_id = s.groups(&s.alice, &format!("?id={id}&id=nope")).await;
    assert_eq!(by_id.len(), 1);
    let only_names = s.groups(&s.alice, "?fields=name&fields=id").await;
    assert_eq!(
        only_names[0].as_object().unwrap().len(),
        2,
        "{only_names:?}"
    );
    // Show, rename, describe.
    let r = s
        .get(&format!("/v2.0/security-groups/{id}"), &s.alice)
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json()["security_group"]["name"], "web");
    let r = s
        .put(
            &format!("/v2.0/security-groups/{id}"),
            &s.alice,
            json!({ "security_group": { "name": "www", "description": "new" } }),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    let g = &r.json()["security_group"];
    assert_eq!(
        (g["name"].as_str(), g["description"].as_str()),
        (Some("www"), Some("new"))
    );
    assert!(g["revision_number"].as_i64() > web["revision_number"].as_i64());
    let r = s
        .put(
            &format!("/v2.0/security-groups/{id}"),
            &s.alice,
            json!({ "security_group": { "name": "default" } }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 409),
        "Default security group already exists."
    );
    let r = s
        .post(
            "/v2.0/security-groups",
            &s.alice,
            json!({ "security_group": { "name": "default" } }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 409),
        "Default security group already exists."
    );
    let r = s
        .post(
            "/v2.0/security-groups",
            &s.alice,
            json!({ "security_group": { "name": "x", "colour": "red" } }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 400),
        "Unrecognized attribute(s) 'colour'"
    );
    // Delete: 204, then 404.
    let r = s
        .delete(&format!("/v2.0/security-groups/{id}"), &s.alice)
        .await;
    assert_eq!(r.status, 204, "{r}");
    let r = s
        .get(&format!("/v2.0/security-groups/{id}"), &s.alice)
        .await;
    assert_eq!(
        neutron_message(&r, 404),
        format!("Security group {id} does not exist")
    );
}

#[tokio::test]
async fn the_default_group_keeps_its_name_and_stays() {
    let s = start().await;
    let g = s.default_group(&s.alice).await;
    let id = g["id"].as_str().unwrap();
    let r = s
        .put(
            &format!("/v2.0/security-groups/{id}"),
            &s.alice,
            json!({ "security_group": { "name": "mine" } }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 409),
        "Updating default security group not allowed."
    );
    let r = s
        .put(
            &format!("/v2.0/security-groups/{id}"),
            &s.alice,
            json!({ "security_group": { "name": "default", "description": "ok" } }),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    let r = s
        .delete(&format!("/v2.0/security-groups/{id}"), &s.alice)
        .await;
    assert_eq!(
        neutron_message(&r, 409),
        "Insufficient rights for removing default security group."
    );
    // An admin may (as in Neutron); the next list makes a new one.
    let r = s
        .delete(&format!("/v2.0/security-groups/{id}"), &s.admin)
        .await;
    assert_eq!(r.status, 204, "{r}");
    let again = s.default_group(&s.alice).await;
    assert_ne!(again["id"], g["id"]);
}

#[tokio::test]
async fn projects_are_isolated_and_admins_see_all() {
    let s = start().await;
    let alices = s.new_group(&s.alice, "a").await;
    let admins = s.new_group(&s.admin, "b").await;
    let (a_id, b_id) = (
        alices["id"].as_str().unwrap(),
        admins["id"].as_str().unwrap(),
    );
    let names = |l: Vec<Value>| -> Vec<String> {
        let mut v: Vec<String> = l
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(s.groups(&s.alice, "").await), ["a", "default"]);
    // Alice cannot see, change or use the admin project's group.
    let r = s
        .get(&format!("/v2.0/security-groups/{b_id}"), &s.alice)
        .await;
    assert_eq!(
        neutron_message(&r, 404),
        format!("Security group {b_id} does not exist")
    );
    let r = s
        .delete(&format!("/v2.0/security-groups/{b_id}"), &s.alice)
        .await;
    assert_eq!(r.status, 404, "{r}");
    let r = s
        .put(
            &format!("/v2.0/security-groups/{b_id}"),
            &s.alice,
            json!({ "security_group": { "name": "mine" } }),
        )
        .await;
    assert_eq!(r.status, 404, "{r}");
    let r = s
        .new_rule(
            &s.alice,
            json!({ "security_group_id": b_id, "direction": "ingress" }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 404),
        format!("Security group {b_id} does not exist")
    );
    let r = s
        .new_rule(
            &s.alice,
            json!({ "security_group_id": a_id, "direction": "ingress", "remote_group_id": b_id }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 404),
        format!("Security group {b_id} does not exist")
    );
    let admin_rule = admins["security_group_rules"][0]["id"].as_str().unwrap();
    let r = s
        .get(
            &format!("/v2.0/security-group-rules/{admin_rule}"),
            &s.alice,
        )
        .await;
    assert_eq!(
        neutron_message(&r, 404),
        format!("Security group rule {admin_rule} does not exist")
    );
    let r = s
        .delete(
            &format!("/v2.0/security-group-rules/{admin_rule}"),
            &s.alice,
        )
        .await;
    assert_eq!(r.status, 404, "{r}");
    let r = s.get("/v2.0/security-group-rules", &s.alice).await;
    assert!(r.json()["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["project_id"] == "other"));
    // A member cannot put its group in another project.
    let r = s
        .post(
            "/v2.0/security-groups",
            &s.alice,
            json!({ "security_group": { "name": "x", "project_id": s.admin_project } }),
        )
        .await;
    assert!(neutron_message(&r, 400).contains("requires admin privileges"));
    // The admin sees every project's groups, or one project's.
    assert_eq!(
        names(s.groups(&s.admin, "").await),
        ["a", "b", "default", "default"]
    );
    assert_eq!(
        names(s.groups(&s.admin, "?project_id=other").await),
        ["a", "default"]
    );
    assert_eq!(
        names(s.groups(&s.admin, "?tenant_id=other").await),
        ["a", "default"]
    );
    // ... and may create in another project, and use its groups.
    let r = s
        .post(
            "/v2.0/security-groups",
            &s.admin,
            json!({ "security_group": { "name": "given", "tenant_id": "other" } }),
        )
        .await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["security_group"]["project_id"], "other");
    let r = s
        .new_rule(
            &s.admin,
            json!({ "security_group_id": a_id, "direction": "ingress", "protocol": "tcp",
                    "port_range_min": 80, "port_range_max": 80 }),
        )
        .await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["security_group_rule"]["project_id"], "other");
}

#[tokio::test]
async fn readers_look_but_do_not_touch() {
    let s = start().await;
    let g = s.default_group(&s.rita).await;
    let id = g["id"].as_str().unwrap();
    let r = s
        .post(
            "/v2.0/security-groups",
            &s.rita,
            json!({ "security_group": { "name": "x" } }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 403),
        "rule:create_security_group is disallowed by policy"
    );
    let r = s
        .new_rule(
            &s.rita,
            json!({ "security_group_id": id, "direction": "ingress" }),
        )
        .await;
    assert_eq!(r.status, 403, "{r}");
    let r = s
        .delete(&format!("/v2.0/security-groups/{id}"), &s.rita)
        .await;
    assert_eq!(r.status, 403, "{r}");
    let rule = g["security_group_rules"][0]["id"].as_str().unwrap();
    let r = s
        .delete(&format!("/v2.0/security-group-rules/{rule}"), &s.rita)
        .await;
    assert_eq!(r.status, 403, "{r}");
    let r = s
        .get(&format!("/v2.0/security-group-rules/{rule}"), &s.rita)
        .await;
    assert_eq!(r.status, 200, "{r}");
    let r = s.get("/v2.0/security-groups", "bogus-token").await;
    assert_eq!(r.status, 401, "{r}");
}

#[tokio::test]
async fn rules_are_checked_in_neutrons_words() {
    let s = start().await;
    let g = s.new_group(&s.alice, "web").await;
    let id = g["id"].as_str().unwrap();
    let with = |extra: Value| {
        let mut f = json!({ "security_group_id": id, "direction": "ingress" });
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        f
    };
    let cases: Vec<(Value, &str)> =
        vec![
        (json!({ "protocol": "bogus" }), "Security group rule protocol bogus not supported."),
        (
            json!({ "protocol": "gre", "port_range_min": 1, "port_range_max": 2 }),
            "Invalid protocol gre for port range",
        ),
        (
            json!({ "protocol": "tcp", "port_range_min": 90, "port_range_max": 80 }),
            "For TCP/UDP protocols, port_range_min must be <= port_range_max",
        ),
        (
            json!({ "protocol": "udp", "port_range_min": 1, "port_range_max": 70000 }),
            "Invalid value for port 70000",
        ),
        (
            json!({ "protocol": "icmp", "port_range_min": 300 }),
            "Invalid value for ICMP type (port_range_min) 300. It must be 0 to 255.",
        ),
        (
            json!({ "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": id }),
            "Only remote_ip_prefix or remote_group_id or remote_address_group_id may be provided.",
        ),
        (
            json!({ "ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8" }),
            "Conflicting value ethertype IPv6 for CIDR 10.0.0.0/8",
        ),
        (
            json!({ "remote_ip_prefix": "10.0.0.300/8" }),
            "Invalid CIDR 10.0.0.300/8 given as IP prefix.",
        ),
        (json!({ "direction": "up" }), "Invalid input for direction."),
        (json!({ "x": 1 }), "Unrecognized attribute(s) 'x'"),
    ];
    for (fields, expected) in cases {
        let r = s.new_rule(&s.alice, with(fields.clone())).await;
        let msg = neutron_message(&r, 400);
        assert!(msg.starts_with(expected), "{fields}: {msg}");
    }
    let r = s
        .post(
            "/v2.0/security-group-rules",
            &s.alice,
            json!({ "rule": {} }),
        )
        .await;
    assert_eq!(r.status, 400, "{r}");
    let r = s
        .new_rule(&s.alice, json!({ "direction": "ingress" }))
        .await;
    assert_eq!(
        neutron_message(&r, 400),
        "Failed to parse request. Required attribute 'security_group_id' not specified"
    );
    let r = s
        .new_rule(
            &s.alice,
            json!({ "security_group_id": "nope", "direction": "ingress" }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 404),
        "Security group nope does not exist"
    );

    // A good rule, then the same again (protocol by number, prefix with
    // other host bits): 409 naming the first.
    let r = s
        .new_rule(
            &s.alice,
            with(
                json!({ "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
                         "remote_ip_prefix": "192.168.1.7/24", "description": "ssh" }),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{r}");
    let rule = r.json()["security_group_rule"].clone();
    assert_eq!(rule["protocol"], "tcp");
    assert_eq!(rule["ethertype"], "IPv4");
    assert_eq!(rule["remote_ip_prefix"], "192.168.1.7/24");
    assert_eq!(rule["normalized_cidr"], "192.168.1.0/24");
    assert_eq!(rule["description"], "ssh");
    assert_eq!(rule["belongs_to_default_sg"], false);
    let rule_id = rule["id"].as_str().unwrap();
    let r = s
        .new_rule(
            &s.alice,
            with(
                json!({ "protocol": "6", "port_range_min": 22, "port_range_max": 22,
                         "remote_ip_prefix": "192.168.1.0/24" }),
            ),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 409),
        format!("Security group rule already exists. Rule id is {rule_id}.")
    );
    // "Anywhere" is no prefix (what the CLI sends without --remote-ip).
    let egress = g["security_group_rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ethertype"] == "IPv4")
        .unwrap()["id"]
        .clone();
    let r = s
        .new_rule(
            &s.alice,
            with(json!({ "direction": "egress", "remote_ip_prefix": "0.0.0.0/0" })),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 409),
        format!(
            "Security group rule already exists. Rule id is {}.",
            egress.as_str().unwrap()
        )
    );
    // The group shows it; filters find it; delete takes it away.
    let r = s
        .get(&format!("/v2.0/security-groups/{id}"), &s.alice)
        .await;
    let shown = &r.json()["security_group"];
    assert_eq!(shown["security_group_rules"].as_array().unwrap().len(), 3);
    assert!(shown["revision_number"].as_i64() > g["revision_number"].as_i64());
    let r = s
        .get(
            "/v2.0/security-group-rules?protocol=tcp&port_range_min=22",
            &s.alice,
        )
        .await;
    assert_eq!(
        r.json()["security_group_rules"].as_array().unwrap().len(),
        1,
        "{r}"
    );
    let r = s
        .delete(&format!("/v2.0/security-group-rules/{rule_id}"), &s.alice)
        .await;
    assert_eq!(r.status, 204, "{r}");
    let r = s
        .get(&format!("/v2.0/security-group-rules/{rule_id}"), &s.alice)
        .await;
    assert_eq!(r.status, 404, "{r}");
}

#[tokio::test]
async fn groups_in_use_stay_and_remote_rules_go_with_their_group() {
    let s = start().await;
    let a = s.new_group(&s.alice, "a").await;
    let b = s.new_group(&s.alice, "b").await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    // A port in group a.
    let net = s
        .post(
            "/v2.0/networks",
            &s.alice,
            json!({"network": {"name": "n"}}),
        )
        .await;
    assert_eq!(net.status, 201, "{net}");
    let net_id = net.json()["network"]["id"].as_str().unwrap().to_string();
    let port = s
        .post(
            "/v2.0/ports",
            &s.alice,
            json!({"port": {"network_id": net_id, "security_groups": [a_id]}}),
        )
        .await;
    assert_eq!(port.status, 201, "{port}");
    let r = s
        .delete(&format!("/v2.0/security-groups/{a_id}"), &s.alice)
        .await;
    assert_eq!(
        neutron_message(&r, 409),
        format!("Security Group {a_id} in use.")
    );
    // A rule of `a` from `b`: deleting `b` takes it.
    let r = s
        .new_rule(
            &s.alice,
            json!({ "security_group_id": a_id, "direction": "ingress", "remote_group_id": b_id }),
        )
        .await;
    assert_eq!(r.status, 201, "{r}");
    let r = s
        .delete(&format!("/v2.0/security-groups/{b_id}"), &s.alice)
        .await;
    assert_eq!(r.status, 204, "{r}");
    let r = s
        .get(&format!("/v2.0/security-groups/{a_id}"), &s.alice)
        .await;
    assert_eq!(
        r.json()["security_group"]["security_group_rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn quotas_count_groups_and_rules() {
    let s = start().await;
    {
        let conn = s.db.lock();
        crate::quota::store::set_hard_limit(&conn, "other", "security_group", 2).unwrap();
    }
    s.new_group(&s.alice, "one").await; // With the default group: 2.
    let r = s
        .post(
            "/v2.0/security-groups",
            &s.alice,
            json!({ "security_group": { "name": "two" } }),
        )
        .await;
    assert_eq!(
        neutron_message(&r, 409),
        "Quota exceeded for resources: ['security_group']."
    );
    // Neutron's default for groups is 10 (the admin project is not limited
    // above).
    for i in 0..9 {
        s.new_group(&s.admin, &format!("g{i}")).await;
    }
    let r = s
        .post(
            "/v2.0/security-groups",
            &s.admin,
            json!({ "security_group": { "name": "eleventh" } }),
        )
        .await;
    assert_eq!(r.status, 409, "{r}");
    // Rules: the project holds 4 + 2 now; a limit of 7 leaves one.
    let g = s.default_group(&s.alice).await;
    let id = g["id"].as_str().unwrap();
    {
        let conn = s.db.lock();
        crate::quota::store::set_hard_limit(&conn, "other", "security_group_rule", 7).unwrap();
    }
    let tcp = |port: u16| {
        json!({ "security_group_id": id, "direction": "ingress", "protocol": "tcp",
                "port_range_min": port, "port_range_max": port })
    };
    assert_eq!(s.new_rule(&s.alice, tcp(80)).await.status, 201);
    let r = s.new_rule(&s.alice, tcp(443)).await;
    assert_eq!(
        neutron_message(&r, 409),
        "Quota exceeded for resources: ['security_group_rule']."
    );
}
