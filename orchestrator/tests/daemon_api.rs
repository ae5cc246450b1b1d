//! The real `nubo` daemon on this host, with real `nubo-vmm` processes
//! running tiny guests on KVM, driven over HTTP as a client would.
//!
//! Every test starts its own daemon on its own state directory and port;
//! the [`common::Cloud`] guard kills the daemon and every VMM it started,
//! also when the test fails. Tests skip without /dev/kvm (and fail when
//! `CI=true`).

mod common;

use std::time::{Duration, Instant};

use common::{Cloud, Opts};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use vmm::tiny_guest::{elf, TinyEnd, TinyEntry, READY_LINE};

const BUILD_LIMIT: Duration = Duration::from_secs(30);

/// The server's instance actions once every one has finished (the record is
/// finished right after the lifecycle task returns).
fn finished_actions(c: &Cloud, t: &str, id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.req(
            "GET",
            &format!("/compute/v2.1/servers/{id}/os-instance-actions"),
            Some(t),
            None,
        );
        c.expect("list instance actions", &r, 200);
        let list = r.json()["instanceActions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let all_done = list.iter().all(|a| {
            let rid = a["request_id"].as_str().unwrap_or("");
            let s = c.req(
                "GET",
                &format!("/compute/v2.1/servers/{id}/os-instance-actions/{rid}"),
                Some(t),
                None,
            );
            !s.json()["instanceAction"]["events"][0]["finish_time"].is_null()
        });
        if all_done || Instant::now() > deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ids_of(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} array in {list}"))
        .iter()
        .filter_map(|s| s["id"].as_str().map(String::from))
        .collect()
}

