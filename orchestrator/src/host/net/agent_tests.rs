//! The agent against a real kernel, on this machine: everything runs on a
//! thread inside a network namespace of its own (links, `nft`, the DHCP
//! server), so the machine's interfaces are never touched; router
//! namespaces are named after this test's ids and removed at the end.
//! Port filters need conntrack in the bridge family, which some kernels
//! lack: the ports here have port security off (the testbed covers the
//! filters with real guests).

use std::net::Ipv4Addr;

use netstack::link::{LinkKind, Netlink};
use netstack::{netns, nft, Ipv4Net};

use super::agent::{NetAgent, NetAgentConfig};
use super::plan::*;
use super::{NetHost, NetHostError, NetPlan};

const NET: &str = "a1000001-0000-4000-8000-000000000001";
const EXT: &str = "a2000002-0000-4000-8000-000000000002";
const VLAN_NET: &str = "a3000003-0000-4000-8000-000000000003";
const VM_PORT: &str = "b1000001-0000-4000-8000-000000000001";
const RI_PORT: &str = "b2000002-0000-4000-8000-000000000002";
const RG_PORT: &str = "b3000003-0000-4000-8000-000000000003";
const ROUTER: &str = "c1b2c3d4-0000-4000-8000-00000000test";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn plan() -> NetPlan {
    NetPlan {
        networks: vec![
            NetworkPlan {
                id: NET.into(),
                segment: Segment::Vxlan { vni: 1042 },
                mtu: 1450,
                dhcp: vec![DhcpSubnet {
                    subnet_id: "s1".into(),
                    cidr: net("10.9.0.0/24"),
                    server_ip: ip("10.9.0.2"),
                    server_mac: [0xfa, 0x16, 0x3e, 0, 0, 2],
                    gateway: Some(ip("10.9.0.1")),
                    dns_nameservers: vec![],
                    host_routes: vec![],
                    leases: vec![DhcpLease {
                        mac: [0xfa, 0x16, 0x3e, 0, 0, 3],
                        ip: ip("10.9.0.3"),
                        hostname: "host-10-9-0-3".into(),
                    }],
                }],
            },
            NetworkPlan {
                id: EXT.into(),
                segment: Segment::Flat {
                    physnet: "physext".into(),
                },
                mtu: 1500,
                dhcp: vec![],
            },
        ],
        ports: vec![PortPlan {
            id: VM_PORT.into(),
            network_id: NET.into(),
            kind: PortKind::Vm,
            admin_state_up: true,
            mac: [0xfa, 0x16, 0x3e, 0, 0, 3],
            ips: vec![ip("10.9.0.3")],
            port_security: false,
            allowed_address_pairs: vec![],
            rules: vec![],
        }],
        routers: vec![RouterPlan {
            id: ROUTER.into(),
            admin_state_up: true,
            interfaces: vec![RouterLeg {
                port_id: RI_PORT.into(),
                network_id: NET.into(),
                mac: [0xfa, 0x16, 0x3e, 0, 1, 1],
                addrs: vec![net("10.9.0.1/24")],
            }],
            gateway: Some(RouterGateway {
                leg: RouterLeg {
                    port_id: RG_PORT.into(),
                    network_id: EXT.into(),
                    mac: [0xfa, 0x16, 0x3e, 0, 1, 2],
                    addrs: vec![net("198.51.100.5/24")],
                },
                default_route: Some(ip("198.51.100.1")),
                enable_snat: true,
                snat_sources: vec![net("10.9.0.0/24")],
            }),
            floating_ips: vec![FloatingIpPlan {
                id: "fip1".into(),
                floating_ip: ip("198.51.100.20"),
                fixed_ip: ip("10.9.0.3"),
            }],
            routes: vec![],
        }],
    }
}

/// What nubo-named things this namespace (and the router's) holds.
fn inventory() -> Vec<String> {
    let nl = Netlink::host().unwrap();
    let mut out: Vec<String> = nl
        .links()
        .unwrap()
        .into_iter()
        .filter(|l| {
            l.name.starts_with("brq")
                || l.name.starts_with("tap")
                || l.name.starts_with("vxlan-")
                || l.kind == LinkKind::Vlan
        })
        .map(|l| l.name)
        .collect();
    out.extend(
        netns::list()
            .unwrap()
            .into_iter()
            .filter(|n| n == &router_namespace(ROUTER)),
    );
    out.extend(nft::list_tables(None).unwrap().into_iter().map(|t| t.name));
    out.sort();
    out
}

