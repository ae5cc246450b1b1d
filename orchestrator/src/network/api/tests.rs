//! In-process tests of the Networking API (through the shared harness and
//! its fake network host).

use serde_json::{json, Value};

use crate::api_test::{self, Server};

async fn start() -> Server {
    api_test::start("/network", 1 << 20).await
}

fn msg(r: &api_test::Resp) -> String {
    r.json()["NeutronError"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn network(s: &Server, token: &str, body: Value) -> Value {
    let r = s
        .post("/v2.0/networks", token, json!({ "network": body }))
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["network"].clone()
}

async fn subnet(s: &Server, token: &str, body: Value) -> Value {
    let r = s
        .post("/v2.0/subnets", token, json!({ "subnet": body }))
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["subnet"].clone()
}

async fn port(s: &Server, token: &str, body: Value) -> api_test::Resp {
    s.post("/v2.0/ports", token, json!({ "port": body })).await
}

#[tokio::test]
async fn networks_have_neutrons_fields_and_a_tenant_vni() {
    let s = start().await;
    let n = network(&s, &s.alice, json!({ "name": "net1" })).await;
    for k in [
        "id",
        "name",
        "description",
        "project_id",
        "tenant_id",
        "created_at",
        "updated_at",
        "revision_number",
        "tags",
        "status",
        "admin_state_up",
        "shared",
        "mtu",
        "router:external",
        "port_security_enabled",
        "subnets",
        "availability_zone_hints",
        "availability_zones",
        "is_default",
    ] {
        assert!(n.get(k).is_some(), "{k} missing in {n}");
    }
    assert_eq!(n["mtu"], 1450);
    assert_eq!(n["project_id"], "other");
    assert!(
        n.get("provider:network_type").is_none(),
        "members do not see provider attributes"
    );
    let id = n["id"].as_str().unwrap();
    let r = s.get(&format!("/v2.0/networks/{id}"), &s.admin).await;
    let a = &r.json()["network"];
    assert_eq!(a["provider:network_type"], "vxlan");
    assert_eq!(a["provider:segmentation_id"], 1000);
    let n2 = network(&s, &s.alice, json!({ "name": "net2" })).await;
    let r = s
        .get(
            &format!("/v2.0/networks/{}", n2["id"].as_str().unwrap()),
            &s.admin,
        )
        .await;
    assert_eq!(r.json()["network"]["provider:segmentation_id"], 1001);
    // Another project's network is 404 for a member, the list has only its own.
    let mine = network(&s, &s.admin, json!({ "name": "adm" })).await;
    let r = s
        .get(
            &format!("/v2.0/networks/{}", mine["id"].as_str().unwrap()),
            &s.alice,
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(msg(&r).contains("could not be found"), "{}", msg(&r));
    let r = s.get("/v2.0/networks?name=net1", &s.alice).await;
    assert_eq!(r.json()["networks"].as_array().unwrap().len(), 1);
    let r = s.get("/v2.0/networks", &s.alice).await;
    assert_eq!(r.json()["networks"].as_array().unwrap().len(), 2);
    let r = s.get("/v2.0/networks", &s.admin).await;
    assert_eq!(r.json()["networks"].as_array().unwrap().len(), 3);
    let r = s.get("/v2.0/networks?project_id=other", &s.admin).await;
    assert_eq!(r.json()["networks"].as_array().unwrap().len(), 2);
    let r = s
        .get("/v2.0/networks?name=net1&fields=id&fields=name", &s.alice)
        .await;
    let only = r.json()["networks"][0].as_object().unwrap().clone();
    assert_eq!(only.len(), 2, "{only:?}");
    assert_eq!(only["name"], "net1");
}

#[tokio::test]
async fn provider_attributes_and_flags_are_for_admins() {
    let s = start().await;
    for body in [
        json!({ "name": "x", "shared": true }),
        json!({ "name": "x", "router:external": true }),
        json!({ "name": "x", "provider:network_type": "vxlan" }),
    ] {
        let r = s
            .post("/v2.0/networks", &s.alice, json!({ "network": body }))
            .await;
        assert_eq!(r.status, 403, "{body}");
        assert!(msg(&r).contains("disallowed by policy"));
    }
    let r = s
        .post(
            "/v2.0/networks",
            &s.rita,
            json!({ "network": { "name": "x" } }),
        )
        .await;
    assert_eq!(r.status, 403, "readers do not write");
    let v = network(
        &s,
        &s.admin,
        json!({ "name": "v10", "provider:network_type": "vlan",
                "provider:physical_network": "physnet1", "provider:segmentation_id": 10 }),
    )
    .await;
    assert_eq!(v["mtu"], 1500);
    assert_eq!(v["provider:segmentation_id"], 10);
    let r = s
        .post(
            "/v2.0/networks",
            &s.admin,
            json!({ "network": { "provider:network_type": "vlan",
                    "provider:physical_network": "physnet1", "provider:segmentation_id": 10 } }),
        )
        .await;
    assert_eq!(r.status, 409, "a VLAN is taken once");
    let r = s
        .post(
            "/v2.0/networks",
            &s.admin,
            json!({ "network": { "provider:network_type": "vlan",
                    "provider:physical_network": "nowhere", "provider:segmentation_id": 11 } }),
        )
        .await;
    assert_eq!(r.status, 400);
    // A host without 8021q: 400 naming it, nothing stored.
    s.net.refuse_vlan(true);
    let r = s
        .post(
            "/v2.0/networks",
            &s.admin,
            json!({ "network": { "name": "v12", "provider:network_type": "vlan",
                    "provider:physical_network": "physnet1", "provider:segmentation_id": 12 } }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(msg(&r).contains("8021q"), "{}", msg(&r));
    let r = s.get("/v2.0/networks?name=v12", &s.admin).await;
    assert_eq!(r.json()["networks"].as_array().unwrap().len(), 0);
    // Unknown attributes and bad JSON.
    let r = s
        .post(
            "/v2.0/networks",
            &s.alice,
            json!({ "network": { "color": "red" } }),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(msg(&r), "Unrecognized attribute(s) 'color'");
    let r = s
        .call(
            "POST",
            "/v2.0/networks",
            &s.alice,
            Some("application/json"),
            b"{",
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn subnets_pools_gateways_and_overlaps() {
    let s = start().await;
    let n = network(&s, &s.alice, json!({ "name": "n" })).await;
    let nid = n["id"].as_str().unwrap();
    let sub = subnet(
        &s,
        &s.alice,
        json!({ "network_id": nid, "ip_version": 4, "cidr": "10.0.0.0/24", "name": "s" }),
    )
    .await;
    assert_eq!(sub["gateway_ip"], "10.0.0.1");
    assert_eq!(
        sub["allocation_pools"],
        json!([{ "start": "10.0.0.2", "end": "10.0.0.254" }])
    );
    assert_eq!(sub["enable_dhcp"], true);
    // The DHCP port took the first address.
    let r = s
        .get(
            &format!("/v2.0/ports?network_id={nid}&device_owner=network:dhcp"),
            &s.alice,
        )
        .await;
    let dhcp = r.json()["ports"].as_array().unwrap().clone();
    assert_eq!(dhcp.len(), 1);
    assert_eq!(dhcp[0]["fixed_ips"][0]["ip_address"], "10.0.0.2");
    assert!(dhcp[0]["device_id"].as_str().unwrap().starts_with("dhcp"));
    // Network shows its subnet.
    let r = s.get(&format!("/v2.0/networks/{nid}"), &s.alice).await;
    assert_eq!(r.json()["network"]["subnets"], json!([sub["id"]]));
    for (body, want) in [
        (
            json!({ "network_id": nid, "ip_version": 4, "cidr": "10.0.0.128/25" }),
            "overlaps",
        ),
        (
            json!({ "network_id": nid, "ip_version": 4, "cidr": "10.1.0.1/24" }),
            "Invalid input",
        ),
        (
            json!({ "network_id": nid, "ip_version": 6, "cidr": "fd00::/64" }),
            "IPv6",
        ),
        (
            json!({ "network_id": nid, "ip_version": 4, "cidr": "10.2.0.0/24",
                    "allocation_pools": [{ "start": "10.2.0.1", "end": "10.2.0.9" }] }),
            "Gateway",
        ),
        (
            json!({ "network_id": nid, "ip_version": 4, "cidr": "10.2.0.0/24",
                    "allocation_pools": [{ "start": "10.2.0.10", "end": "10.3.0.9" }] }),
            "spans beyond",
        ),
    ] {
        let r = s
            .post("/v2.0/subnets", &s.alice, json!({ "subnet": body }))
            .await;
        assert_eq!(r.status, 400, "{body}");
        assert!(msg(&r).contains(want), "{}: {}", want, msg(&r));
    }
    // Same CIDR on another network (another project): allowed.
    let n2 = network(&s, &s.admin, json!({ "name": "n2" })).await;
    subnet(
        &s,
        &s.admin,
        json!({ "network_id": n2["id"], "ip_version": 4, "cidr": "10.0.0.0/24",
                "gateway_ip": null, "enable_dhcp": false }),
    )
    .await;
    // Given pools and no gateway.
    let g = subnet(
        &s,
        &s.alice,
        json!({ "network_id": nid, "ip_version": 4, "cidr": "10.9.0.0/24", "gateway_ip": null,
                "allocation_pools": [{ "start": "10.9.0.10", "end": "10.9.0.11" }],
                "enable_dhcp": false, "dns_nameservers": ["8.8.8.8"],
                "host_routes": [{ "destination": "192.168.0.0/16", "nexthop": "10.9.0.1" }] }),
    )
    .await;
    assert_eq!(g["gateway_ip"], Value::Null);
    assert_eq!(g["dns_nameservers"], json!(["8.8.8.8"]));
    // Exhaustion: two addresses, then 409.
    let gid = g["id"].as_str().unwrap();
    for want in ["10.9.0.10", "10.9.0.11"] {
        let r = port(
            &s,
            &s.alice,
            json!({ "network_id": nid, "fixed_ips": [{ "subnet_id": gid }] }),
        )
        .await;
        assert_eq!(r.status, 201);
        assert_eq!(r.json()["port"]["fixed_ips"][0]["ip_address"], want);
    }
    let r = port(
        &s,
        &s.alice,
        json!({ "network_id": nid, "fixed_ips": [{ "subnet_id": gid }] }),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        msg(&r),
        format!("No more IP addresses available on network {nid}.")
    );
    // Subnet with ports: 409; network with ports: 409.
    let r = s.delete(&format!("/v2.0/subnets/{gid}"), &s.alice).await;
    assert_eq!(r.status, 409);
    assert!(msg(&r).contains("One or more ports have an IP allocation"));
    let r = s.delete(&format!("/v2.0/networks/{nid}"), &s.alice).await;
    assert_eq!(r.status, 409);
    assert!(msg(&r).contains("There are one or more ports still in use"));
    // Without them, the DHCP port goes with the subnet.
    let r = s
        .get(&format!("/v2.0/ports?network_id={nid}"), &s.alice)
        .await;
    for p in r.json()["ports"].as_array().unwrap() {
        if p["device_owner"] != "network:dhcp" {
            let r = s
                .delete(
                    &format!("/v2.0/ports/{}", p["id"].as_str().unwrap()),
                    &s.alice,
                )
                .await;
            assert_eq!(r.status, 204);
        }
    }
    let r = s.delete(&format!("/v2.0/networks/{nid}"), &s.alice).await;
    assert_eq!(r.status, 204, "{}", msg(&r));
    let r = s.get("/v2.0/ports", &s.alice).await;
    assert_eq!(r.json()["ports"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn ports_addresses_macs_and_security() {
    let s = start().await;
    let n = network(&s, &s.alice, json!({ "name": "n" })).await;
    let nid = n["id"].as_str().unwrap();
    let sub = subnet(
        &s,
        &s.alice,
        json!({ "network_id": nid, "ip_version": 4, "cidr": "10.0.0.0/24" }),
    )
    .await;
    let sid = sub["id"].as_str().unwrap();
    let r = port(&s, &s.alice, json!({ "network_id": nid, "name": "p1" })).await;
    assert_eq!(r.status, 201);
    let p = r.json()["port"].clone();
    assert!(p["mac_address"].as_str().unwrap().starts_with("fa:16:3e:"));
    assert_eq!(p["status"], "DOWN");
    assert_eq!(p["port_security_enabled"], true);
    assert_eq!(p["security_groups"].as_array().unwrap().len(), 1);
    assert_eq!(p["binding:vnic_type"], "normal");
    assert_eq!(p["fixed_ips"][0]["subnet_id"], sid);
    let r = port(
        &s,
        &s.alice,
        json!({ "network_id": nid, "fixed_ips": [{ "ip_address": "10.0.0.50" }],
                "mac_address": "fa:16:3e:00:00:01",
                "allowed_address_pairs": [{ "ip_address": "10.0.0.200" }] }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", msg(&r));
    let p2 = r.json()["port"].clone();
    assert_eq!(p2["fixed_ips"][0]["ip_address"], "10.0.0.50");
    assert_eq!(
        p2["allowed_address_pairs"][0]["mac_address"],
        "fa:16:3e:00:00:01"
    );
    let r = port(&s, &s.alice, json!({ "network_id": nid, "fixed_ips": [{ "subnet_id": sid, "ip_address": "10.0.0.50" }] })).await;
    assert_eq!(r.status, 409);
    assert_eq!(
        msg(&r),
        format!("IP address 10.0.0.50 already allocated in subnet {sid}")
    );
    let r = port(
        &s,
        &s.alice,
        json!({ "network_id": nid, "mac_address": "fa:16:3e:00:00:01" }),
    )
    .await;
    assert_eq!(r.status, 409);
    let r = port(&s, &s.alice, json!({ "network_id": nid, "bogus": 1 })).await;
    assert_eq!(r.status, 400);
    assert_eq!(msg(&r), "Unrecognized attribute(s) 'bogus'");
    let r = port(
        &s,
        &s.alice,
        json!({ "network_id": nid, "binding:host_id": "h" }),
    )
    .await;
    assert_eq!(r.status, 403);
    // Port security off: no groups.
    let r = port(
        &s,
        &s.alice,
        json!({ "network_id": nid, "port_security_enabled": false }),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["port"]["security_groups"], json!([]));
    // Filters the SDK sends.
    let q = format!("/v2.0/ports?fixed_ips=subnet_id%3D{sid}&fixed_ips=ip_address%3D10.0.0.50");
    let r = s.get(&q, &s.alice).await;
    let ports = r.json()["ports"].as_array().unwrap().clone();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["id"], p2["id"]);
    // Update and status.
    let pid = p["id"].as_str().unwrap();
    let r = s
        .put(
            &format!("/v2.0/ports/{pid}"),
            &s.alice,
            json!({ "port": { "name": "renamed", "device_id": "d1" } }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["port"]["name"], "renamed");
    assert_eq!(r.json()["port"]["revision_number"], 2);
    let r = s.get("/v2.0/ports?device_id=d1", &s.alice).await;
    assert_eq!(r.json()["ports"].as_array().unwrap().len(), 1);
    // Another project cannot see it.
    let r = s.get(&format!("/v2.0/ports/{pid}"), &s.rita).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn routers_interfaces_gateways_and_floating_ips() {
    let s = start().await;
    let ext = network(
        &s,
        &s.admin,
        json!({ "name": "public", "router:external": true }),
    )
    .await;
    let ext_id = ext["id"].as_str().unwrap();
    subnet(
        &s,
        &s.admin,
        json!({ "network_id": ext_id, "ip_version": 4, "cidr": "172.24.4.0/24", "enable_dhcp": false }),
    )
    .await;
    let n = network(&s, &s.alice, json!({ "name": "n" })).await;
    let nid = n["id"].as_str().unwrap();
    let sub = subnet(
        &s,
        &s.alice,
        json!({ "network_id": nid, "ip_version": 4, "cidr": "10.0.0.0/24" }),
    )
    .await;
    let sid = sub["id"].as_str().unwrap();
    // Members see the external network.
    let r = s.get("/v2.0/networks?router:external=True", &s.alice).await;
    assert_eq!(r.json()["networks"].as_array().unwrap().len(), 1);

    let r = s
        .post(
            "/v2.0/routers",
            &s.alice,
            json!({ "router": { "name": "r" } }),
        )
        .await;
    assert_eq!(r.status, 201);
    let rid = r.json()["router"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["router"]["external_gateway_info"], Value::Null);
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &s.alice,
            json!({ "subnet_id": sid }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", msg(&r));
    let iface = r.json();
    assert_eq!(iface["subnet_id"], sid);
    assert_eq!(iface["network_id"], nid);
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &s.alice,
            json!({ "subnet_id": sid }),
        )
        .await;
    assert_eq!(r.status, 400);
    // Gateway on a non-external network: 400; on the external one: a port.
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}"),
            &s.alice,
            json!({ "router": { "external_gateway_info": { "network_id": nid } } }),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}"),
            &s.alice,
            json!({ "router": { "external_gateway_info": { "network_id": ext_id } } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", msg(&r));
    let gw = r.json()["router"]["external_gateway_info"].clone();
    assert_eq!(gw["enable_snat"], true);
    assert_eq!(gw["external_fixed_ips"][0]["ip_address"], "172.24.4.2");
    // A VM port and a floating IP for it.
    let r = port(
        &s,
        &s.alice,
        json!({ "network_id": nid, "device_owner": "compute:nova", "device_id": "vm1" }),
    )
    .await;
    let vm_port = r.json()["port"]["id"].as_str().unwrap().to_string();
    let r = s
        .post(
            "/v2.0/floatingips",
            &s.alice,
            json!({ "floatingip": { "floating_network_id": ext_id } }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", msg(&r));
    let fip = r.json()["floatingip"].clone();
    assert_eq!(fip["status"], "DOWN");
    let fid = fip["id"].as_str().unwrap();
    let r = s
        .put(
            &format!("/v2.0/floatingips/{fid}"),
            &s.alice,
            json!({ "floatingip": { "port_id": vm_port } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", msg(&r));
    let f = r.json()["floatingip"].clone();
    assert_eq!(f["router_id"], rid);
    assert_eq!(f["status"], "ACTIVE");
    assert_eq!(f["fixed_ip_address"], "10.0.0.3");
    assert_eq!(f["port_details"]["device_id"], "vm1");
    let r = s
        .get(
            &format!(
                "/v2.0/floatingips?floating_ip_address={}",
                f["floating_ip_address"].as_str().unwrap()
            ),
            &s.alice,
        )
        .await;
    assert_eq!(r.json()["floatingips"].as_array().unwrap().len(), 1);
    // The plan has the router with its legs, SNAT and the floating IP.
    let plan = s.net.last_plan().expect("a plan was applied");
    assert_eq!(plan.routers.len(), 1);
    let rp = &plan.routers[0];
    assert_eq!(rp.interfaces.len(), 1);
    let g = rp.gateway.as_ref().expect("gateway");
    assert_eq!(g.snat_sources[0].to_string(), "10.0.0.0/24");
    assert_eq!(rp.floating_ips.len(), 1);
    assert_eq!(plan.networks.len(), 2);
    // Router and DHCP ports ACTIVE after the sync.
    let r = s
        .get(&format!("/v2.0/ports?device_id={rid}"), &s.alice)
        .await;
    for p in r.json()["ports"].as_array().unwrap() {
        assert_eq!(p["status"], "ACTIVE");
    }
    // Router delete with an interface: 409.
    let r = s.delete(&format!("/v2.0/routers/{rid}"), &s.alice).await;
    assert_eq!(r.status, 409);
    assert_eq!(msg(&r), format!("Router {rid} still has ports"));
    // Interfaces needed by a floating IP stay; after disassociating they go.
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            &s.alice,
            json!({ "subnet_id": sid }),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = s
        .put(
            &format!("/v2.0/floatingips/{fid}"),
            &s.alice,
            json!({ "floatingip": { "port_id": null } }),
        )
        .await;
    assert_eq!(r.json()["floatingip"]["status"], "DOWN");
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            &s.alice,
            json!({ "subnet_id": sid }),
        )
        .await;
    assert_eq!(r.status, 200);
    // Not reachable without the interface: 404.
    let r = s
        .put(
            &format!("/v2.0/floatingips/{fid}"),
            &s.alice,
            json!({ "floatingip": { "port_id": vm_port } }),
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(msg(&r).contains("is not reachable from subnet"));
    let r = s
        .delete(&format!("/v2.0/floatingips/{fid}"), &s.alice)
        .await;
    assert_eq!(r.status, 204);
    let r = s.delete(&format!("/v2.0/routers/{rid}"), &s.alice).await;
    assert_eq!(r.status, 204);
    assert!(s.net.last_plan().unwrap().routers.is_empty());
}

#[tokio::test]
async fn extensions_resources_and_quotas() {
    let s = start().await;
    let r = s.get("/v2.0/extensions", &s.alice).await;
    let aliases: Vec<String> = r.json()["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["alias"].as_str().unwrap().to_string())
        .collect();
    for a in [
        "external-net",
        "router",
        "provider",
        "security-group",
        "quotas",
        "binding",
    ] {
        assert!(aliases.iter().any(|x| x == a), "{a}");
    }
    let r = s.get("/v2.0/extensions/router", &s.alice).await;
    assert_eq!(r.status, 200);
    let r = s
        .get("/v2.0/extensions/external-gateway-multihoming", &s.alice)
        .await;
    assert_eq!(r.status, 404);
    let r = s.get("/v2.0", &s.alice).await;
    assert!(r.json()["resources"].as_array().unwrap().len() >= 5);

    let r = s.get("/v2.0/quotas/other", &s.alice).await;
    assert_eq!(r.json()["quota"]["network"], 100);
    let r = s.get("/v2.0/quotas/other/details.json", &s.alice).await;
    assert_eq!(r.json()["quota"]["port"]["used"], 0);
    let r = s
        .get(&format!("/v2.0/quotas/{}", s.admin_project), &s.alice)
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .put(
            "/v2.0/quotas/other",
            &s.alice,
            json!({ "quota": { "network": 1 } }),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .put(
            "/v2.0/quotas/other",
            &s.admin,
            json!({ "quota": { "network": 1 } }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["quota"]["network"], 1);
    let r = s.get("/v2.0/quotas", &s.admin).await;
    assert_eq!(r.json()["quotas"][0]["project_id"], "other");
    network(&s, &s.alice, json!({ "name": "one" })).await;
    let r = s
        .post(
            "/v2.0/networks",
            &s.alice,
            json!({ "network": { "name": "two" } }),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(msg(&r), "Quota exceeded for resources: ['network'].");
    let r = s.delete("/v2.0/quotas/other", &s.admin).await;
    assert_eq!(r.status, 204);
    network(&s, &s.alice, json!({ "name": "two" })).await;
}

/// The image and flavor servers boot with (the fake host reads no file).
const IMAGE: &str = "00000000-0000-0000-0000-0000000000aa";

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
    assert_eq!(
        s.post("/compute/v2.1/flavors", &s.admin, flavor)
            .await
            .status,
        200
    );
}

async fn boot(s: &Server, token: &str, networks: Value) -> api_test::Resp {
    let body = json!({ "server": { "name": "vm", "imageRef": IMAGE, "flavorRef": "tiny",
                                   "networks": networks } });
    s.post("/compute/v2.1/servers", token, body).await
}

#[tokio::test]
async fn servers_get_ports_addresses_and_lose_them_on_delete() {
    let s = api_test::start("", 1 << 20).await;
    image_and_flavor(&s).await;
    // auto with no network: 400.
    let r = boot(&s, &s.alice, json!("auto")).await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("Unable to automatically allocate"));
    let r = s
        .post(
            "/network/v2.0/networks",
            &s.alice,
            json!({ "network": { "name": "n1" } }),
        )
        .await;
    let n1 = r.json()["network"]["id"].as_str().unwrap().to_string();
    let r = s
        .post(
            "/network/v2.0/subnets",
            &s.alice,
            json!({ "subnet": {
        "network_id": n1, "ip_version": 4, "cidr": "10.0.0.0/24" } }),
        )
        .await;
    assert_eq!(r.status, 201);
    // Unknown network: 400 in Nova's words; fixed IP with max_count 2: 400.
    let r = boot(&s, &s.alice, json!([{ "uuid": "nope" }])).await;
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("Network nope could not be found."));
    let body = json!({ "server": { "name": "vm", "imageRef": IMAGE, "flavorRef": "tiny",
        "max_count": 2, "networks": [{ "uuid": n1, "fixed_ip": "10.0.0.9" }] } });
    assert_eq!(
        s.post("/compute/v2.1/servers", &s.alice, body).await.status,
        400
    );
    // A network with a fixed IP, and a given port.
    let r = s
        .post(
            "/network/v2.0/ports",
            &s.alice,
            json!({ "port": { "network_id": n1 } }),
        )
        .await;
    let given = r.json()["port"]["id"].as_str().unwrap().to_string();
    let r = boot(
        &s,
        &s.alice,
        json!([{ "uuid": n1, "fixed_ip": "10.0.0.9" }, { "port": given }]),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let sid = r.json()["server"]["id"].as_str().unwrap().to_string();
    // The given port is now in use.
    let r = boot(&s, &s.alice, json!([{ "port": given }])).await;
    assert_eq!(r.status, 409);
    let r = s
        .get(&format!("/compute/v2.1/servers/{sid}"), &s.alice)
        .await;
    let addrs = r.json()["server"]["addresses"]["n1"].clone();
    assert_eq!(addrs.as_array().unwrap().len(), 2, "{addrs}");
    assert_eq!(addrs[0]["addr"], "10.0.0.9");
    assert_eq!(addrs[0]["OS-EXT-IPS:type"], "fixed");
    assert!(addrs[0]["OS-EXT-IPS-MAC:mac_addr"]
        .as_str()
        .unwrap()
        .starts_with("fa:16:3e"));
    let r = s.get("/compute/v2.1/servers/detail", &s.alice).await;
    assert_eq!(
        r.json()["servers"][0]["addresses"]["n1"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // os-interface.
    let r = s
        .get(
            &format!("/compute/v2.1/servers/{sid}/os-interface"),
            &s.alice,
        )
        .await;
    let ifs = r.json()["interfaceAttachments"].as_array().unwrap().clone();
    assert_eq!(ifs.len(), 2);
    assert_eq!(ifs[1]["port_id"], given.as_str());
    let r = s
        .get(
            &format!("/compute/v2.1/servers/{sid}/os-interface/{given}"),
            &s.alice,
        )
        .await;
    assert_eq!(r.json()["interfaceAttachment"]["net_id"], n1.as_str());
    let r = s
        .post(
            &format!("/compute/v2.1/servers/{sid}/os-interface"),
            &s.alice,
            json!({ "interfaceAttachment": { "net_id": n1 } }),
        )
        .await;
    assert_eq!(r.status, 409);
    // The ports are in the plan, bound here, in NIC order for the integrator.
    let ports = crate::network::service::server_ports(&s.db.lock(), &sid).unwrap();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[1].id, given);
    assert_eq!(ports[0].kind, crate::host::net::plan::PortKind::Vm);
    let plan = s.net.last_plan().unwrap();
    assert_eq!(
        plan.ports
            .iter()
            .filter(|p| p.kind == crate::host::net::plan::PortKind::Vm)
            .count(),
        2
    );
    assert_eq!(plan.networks[0].dhcp[0].leases.len(), 2);
    // ?device_id= as `port list --server` sends it.
    let r = s
        .get(&format!("/network/v2.0/ports?device_id={sid}"), &s.alice)
        .await;
    assert_eq!(r.json()["ports"].as_array().unwrap().len(), 2);
    // auto with two networks: 409.
    s.post(
        "/network/v2.0/networks",
        &s.alice,
        json!({ "network": { "name": "n2" } }),
    )
    .await;
    let r = boot(&s, &s.alice, json!("auto")).await;
    assert_eq!(r.status, 409);
    // Delete: the created port goes, the given one is unbound.
    let r = s
        .call(
            "DELETE",
            &format!("/compute/v2.1/servers/{sid}"),
            &s.alice,
            None,
            b"",
        )
        .await;
    assert_eq!(r.status, 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = s
            .get(&format!("/network/v2.0/ports?network_id={n1}"), &s.alice)
            .await;
        let ports = r.json()["ports"].as_array().unwrap().clone();
        if ports.len() == 2 {
            let p = ports.iter().find(|p| p["id"] == given.as_str()).unwrap();
            assert_eq!(p["device_id"], "");
            assert_eq!(p["binding:host_id"], "");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ports not released: {ports:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn router_interface_and_reader_refusals() {
    let s = start().await;
    let n = network(&s, &s.admin, json!({ "name": "n" })).await;
    let nid = n["id"].as_str().unwrap();
    let nogw = subnet(
        &s,
        &s.admin,
        json!({ "network_id": nid, "ip_version": 4, "cidr": "10.5.0.0/24", "gateway_ip": null }),
    )
    .await;
    let r = s
        .post(
            "/v2.0/routers",
            &s.rita,
            json!({ "router": { "name": "r" } }),
        )
        .await;
    assert_eq!(r.status, 403, "readers only look");
    let r = s
        .post(
            "/v2.0/routers",
            &s.admin,
            json!({ "router": { "name": "r" } }),
        )
        .await;
    let rid = r.json()["router"]["id"].as_str().unwrap().to_string();
    let path = format!("/v2.0/routers/{rid}/add_router_interface");
    let r = s
        .put(&path, &s.admin, json!({ "subnet_id": nogw["id"] }))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        msg(&r).contains("does not have a gateway IP"),
        "{}",
        msg(&r)
    );
    // By port: a bound port is in use; a free one becomes the interface.
    let r = port(&s, &s.admin, json!({ "network_id": nid, "device_id": "x" })).await;
    let used = r.json()["port"]["id"].as_str().unwrap().to_string();
    let r = s.put(&path, &s.admin, json!({ "port_id": used })).await;
    assert_eq!(r.status, 409);
    let r = port(&s, &s.admin, json!({ "network_id": nid })).await;
    let free = r.json()["port"]["id"].as_str().unwrap().to_string();
    let r = s.put(&path, &s.admin, json!({ "port_id": free })).await;
    assert_eq!(r.status, 200, "{}", msg(&r));
    assert_eq!(r.json()["port_id"], free.as_str());
    let r = s.delete(&format!("/v2.0/ports/{free}"), &s.admin).await;
    assert_eq!(r.status, 409, "router ports go through their router");
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            &s.admin,
            json!({ "port_id": "nope" }),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            &s.admin,
            json!({ "port_id": free }),
        )
        .await;
    assert_eq!(r.status, 200);
    // A readers' GET works.
    let r = s.get(&format!("/v2.0/routers/{rid}"), &s.rita).await;
    assert_eq!(r.status, 200);
    let r = s.get("/v2.0/routers/nope", &s.admin).await;
    assert_eq!(r.status, 404);
    assert_eq!(msg(&r), "Router nope could not be found.");
}

#[tokio::test]
async fn extra_routes_need_a_connected_next_hop() {
    let s = start().await;
    let n = network(&s, &s.alice, json!({ "name": "n" })).await;
    let sub = subnet(
        &s,
        &s.alice,
        json!({ "network_id": n["id"], "ip_version": 4, "cidr": "10.7.0.0/24" }),
    )
    .await;
    let r = s
        .post(
            "/v2.0/routers",
            &s.alice,
            json!({ "router": { "name": "r" } }),
        )
        .await;
    let rid = r.json()["router"]["id"].as_str().unwrap().to_string();
    let route = json!({ "router": { "routes": [
        { "destination": "10.99.0.0/16", "nexthop": "10.7.0.254" } ] } });
    let add = format!("/v2.0/routers/{rid}/add_extraroutes");
    let r = s.put(&add, &s.alice, route.clone()).await;
    assert_eq!(r.status, 400, "not connected yet");
    assert!(msg(&r).contains("the nexthop is not connected with router"));
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &s.alice,
            json!({ "subnet_id": sub["id"] }),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s.put(&add, &s.alice, route.clone()).await;
    assert_eq!(r.status, 200, "{}", msg(&r));
    assert_eq!(r.json()["router"]["routes"].as_array().unwrap().len(), 1);
    let plan = s.net.last_plan().unwrap();
    assert_eq!(plan.routers[0].routes.len(), 1);
    let r = s
        .put(
            &format!("/v2.0/routers/{rid}/remove_extraroutes"),
            &s.alice,
            route,
        )
        .await;
    assert_eq!(r.json()["router"]["routes"], json!([]));
    let r = port(
        &s,
        &s.alice,
        json!({ "network_id": n["id"], "extra_dhcp_opts": [{ "opt_name": "mtu", "opt_value": "1" }] }),
    )
    .await;
    assert_eq!(r.status, 400);
}