#[test]
fn server_lifecycle_create_stop_start_reboot_delete() {
    if !common::kvm_available() {
        return;
    }
    let c = Cloud::start(Opts::default());
    let t = c.admin_token();
    let flavor = c.flavor(&t, "tiny", 1, 64);

    // Image: create, upload, active with the MD5 of the data.
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let image = c.image_record(&t, "pattern", "raw");
    let r = c.upload(&t, &image, &data);
    c.expect("upload the image", &r, 204);
    let r = c.image(&t, &image);
    c.expect("show the image", &r, 200);
    let img = r.json();
    assert_eq!(img["status"], "active", "image after upload: {img}");
    assert_eq!(
        img["checksum"].as_str(),
        Some(hex::encode(Md5::digest(&data)).as_str()),
        "image checksum must be the MD5 of the data: {img}"
    );
    assert_eq!(img["size"], data.len(), "image size: {img}");

    // Create: 202, BUILD until ACTIVE, console shows the guest's line.
    let r = c.create_server_resp(&t, "vm1", &image, &flavor);
    c.expect("create the server", &r, 202);
    let id = r.json()["server"]["id"].as_str().unwrap().to_string();
    let create_rid = r
        .header("x-openstack-request-id")
        .unwrap_or_else(|| panic!("no request id on the create answer"))
        .to_string();
    let s = c.wait_status(&t, &id, "ACTIVE", &["BUILD"], BUILD_LIMIT);
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "ACTIVE server: {s}");
    assert!(s["OS-EXT-STS:task_state"].is_null(), "ACTIVE server: {s}");
    c.wait_console(&t, &id, READY_LINE, 1);
    let pid1 = c
        .vmm_pid(&id)
        .unwrap_or_else(|| panic!("no live VMM for ACTIVE server {id}\n{}", c.log_tail()));

    // Stop: SHUTOFF, VMM gone; a second stop conflicts.
    let r = c.action(&t, &id, json!({ "os-stop": null }));
    c.expect("os-stop", &r, 202);
    let s = c.wait_status(&t, &id, "SHUTOFF", &["ACTIVE"], Duration::from_secs(20));
    assert_eq!(s["OS-EXT-STS:power_state"], 4, "SHUTOFF server: {s}");
    assert!(
        !common::pid_alive(pid1),
        "VMM {pid1} still runs after SHUTOFF"
    );
    assert_eq!(c.vmm_pids(), Vec::<i32>::new(), "VMMs left after os-stop");
    let r = c.action(&t, &id, json!({ "os-stop": null }));
    c.expect("os-stop of a SHUTOFF server", &r, 409);
    assert!(
        r.json().get("conflictingRequest").is_some(),
        "409 body must be Nova's conflictingRequest: {r}"
    );

    // Start: ACTIVE again, the guest printed its line again.
    let r = c.action(&t, &id, json!({ "os-start": null }));
    c.expect("os-start", &r, 202);
    c.wait_status(&t, &id, "ACTIVE", &["SHUTOFF"], BUILD_LIMIT);
    c.wait_console(&t, &id, READY_LINE, 2);
    let pid2 = c
        .vmm_pid(&id)
        .unwrap_or_else(|| panic!("no live VMM after os-start\n{}", c.log_tail()));
    assert_ne!(pid1, pid2, "os-start must run a new VMM");

    // Hard reboot: a new VMM process, the line a third time.
    let r = c.action(&t, &id, json!({ "reboot": { "type": "HARD" } }));
    c.expect("reboot HARD", &r, 202);
    c.wait_status(&t, &id, "ACTIVE", &["HARD_REBOOT"], BUILD_LIMIT);
    let pid3 = c
        .vmm_pid(&id)
        .unwrap_or_else(|| panic!("no live VMM after reboot\n{}", c.log_tail()));
    assert_ne!(pid2, pid3, "a HARD reboot must replace the VMM process");
    assert!(
        !common::pid_alive(pid2),
        "the old VMM {pid2} survived the HARD reboot"
    );
    c.wait_console(&t, &id, READY_LINE, 3);
    assert_eq!(c.vmm_pids(), vec![pid3], "exactly one VMM after reboot");

    // The action log, newest first, each under its request's id.
    let actions = finished_actions(&c, &t, &id);
    let names: Vec<&str> = actions
        .iter()
        .map(|a| a["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["reboot", "start", "stop", "create"], "{actions:?}");
    assert_eq!(
        actions.last().map(|a| a["request_id"].clone()),
        Some(json!(create_rid)),
        "the create action carries the create request's id"
    );
    let r = c.req(
        "GET",
        &format!("/compute/v2.1/servers/{id}/os-instance-actions/{create_rid}"),
        Some(&t),
        None,
    );
    c.expect("show the create action", &r, 200);
    let ev = &r.json()["instanceAction"]["events"][0];
    assert_eq!(ev["result"], "Success", "{}", r.text());
    assert_eq!(ev["event"], "compute__do_build_and_run_instance");

    // Delete: 204, then 404, files and process gone.
    c.delete_server(&t, &id);
    assert!(
        !c.instance_dir(&id).exists(),
        "instance dir {} still exists after delete",
        c.instance_dir(&id).display()
    );
    assert!(!common::pid_alive(pid3), "VMM {pid3} survived the delete");
    assert_eq!(c.vmm_pids(), Vec::<i32>::new(), "VMMs left after delete");
    let list = c.req("GET", "/compute/v2.1/servers", Some(&t), None);
    c.expect("list servers", &list, 200);
    assert_eq!(ids_of(&list.json(), "servers"), Vec::<String>::new());
}

#[test]
fn guest_that_powers_off_becomes_shutoff() {
    if !common::kvm_available() {
        return;
    }
    let c = Cloud::start(Opts {
        end: TinyEnd::AcpiPowerOff,
        ..Opts::default()
    });
    let (t, flavor, image) = c.basics();
    let id = c.create_server(&t, "short-lived", &image, &flavor);
    let s = c.wait_status(&t, &id, "SHUTOFF", &["BUILD", "ACTIVE"], BUILD_LIMIT);
    assert_eq!(s["OS-EXT-STS:power_state"], 4, "SHUTOFF server: {s}");
    assert!(
        s.get("fault").is_none(),
        "a guest that powered off is not a fault: {s}"
    );
    let out = c.console(&t, &id);
    assert!(
        out.contains(READY_LINE),
        "the guest ran before powering off: {out:?}"
    );
    assert_eq!(c.vmm_pids(), Vec::<i32>::new(), "VMM left after power-off");
    // It can be started again (and powers off again).
    let r = c.action(&t, &id, json!({ "os-start": null }));
    c.expect("os-start after power-off", &r, 202);
    c.wait_console(&t, &id, READY_LINE, 2);
    c.wait_status(
        &t,
        &id,
        "SHUTOFF",
        &["SHUTOFF", "ACTIVE"],
        Duration::from_secs(20),
    );
}

#[test]
fn scheduler_no_valid_host_when_the_flavor_exceeds_the_host() {
    if !common::kvm_available() {
        return;
    }
    let c = Cloud::start(
        Opts::default()
            .arg("--cpu-allocation-ratio", "1")
            .arg("--reserved-host-memory-mb", "0")
            .arg("--quota-cores", "100000")
            .arg("--quota-ram", "100000000"),
    );
    let t = c.admin_token();
    let image = c.raw_image(&t, "zeros");
    let cpus = std::thread::available_parallelism().unwrap().get() as u32;
    let huge_cpu = c.flavor(&t, "huge-cpu", 1000, 64);
    let over_cpu = c.flavor(&t, "over-cpu", cpus + 1, 64);
    let huge_ram = c.flavor(&t, "huge-ram", 1, 50_000_000);
    for flavor in [&huge_cpu, &over_cpu, &huge_ram] {
        let id = c.create_server(&t, "too-big", &image, flavor);
        let s = c.wait_status(&t, &id, "ERROR", &["BUILD"], BUILD_LIMIT);
        let msg = s["fault"]["message"].as_str().unwrap_or("");
        assert!(
            msg.starts_with("No valid host was found"),
            "flavor {flavor}: fault must start with 'No valid host was found': {s}"
        );
        assert!(
            c.vmm_pid(&id).is_none(),
            "no VMM may run for ERROR server {id}"
        );
        // The failed create is in the action log with the fault.
        let actions = finished_actions(&c, &t, &id);
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(actions[0]["message"], "Error", "{actions:?}");
        let rid = actions[0]["request_id"].as_str().unwrap_or("");
        let r = c.req(
            "GET",
            &format!("/compute/v2.1/servers/{id}/os-instance-actions/{rid}"),
            Some(&t),
            None,
        );
        let ev = &r.json()["instanceAction"]["events"][0];
        assert_eq!(ev["result"], "Error", "{}", r.text());
        assert!(
            ev["traceback"]
                .as_str()
                .unwrap_or("")
                .starts_with("No valid host was found"),
            "{}",
            r.text()
        );
        // ERROR servers can be deleted.
        c.delete_server(&t, &id);
    }
    // A flavor that fits still builds (nothing was leaked by the failures).
    let fits = c.flavor(&t, "fits", cpus, 64);
    let id = c.create_server(&t, "fits", &image, &fits);
    c.wait_status(&t, &id, "ACTIVE", &["BUILD"], BUILD_LIMIT);
}

#[test]
fn scheduler_cpu_overcommit_fills_then_refuses_then_frees() {
    if !common::kvm_available() {
        return;
    }
    let cpus = std::thread::available_parallelism().unwrap().get();
    // 4.0 as Nova's default; on big hosts a ratio that gives 8 slots.
    let ratio = if cpus * 4 <= 24 {
        4.0
    } else {
        8.5 / cpus as f64
    };
    let slots = (cpus as f64 * ratio).floor() as usize;
    let c = Cloud::start(
        Opts::default()
            .arg("--cpu-allocation-ratio", &ratio.to_string())
            .arg("--reserved-host-memory-mb", "0")
            .arg("--quota-instances", "100")
            .arg("--quota-cores", "100")
            .arg("--quota-ram", "100000"),
    );
    let (t, flavor, image) = c.basics();
    let ids: Vec<String> = (0..slots)
        .map(|i| c.create_server(&t, &format!("oc-{i}"), &image, &flavor))
        .collect();
    for id in &ids {
        c.wait_status(&t, id, "ACTIVE", &["BUILD"], Duration::from_secs(60));
    }
    assert_eq!(
        c.vmm_pids().len(),
        slots,
        "{slots} ACTIVE servers ({cpus} CPUs × {ratio}) need {slots} VMMs"
    );
    // The hypervisor view shows the host's CPUs and what the servers took.
    let r = c.req("GET", "/compute/v2.1/os-hypervisors/detail", Some(&t), None);
    c.expect("hypervisor list", &r, 200);
    let h = &r.json()["hypervisors"][0];
    assert_eq!(h["vcpus"], cpus as u64, "{h}");
    assert_eq!(h["vcpus_used"], slots as u64, "{h}");
    assert_eq!(h["running_vms"], slots as u64, "{h}");
    assert_eq!(h["memory_mb_used"], 64 * slots as u64, "{h}");
    assert_eq!(h["state"], "up", "{h}");
    let id = h["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("integer id: {h}"));
    let r = c.req(
        "GET",
        &format!("/compute/v2.1/os-hypervisors/{id}"),
        Some(&t),
        None,
    );
    c.expect("hypervisor show", &r, 200);
    assert_eq!(r.json()["hypervisor"]["vcpus_used"], slots as u64);
    let r = c.req(
        "GET",
        "/compute/v2.1/os-hypervisors/statistics",
        Some(&t),
        None,
    );
    c.expect("hypervisor statistics", &r, 200);
    assert_eq!(r.json()["hypervisor_statistics"]["count"], 1);
    assert_eq!(
        r.json()["hypervisor_statistics"]["vcpus_used"],
        slots as u64
    );
    let r = c.req(
        "GET",
        &format!("/compute/v2.1/os-hypervisors/{id}/uptime"),
        Some(&t),
        None,
    );
    c.expect("hypervisor uptime", &r, 200);
    let up = r.json()["hypervisor"]["uptime"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(up.contains(" up ") && up.contains("load average: "), "{up}");
    let r = c.req("GET", "/compute/v2.1/os-hypervisors/999", Some(&t), None);
    c.expect("unknown hypervisor", &r, 404);
    let extra = c.create_server(&t, "one-too-many", &image, &flavor);
    let s = c.wait_status(&t, &extra, "ERROR", &["BUILD"], BUILD_LIMIT);
    assert!(
        s["fault"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("No valid host was found"),
        "server {} beyond {cpus} CPUs × {ratio}: {s}",
        slots + 1
    );
    // Freeing one slot lets a new server in.
    c.delete_server(&t, &ids[0]);
    let again = c.create_server(&t, "fits-again", &image, &flavor);
    c.wait_status(&t, &again, "ACTIVE", &["BUILD"], BUILD_LIMIT);
}

#[test]
fn quota_instances_is_enforced_and_admin_can_raise_it() {
    if !common::kvm_available() {
        return;
    }
    let c = Cloud::start(Opts::default().arg("--quota-instances", "1"));
    let (t, body) = c.auth("admin", common::ADMIN_PASSWORD, "admin");
    let project = body["token"]["project"]["id"].as_str().unwrap().to_string();
    let flavor = c.flavor(&t, "tiny", 1, 64);
    let image = c.raw_image(&t, "zeros");
    let first = c.create_server(&t, "q1", &image, &flavor);
    let r = c.create_server_resp(&t, "q2", &image, &flavor);
    c.expect("second server over quota", &r, 403);
    let msg = r.json()["forbidden"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("Quota exceeded") && msg.contains("instances"),
        "403 must be Nova's forbidden body naming the instances quota: {r}"
    );
    let q = c.req(
        "GET",
        &format!("/compute/v2.1/os-quota-sets/{project}"),
        Some(&t),
        None,
    );
    c.expect("show quota", &q, 200);
    assert_eq!(q.json()["quota_set"]["instances"], 1, "{q}");
    let r = c.req(
        "PUT",
        &format!("/compute/v2.1/os-quota-sets/{project}"),
        Some(&t),
        Some(&json!({ "quota_set": { "instances": 2 } })),
    );
    c.expect("raise the quota", &r, 200);
    assert_eq!(r.json()["quota_set"]["instances"], 2, "{r}");
    let r = c.req(
        "GET",
        &format!("/compute/v2.1/os-quota-sets/{project}/defaults"),
        Some(&t),
        None,
    );
    c.expect("quota defaults", &r, 200);
    assert_eq!(
        r.json()["quota_set"]["instances"],
        1,
        "defaults stay --quota-instances: {r}"
    );
    let second = c.create_server(&t, "q2", &image, &flavor);
    let r = c.create_server_resp(&t, "q3", &image, &flavor);
    c.expect("third server over the raised quota", &r, 403);
    for id in [&first, &second] {
        c.wait_status(&t, id, "ACTIVE", &["BUILD"], BUILD_LIMIT);
    }
    let r = c.req(
        "GET",
        &format!("/compute/v2.1/os-quota-sets/{project}/detail"),
        Some(&t),
        None,
    );
    c.expect("quota detail", &r, 200);
    assert_eq!(
        r.json()["quota_set"]["instances"]["in_use"],
        2,
        "quota usage: {r}"
    );
}

#[test]
fn projects_are_isolated() {
    if !common::kvm_available() {
        return;
    }
    let c = Cloud::start(Opts::default());
    let (t, flavor, _) = c.basics();
    let image = c.image_record_with(
        &t,
        json!({ "name": "private", "disk_format": "raw", "container_format": "bare", "visibility": "private" }),
    );
    let r = c.upload(&t, &image, &[1u8; 4096]);
    c.expect("upload the private image", &r, 204);
    let id = c.create_server(&t, "admins", &image, &flavor);
    c.wait_status(&t, &id, "ACTIVE", &["BUILD"], BUILD_LIMIT);

    // Project p2 with user u2 as member.
    let r = c.req(
        "POST",
        "/identity/v3/projects",
        Some(&t),
        Some(&json!({ "project": { "name": "p2" } })),
    );
    c.expect("create project p2", &r, 201);
    let p2 = r.json()["project"]["id"].as_str().unwrap().to_string();
    let r = c.req(
        "POST",
        "/identity/v3/users",
        Some(&t),
        Some(
            &json!({ "user": { "name": "u2", "password": "pw-of-u2", "default_project_id": p2 } }),
        ),
    );
    c.expect("create user u2", &r, 201);
    let u2 = r.json()["user"]["id"].as_str().unwrap().to_string();
    let r = c.req("GET", "/identity/v3/roles?name=member", Some(&t), None);
    c.expect("find the member role", &r, 200);
    let member = r.json()["roles"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "member"))
        .and_then(|x| x["id"].as_str())
        .unwrap_or_else(|| panic!("no member role in {r}"))
        .to_string();
    let r = c.req(
        "PUT",
        &format!("/identity/v3/projects/{p2}/users/{u2}/roles/{member}"),
        Some(&t),
        None,
    );
    c.expect("grant member on p2 to u2", &r, 204);
    let t2 = c.token_for("u2", "pw-of-u2", "p2");

    let path = format!("/compute/v2.1/servers/{id}");
    let r = c.req("GET", &path, Some(&t2), None);
    c.expect("u2 shows admin's server", &r, 404);
    assert!(r.json().get("itemNotFound").is_some(), "{r}");
    let r = c.action(&t2, &id, json!({ "os-stop": null }));
    c.expect("u2 stops admin's server", &r, 404);
    let r = c.action(&t2, &id, json!({ "os-getConsoleOutput": {} }));
    c.expect("u2 reads admin's console", &r, 404);
    let r = c.req("DELETE", &path, Some(&t2), None);
    c.expect("u2 deletes admin's server", &r, 404);
    for list in [
        "/compute/v2.1/servers",
        "/compute/v2.1/servers/detail",
        "/compute/v2.1/servers?all_tenants=1",
    ] {
        let r = c.req("GET", list, Some(&t2), None);
        c.expect(&format!("u2 lists {list}"), &r, 200);
        assert_eq!(
            ids_of(&r.json(), "servers"),
            Vec::<String>::new(),
            "u2 must see no servers at {list}"
        );
    }
    let r = c.image(&t2, &image);
    c.expect("u2 shows admin's private image", &r, 404);
    let r = c.req("GET", "/image/v2/images", Some(&t2), None);
    c.expect("u2 lists images", &r, 200);
    assert!(
        !ids_of(&r.json(), "images").contains(&image),
        "admin's private image listed for u2: {r}"
    );
    let r = c.create_server_resp(&t2, "steal", &image, &flavor);
    c.expect("u2 boots admin's private image", &r, 400);
    let r = c.req(
        "PUT",
        &format!("/compute/v2.1/os-quota-sets/{p2}"),
        Some(&t2),
        Some(&json!({ "quota_set": { "instances": 100 } })),
    );
    c.expect("u2 raises its own quota", &r, 403);
    for path in [
        "/compute/v2.1/os-hypervisors/detail",
        "/compute/v2.1/os-hypervisors/statistics",
        "/compute/v2.1/os-services",
    ] {
        let r = c.req("GET", path, Some(&t2), None);
        c.expect(&format!("u2 reads the admin-only {path}"), &r, 403);
    }
    let r = c.req("GET", "/identity/v3/endpoints", Some(&t2), None);
    c.expect("u2 lists the catalog's endpoints", &r, 403);
    let r = c.req("GET", "/identity/v3/endpoints", Some(&t), None);
    c.expect("admin lists the catalog's endpoints", &r, 200);
    let endpoints = r.json()["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        endpoints
            .iter()
            .any(|e| e["service_id"] == "nova" && e["interface"] == "public"),
        "{}",
        r.text()
    );
    let r = c.req("GET", "/identity/v3/services/nova", Some(&t), None);
    c.expect("admin shows the compute service", &r, 200);
    assert_eq!(r.json()["service"]["type"], "compute", "{}", r.text());
    let r = c.req("GET", "/identity/v3/regions", Some(&t2), None);
    c.expect("u2 lists regions", &r, 200);
    let r = c.req("GET", "/compute/v2.1/os-availability-zone", Some(&t2), None);
    c.expect("u2 lists availability zones", &r, 200);
    assert_eq!(
        r.json()["availabilityZoneInfo"][0]["zoneName"],
        "nova",
        "{}",
        r.text()
    );
    // Admin's server was not touched.
    let s = c.server(&t, &id);
    assert_eq!(
        s["status"], "ACTIVE",
        "admin's server after u2's tries: {s}"
    );
    assert!(c.vmm_pid(&id).is_some(), "admin's VMM must still run");
}

#[test]
fn bad_requests_are_rejected_and_the_daemon_stays_healthy() {
    if !common::kvm_available() {
        return;
    }
    let c = Cloud::start(Opts::default());
    let (t, flavor, image) = c.basics();
    let id = c.create_server(&t, "target", &image, &flavor);
    c.wait_status(&t, &id, "ACTIVE", &["BUILD"], BUILD_LIMIT);
    let json_headers = [
        ("X-Auth-Token", t.as_str()),
        ("Content-Type", "application/json"),
    ];

    let r = c.raw(
        "POST",
        "/compute/v2.1/servers",
        &json_headers,
        Some(b"{\"server\": {\"name\": "),
    );
    c.expect("malformed JSON", &r, 400);
    assert!(r.json().get("badRequest").is_some(), "{r}");

    let r = c.req(
        "POST",
        "/compute/v2.1/flavors",
        Some(&t),
        Some(&json!({ "flavor": { "name": "f", "vcpus": 1, "ram": 64, "disk": 0, "bogus": 1 } })),
    );
    c.expect("unknown flavor field", &r, 400);
    assert!(r.json().get("badRequest").is_some(), "{r}");
    let r = c.req(
        "POST",
        "/compute/v2.1/servers",
        Some(&t),
        Some(&json!({ "server": { "name": "s", "imageRef": image, "flavorRef": flavor, "bogus": 1 } })),
    );
    c.expect("unknown server field", &r, 400);

    let big = json!({ "server": {
        "name": "big", "imageRef": image, "flavorRef": flavor,
        "metadata": { "k": "x".repeat(2 << 20) }
    } });
    let r = c.req("POST", "/compute/v2.1/servers", Some(&t), Some(&big));
    c.expect("2 MiB JSON body", &r, 413);

    let unknown = "00000000-0000-4000-8000-000000000000";
    let r = c.req(
        "GET",
        &format!("/compute/v2.1/servers/{unknown}"),
        Some(&t),
        None,
    );
    c.expect("unknown server", &r, 404);
    assert!(r.json().get("itemNotFound").is_some(), "{r}");
    let r = c.action(&t, unknown, json!({ "os-stop": null }));
    c.expect("action on an unknown server", &r, 404);

    let r = c.action(&t, &id, json!({ "bogus-action": null }));
    c.expect("unknown action", &r, 400);
    let r = c.action(&t, &id, json!({ "reboot": { "type": "BOGUS" } }));
    c.expect("reboot type BOGUS", &r, 400);
    let r = c.action(&t, &id, json!({ "os-stop": null, "os-start": null }));
    c.expect("two actions at once", &r, 400);

    let r = c.req("GET", "/compute/v2.1/servers", None, None);
    c.expect("no token", &r, 401);
    let r = c.req(
        "GET",
        "/compute/v2.1/servers",
        Some("gAAAAAgarbage-token"),
        None,
    );
    c.expect("garbage token", &r, 401);
    let r = c.req(
        "GET",
        &format!("/image/v2/images/{image}"),
        Some("garbage"),
        None,
    );
    c.expect("garbage token on the image API", &r, 401);

    // A qcow2 upload that is not a valid qcow2.
    let bad = c.image_record(&t, "corrupt", "qcow2");
    let mut data = b"QFI\xfb".to_vec();
    data.extend((0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    let r = c.upload(&t, &bad, &data);
    assert!(
        (400..500).contains(&r.status),
        "corrupt qcow2 upload must be a 4xx, got {r}\n{}",
        c.log_tail()
    );
    let r = c.image(&t, &bad);
    c.expect("show the corrupt image", &r, 200);
    assert_eq!(r.json()["status"], "killed", "corrupt image: {r}");
    assert_eq!(
        c.image_files(&bad),
        Vec::<String>::new(),
        "files left for the corrupt image"
    );
    let r = c.create_server_resp(&t, "from-killed", &bad, &flavor);
    c.expect("boot a killed image", &r, 400);

    // Still healthy; the server untouched.
    let s = c.server(&t, &id);
    assert_eq!(
        s["status"], "ACTIVE",
        "the server after the bad requests: {s}"
    );
    let r = c.req("GET", "/compute/v2.1/servers/detail", Some(&t), None);
    c.expect("list after the bad requests", &r, 200);
    assert_eq!(ids_of(&r.json(), "servers"), vec![id]);
}

#[test]
fn restarted_daemon_adopts_running_servers() {
    if !common::kvm_available() {
        return;
    }
    let mut c = Cloud::start(Opts::default());
    let (t, flavor, image) = c.basics();
    let a = c.create_server(&t, "a", &image, &flavor);
    let b = c.create_server(&t, "b", &image, &flavor);
    for id in [&a, &b] {
        c.wait_status(&t, id, "ACTIVE", &["BUILD"], BUILD_LIMIT);
    }
    let pa = c.vmm_pid(&a).expect("VMM of a");
    let pb = c.vmm_pid(&b).expect("VMM of b");

    c.kill_daemon();
    assert!(
        common::pid_alive(pa) && common::pid_alive(pb),
        "VMMs must survive SIGKILL of the daemon"
    );
    c.restart();
    // Tokens live in the database: the old one still works.
    for (id, pid) in [(&a, pa), (&b, pb)] {
        let s = c.server(&t, id);
        assert_eq!(s["status"], "ACTIVE", "server {id} after restart: {s}");
        assert_eq!(
            c.vmm_pid(id),
            Some(pid),
            "server {id} must keep its VMM across a daemon restart"
        );
        c.wait_console(&t, id, READY_LINE, 1);
    }
    assert_eq!(c.vmm_pids().len(), 2, "exactly the two adopted VMMs");

    // The new daemon can act on them.
    let r = c.action(&t, &a, json!({ "os-stop": null }));
    c.expect("os-stop after restart", &r, 202);
    c.wait_status(&t, &a, "SHUTOFF", &["ACTIVE"], Duration::from_secs(20));
    assert!(!common::pid_alive(pa), "adopted VMM {pa} survived os-stop");
    c.delete_server(&t, &b);
    assert!(!common::pid_alive(pb), "adopted VMM {pb} survived delete");
    assert!(!c.instance_dir(&b).exists(), "instance dir of b left");
    // And start it again.
    let r = c.action(&t, &a, json!({ "os-start": null }));
    c.expect("os-start after restart", &r, 202);
    c.wait_status(&t, &a, "ACTIVE", &["SHUTOFF"], BUILD_LIMIT);
    c.delete_server(&t, &a);
    assert_eq!(c.vmm_pids(), Vec::<i32>::new(), "VMMs left");
}

#[test]
fn restart_in_the_middle_of_builds_leaves_no_server_in_build() {
    if !common::kvm_available() {
        return;
    }
    let mut c = Cloud::start(Opts::default());
    let (t, flavor, image) = c.basics();
    let ids: Vec<String> = (0..2)
        .map(|i| c.create_server(&t, &format!("mid-{i}"), &image, &flavor))
        .collect();
    c.kill_daemon();
    c.restart();
    let deadline = Instant::now() + BUILD_LIMIT;
    let mut active = Vec::new();
    for id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let s = c.wait_any(&t, id, &["ACTIVE", "ERROR"], left);
        if s["status"] == "ACTIVE" {
            active.push(id.clone());
        }
    }
    // Let anything still starting settle before counting processes.
    std::thread::sleep(Duration::from_secs(1));
    let mut expected: Vec<i32> = active
        .iter()
        .map(|id| {
            c.vmm_pid(id).unwrap_or_else(|| {
                panic!(
                    "ACTIVE server {id} has no live VMM after the restart\n{}",
                    c.log_tail()
                )
            })
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(
        c.vmm_pids(),
        expected,
        "every nubo-vmm must belong to an ACTIVE server (ACTIVE: {active:?})\n{}",
        c.log_tail()
    );
    for id in &ids {
        c.delete_server(&t, id);
    }
    assert_eq!(c.vmm_pids(), Vec::<i32>::new(), "VMMs left after deletes");
}

#[test]
fn image_upload_over_max_image_mib_is_413() {
    if !common::kvm_available() {
        return;
    }
    let c = Cloud::start(Opts::default().arg("--max-image-mib", "1"));
    let t = c.admin_token();
    let big = c.image_record(&t, "big", "raw");
    let r = c.upload(&t, &big, &vec![0u8; 2 << 20]);
    c.expect("2 MiB upload with --max-image-mib 1", &r, 413);
    let r = c.image(&t, &big);
    c.expect("show the too-big image", &r, 200);
    assert_ne!(r.json()["status"], "active", "too-big image: {r}");
    assert_eq!(r.json()["status"], "killed", "too-big image: {r}");
    assert_eq!(c.image_files(&big), Vec::<String>::new(), "files left");
    // Exactly the limit is fine.
    let ok = c.image_record(&t, "fits", "raw");
    let r = c.upload(&t, &ok, &vec![0u8; 1 << 20]);
    c.expect("1 MiB upload with --max-image-mib 1", &r, 204);
    let r = c.req("GET", "/image/v2/images", Some(&t), None);
    c.expect("daemon healthy after the 413", &r, 200);
}

/// Glance's AKI convention: an image's `kernel_id` names an `aki` image the
/// server boots instead of the daemon's default kernel, and its
/// `os_command_line` is the kernel command line. A `kernel_id` that is not an
/// `aki` image fails the build with a fault that says so.
#[test]
fn kernel_id_and_os_command_line_choose_the_guest_kernel() {
    if !common::kvm_available() {
        return;
    }
    // The default kernel powers off at once; the aki one stays up, so an
    // ACTIVE server proves the aki kernel booted.
    let c = Cloud::start(Opts {
        end: TinyEnd::AcpiPowerOff,
        ..Opts::default()
    });
    let t = c.admin_token();
    let flavor = c.flavor(&t, "tiny", 1, 64);
    let aki = c.image_record_with(
        &t,
        json!({ "name": "tiny-kernel", "disk_format": "aki", "container_format": "aki" }),
    );
    let r = c.upload(&t, &aki, &elf(TinyEntry::Long64, TinyEnd::Halt));
    c.expect("upload the aki kernel", &r, 204);
    let disk = c.image_record_with(
        &t,
        json!({
            "name": "disk-with-kernel", "disk_format": "raw", "container_format": "bare",
            "kernel_id": aki, "os_command_line": "console=ttyS0 nubo.test=aki",
        }),
    );
    let r = c.upload(&t, &disk, &vec![1u8; 1 << 20]);
    c.expect("upload the disk", &r, 204);
    let id = c.create_server(&t, "aki-vm", &disk, &flavor);
    c.wait_status(&t, &id, "ACTIVE", &["BUILD"], BUILD_LIMIT);
    c.wait_console(&t, &id, READY_LINE, 1);
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(c.instance_dir(&id).join("spec.json")).expect("spec.json"),
    )
    .expect("spec.json is JSON");
    // The guest is stored as the VMM's own VmConfig.
    let spec = &spec["vm"];
    assert!(
        spec["kernel"].as_str().is_some_and(|k| k.ends_with(&aki)),
        "the server must boot the aki image {aki}: {spec}"
    );
    assert_eq!(spec["cmdline"], "console=ttyS0 nubo.test=aki", "{spec}");
    assert!(
        spec["initrd"].is_null(),
        "no ramdisk_id, no default initrd with a kernel_id: {spec}"
    );
    // Still running after a while: not the powering-off default kernel.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.server(&t, &id)["status"], "ACTIVE");

    // kernel_id pointing at a raw image: ERROR with a fault naming the problem.
    let bad = c.image_record_with(
        &t,
        json!({ "name": "bad-kernel-ref", "disk_format": "raw", "container_format": "bare", "kernel_id": disk }),
    );
    let r = c.upload(&t, &bad, &vec![2u8; 1 << 20]);
    c.expect("upload the disk", &r, 204);
    let id2 = c.create_server(&t, "bad-aki-vm", &bad, &flavor);
    let s = c.wait_status(&t, &id2, "ERROR", &["BUILD"], BUILD_LIMIT);
    let fault = s["fault"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        fault.contains("kernel_id") && fault.contains("aki"),
        "fault: {s}"
    );
}