fn able() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && nft) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the agent test must run under CI=true (root: {root}, nft: {nft})"
        );
        eprintln!("skipped: needs root and nft (root: {root}, nft: {nft})");
    }
    root && nft
}

#[test]
fn the_agent_builds_reconciles_and_removes_a_plan() {
    if !able() {
        return;
    }
    let t = std::thread::spawn(|| {
        // SAFETY: unshare only moves this thread into a new network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let nl = Netlink::host().unwrap();
        nl.create_veth("ext0", "ext0p", None).unwrap();
        let agent = NetAgent::new(NetAgentConfig {
            physical_interface_mappings: [("physext".to_string(), "ext0".to_string())]
                .into_iter()
                .collect(),
            vxlan_local_ip: Some(ip("192.0.2.1")),
            vxlan_peers: vec![ip("192.0.2.2"), ip("192.0.2.3")],
            external_gateway: None,
        })
        .unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let p = plan();
            agent.check_segment(&Segment::Vxlan { vni: 1 }).ok();
            let first = agent.apply(&p).unwrap();
            assert!(first.changes > 10, "{first:?}");
            // The VM's TAP: opened, enslaved, then a second pass changes
            // nothing at all.
            let tap = agent.open_tap(&p.ports[0]).unwrap();
            let again = agent.apply(&p).unwrap();
            assert_eq!(again.changes, 0, "a second apply changed things");
            let l = nl.link(&tap_name(VM_PORT)).unwrap().unwrap();
            assert_eq!(l.master_name.as_deref(), Some(bridge_name(NET).as_str()));
            assert_eq!(l.mtu, 1450);
            let vx = nl.link("vxlan-1042").unwrap().unwrap();
            assert_eq!(vx.master_name.as_deref(), Some(bridge_name(NET).as_str()));
            let mut vteps = nl.flood_vteps("vxlan-1042").unwrap();
            vteps.sort();
            assert_eq!(vteps, vec![ip("192.0.2.2"), ip("192.0.2.3")]);
            assert_eq!(
                nl.link("ext0").unwrap().unwrap().master_name.as_deref(),
                Some(bridge_name(EXT).as_str())
            );
            // The router: legs with their addresses (the floating IP on the
            // gateway leg), forwarding, its NAT table.
            let ns = router_namespace(ROUTER);
            let inner = Netlink::in_namespace(&ns).unwrap();
            let qg = router_leg_name(RG_PORT, true);
            let mut addrs = inner.addresses(&qg).unwrap();
            addrs.sort();
            assert_eq!(addrs, vec![net("198.51.100.5/24"), net("198.51.100.20/32")]);
            assert_eq!(
                inner.addresses(&router_leg_name(RI_PORT, false)).unwrap(),
                vec![net("10.9.0.1/24")]
            );
            assert_eq!(
                netns::sysctl_read(Some(&ns), "net.ipv4.ip_forward")
                    .unwrap()
                    .trim(),
                "1"
            );
            let tables = nft::list_tables(Some(&ns)).unwrap();
            assert!(
                tables.iter().any(|t| t.name == nft::ROUTER_TABLE),
                "{tables:?}"
            );
            drop(inner);

            // A network this kernel cannot build (no 8021q here, or the
            // physnet's interface missing) fails and leaves nothing behind.
            let mut bad = p.clone();
            bad.networks.push(NetworkPlan {
                id: VLAN_NET.into(),
                segment: Segment::Vlan {
                    physnet: "physext".into(),
                    vid: 42,
                },
                mtu: 1500,
                dhcp: vec![],
            });
            let before = inventory();
            match agent.apply(&bad) {
                Err(e) => {
                    eprintln!("a VLAN network here: {e}");
                    assert_eq!(inventory(), before, "a failed network left things behind");
                    if netstack::link::probe_vlan().is_err() {
                        assert!(matches!(
                            agent.check_segment(&bad.networks[2].segment),
                            Err(NetHostError::Unsupported(_))
                        ));
                    }
                }
                Ok(_) => {
                    // A kernel with 8021q: the VLAN device exists.
                    assert!(nl.link("ext0.42").unwrap().is_some());
                }
            }

            // Everything removed: an empty plan leaves no nubo thing.
            drop(tap);
            let gone = agent.apply(&NetPlan::default()).unwrap();
            assert!(gone.changes > 0);
            assert_eq!(inventory(), Vec::<String>::new());
        }));
        let _ = netns::delete(&router_namespace(ROUTER));
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    t.join().unwrap();
}
