//! Netlink plumbing tests. Each runs only inside network namespaces it
//! creates (`nubotest-<pid>-<n>`, deleted on drop, panics included), so
//! the machine's own interfaces are never touched. Skipped (with a printed
//! reason) when not root.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use netstack::link::links::VxlanSpec;
use netstack::link::{self, Error, LinkKind, Netlink, RouteProto, RouteSpec};
use netstack::netns::{self, TempNetns};
use netstack::Ipv4Net;

fn root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("netlink tests need root under CI=true");
        }
        eprintln!("skipped: netlink tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
        return false;
    }
    true
}

/// A fresh namespace and a handle in it.
fn sandbox() -> (TempNetns, Netlink) {
    let ns = TempNetns::new("nubotest").unwrap();
    let nl = Netlink::in_namespace(ns.name()).unwrap();
    (ns, nl)
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn namespace_lifecycle() {
    if !root() {
        return;
    }
    let name = format!("nubotest-{}-ns", std::process::id());
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }
    let _cleanup = Cleanup(name.clone());
    assert!(!netns::exists(&name).unwrap());
    assert!(netns::create(&name).unwrap());
    assert!(!netns::create(&name).unwrap(), "create is idempotent");
    assert!(netns::exists(&name).unwrap());
    assert!(netns::list().unwrap().contains(&name));
    // A fresh namespace has only a (down) loopback.
    let nl = Netlink::in_namespace(&name).unwrap();
    let links = nl.links().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].name, "lo");
    assert_eq!(links[0].kind, LinkKind::Device);
    drop(nl);
    // Sysctls are per namespace.
    netns::sysctl_write(Some(&name), "net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(
        netns::sysctl_read(Some(&name), "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    // run_in really runs there.
    let n = netns::run_in(&name, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
            .unwrap()
            .lines()
            .count()
    })
    .unwrap();
    assert_eq!(n, 3, "two header lines and lo");
    assert!(netns::delete(&name).unwrap());
    assert!(!netns::delete(&name).unwrap(), "absent is fine");
    assert!(!netns::exists(&name).unwrap());
    assert!(matches!(
        Netlink::in_namespace(&name),
        Err(Error::Netns(netns::NetnsError::NotFound(_)))
    ));
}

#[test]
fn bridge_veth_master_up() {
    if !root() {
        return;
    }
    let (_ns, nl) = sandbox();
    assert!(nl.ensure_bridge("brqtest", Some(1450)).unwrap());
    assert!(!nl.ensure_bridge("brqtest", Some(1450)).unwrap());
    let br = nl.require_link("brqtest").unwrap();
    assert_eq!(br.kind, LinkKind::Bridge);
    assert_eq!(br.mtu, 1450);
    assert!(br.admin_up);
    assert!(br.is_nubo_named());
    nl.create_veth("tapa", "tapb", None).unwrap();
    let tapa = nl.require_link("tapa").unwrap();
    assert_eq!(tapa.kind, LinkKind::Veth);
    assert!(!tapa.admin_up);
    assert_eq!(tapa.master, None);
    assert!(matches!(
        nl.create_veth("tapa", "tapc", None),
        Err(Error::Kernel {
            errno: libc::EEXIST,
            ..
        })
    ));

    assert!(nl.ensure_master("tapa", Some("brqtest")).unwrap());
    assert!(!nl.ensure_master("tapa", Some("brqtest")).unwrap());
    let tapa = nl.require_link("tapa").unwrap();
    assert_eq!(tapa.master, Some(br.index));
    assert_eq!(tapa.master_name.as_deref(), Some("brqtest"));

    assert!(nl.ensure_up("tapa").unwrap());
    assert!(!nl.ensure_up("tapa").unwrap());
    assert!(nl.ensure_up("tapb").unwrap());
    assert!(nl.ensure_mtu("tapa", 1400).unwrap());
    assert!(!nl.ensure_mtu("tapa", 1400).unwrap());
    let mac = [0xfa, 0x16, 0x3e, 0, 0, 1];
    assert!(nl.ensure_mac("tapa", mac).unwrap());
    assert!(!nl.ensure_mac("tapa", mac).unwrap());
    let tapa = nl.require_link("tapa").unwrap();
    assert!(tapa.admin_up);
    assert_eq!(tapa.mtu, 1400);
    assert_eq!(tapa.mac, Some(mac));

    let links = nl.links().unwrap();
    let listed = links.iter().find(|l| l.name == "tapa").unwrap();
    assert_eq!(listed.master_name.as_deref(), Some("brqtest"));
    assert_eq!(links.iter().filter(|l| l.is_nubo_named()).count(), 3);

    assert!(nl.ensure_master("tapa", None).unwrap());
    assert_eq!(nl.require_link("tapa").unwrap().master, None);
    assert!(nl.ensure_admin_state("tapa", false).unwrap());

    // A bridge name taken by another kind is a conflict, not a rebuild.
    assert!(matches!(
        nl.ensure_bridge("tapa", None),
        Err(Error::Conflict(_))
    ));
    assert!(nl.delete_link("tapa").unwrap());
    assert!(nl.link("tapb").unwrap().is_none(), "the peer goes too");
    assert!(!nl.delete_link("tapa").unwrap(), "absent is fine");
    assert!(matches!(nl.set_up("tapa", true), Err(Error::NoSuchLink(_))));
    assert!(matches!(
        nl.set_up("bad name", true),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn vxlan_with_fdb_entries() {
    if !root() {
        return;
    }
    let (_ns, nl) = sandbox();
    let mut spec = VxlanSpec {
        name: "vxlan-42".into(),
        vni: 42,
        local: Some(ip("192.0.2.1")),
        port: link::VXLAN_PORT,
        underlay: None,
        mtu: Some(1450),
    };
    assert!(nl.ensure_vxlan(&spec).unwrap());
    assert!(!nl.ensure_vxlan(&spec).unwrap());
    let vx = nl.require_link("vxlan-42").unwrap();
    assert_eq!(vx.kind, LinkKind::Vxlan);
    assert_eq!(vx.mtu, 1450);
    assert!(vx.admin_up);
    let info = vx.vxlan.unwrap();
    assert_eq!(info.vni, 42);
    assert_eq!(info.local, Some(ip("192.0.2.1")));
    assert_eq!(info.port, 4789);
    assert!(!info.learning);

    nl.ensure_bridge("brqvx", Some(1450)).unwrap();
    assert!(nl.ensure_master("vxlan-42", Some("brqvx")).unwrap());

    let vteps = [ip("192.0.2.2"), ip("192.0.2.3")];
    assert!(nl.ensure_fdb("vxlan-42", &vteps).unwrap());
    assert!(!nl.ensure_fdb("vxlan-42", &vteps).unwrap());
    assert_eq!(nl.flood_vteps("vxlan-42").unwrap(), vteps);
    let fdb = nl.fdb("vxlan-42").unwrap();
    assert!(fdb
        .iter()
        .any(|e| e.mac == [0; 6] && e.dst == Some(vteps[0]) && e.permanent));
    assert!(nl.ensure_fdb("vxlan-42", &vteps[1..]).unwrap());
    assert_eq!(nl.flood_vteps("vxlan-42").unwrap(), &vteps[1..]);
    assert!(!nl.fdb_delete_flood("vxlan-42", vteps[0]).unwrap());

    // Other parameters: recreated (and freed from the bridge).
    spec.port = 8472;
    assert!(nl.ensure_vxlan(&spec).unwrap());
    let vx = nl.require_link("vxlan-42").unwrap();
    assert_eq!(vx.vxlan.unwrap().port, 8472);
    assert_eq!(vx.master, None);
    assert!(nl.flood_vteps("vxlan-42").unwrap().is_empty());

    // Bad VNIs are refused before the kernel sees them.
    spec.vni = 1 << 24;
    assert!(matches!(nl.create_vxlan(&spec), Err(Error::Invalid(_))));
}

#[test]
fn addresses_and_routes() {
    if !root() {
        return;
    }
    let (_ns, nl) = sandbox();
    nl.create_veth("v0", "v1", None).unwrap();
    nl.set_up("v0", true).unwrap();
    nl.set_up("v1", true).unwrap();

    assert!(nl.ensure_addrs("v0", &[net("10.1.0.1/24")]).unwrap());
    assert!(!nl.ensure_addrs("v0", &[net("10.1.0.1/24")]).unwrap());
    assert_eq!(nl.addresses("v0").unwrap(), [net("10.1.0.1/24")]);
    let want = [net("10.1.0.2/24"), net("10.2.0.1/16")];
    assert!(nl.ensure_addrs("v0", &want).unwrap());
    let mut have = nl.addresses("v0").unwrap();
    have.sort();
    assert_eq!(have, want);
    assert!(matches!(
        nl.add_address("v0", net("10.2.0.1/16")),
        Err(Error::Kernel {
            errno: libc::EEXIST,
            ..
        })
    ));
    assert!(nl.delete_address("v0", net("10.2.0.1/16")).unwrap());
    assert!(!nl.delete_address("v0", net("10.2.0.1/16")).unwrap());

    // The kernel's link route for 10.1.0.0/24.
    let routes = nl.routes().unwrap();
    assert!(
        routes.iter().any(|r| r.dst == net("10.1.0.0/24")
            && r.protocol == RouteProto::Kernel
            && r.dev.as_deref() == Some("v0")),
        "{routes:?}"
    );

    let desired = [
        RouteSpec::default_via(ip("10.1.0.254")),
        RouteSpec::via(net("172.16.0.0/12"), ip("10.1.0.253")),
        RouteSpec {
            dst: net("192.168.7.9/24"),
            gateway: None,
            dev: Some("v0".into()),
        },
    ];
    assert!(nl.ensure_routes(&desired).unwrap());
    assert!(!nl.ensure_routes(&desired).unwrap());
    let routes = nl.routes().unwrap();
    for d in &desired {
        let r = routes.iter().find(|r| d.matches(r)).unwrap();
        assert_eq!(r.protocol, RouteProto::Static, "{r:?}");
    }
    // Replace: the default route moves to another gateway.
    let desired2 = [RouteSpec::default_via(ip("10.1.0.250"))];
    assert!(nl.ensure_routes(&desired2).unwrap());
    let routes = nl.routes().unwrap();
    let statics: Vec<_> = routes
        .iter()
        .filter(|r| r.protocol == RouteProto::Static)
        .collect();
    assert_eq!(statics.len(), 1, "{statics:?}");
    assert_eq!(statics[0].gateway, Some(ip("10.1.0.250")));
    assert_eq!(statics[0].dst, Ipv4Net::DEFAULT);
    // Kernel routes are left alone.
    assert!(routes
        .iter()
        .any(|r| r.dst == net("10.1.0.0/24") && r.protocol == RouteProto::Kernel));
    assert!(nl.ensure_routes(&[]).unwrap());
    assert!(!nl
        .routes()
        .unwrap()
        .iter()
        .any(|r| r.protocol == RouteProto::Static));
    assert!(!nl.delete_route(&desired2[0]).unwrap());
    assert!(matches!(
        nl.add_route(&RouteSpec {
            dst: net("10.9.0.0/16"),
            gateway: None,
            dev: None
        }),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn probes() {
    if !root() {
        return;
    }
    link::probe_bridge().unwrap();
    link::probe_vxlan().unwrap();
    match link::probe_vlan() {
        // This development machine's kernel has no 8021q.
        Err(Error::Unsupported(what)) => {
            assert!(what.contains("802.1Q") && what.contains("8021q"), "{what}");
            eprintln!("VLAN unsupported here: {what}");
        }
        Ok(()) => eprintln!("this kernel supports 802.1Q VLANs"),
        Err(e) => panic!("{e}"),
    }
    // No probe namespace is left behind.
    let me = format!("nuboprobe-{}-", std::process::id());
    assert!(!netns::list().unwrap().iter().any(|n| n.starts_with(&me)));
}

#[test]
#[ignore = "needs a kernel with 802.1Q VLAN support (module 8021q); run in the L1 testbed"]
fn vlan_creation() {
    if !root() {
        return;
    }
    let (_ns, nl) = sandbox();
    nl.create_veth("phys0", "phys1", None).unwrap();
    assert!(nl.ensure_vlan("phys0", 100, "phys0.100").unwrap());
    assert!(!nl.ensure_vlan("phys0", 100, "phys0.100").unwrap());
    let v = nl.require_link("phys0.100").unwrap();
    assert_eq!(v.kind, LinkKind::Vlan);
    let info = v.vlan.unwrap();
    assert_eq!(info.vid, 100);
    assert_eq!(info.parent, Some(nl.require_link("phys0").unwrap().index));
    assert!(v.admin_up);
    assert!(
        nl.ensure_vlan("phys0", 101, "phys0.100").unwrap(),
        "recreated"
    );
    assert_eq!(nl.require_link("phys0.100").unwrap().vlan.unwrap().vid, 101);
}

#[test]
fn handle_works_from_spawn_blocking_of_another_runtime() {
    if !root() {
        return;
    }
    let ns = TempNetns::new("nubotest").unwrap();
    let name = ns.name().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let links = rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let nl = Netlink::in_namespace(&name).unwrap();
            nl.ensure_bridge("brqblk", None).unwrap();
            let links = nl.links().unwrap();
            drop(nl);
            // The host handle too (read-only).
            let host = Netlink::host().unwrap();
            assert!(host.link("lo").unwrap().is_some());
            links
        })
        .await
        .unwrap()
    });
    assert!(links.iter().any(|l| l.name == "brqblk"));
    drop(ns);
}

/// A veth leg into a second namespace with addresses on both ends, and
/// UDP from a third namespace reaches it through a bridge.
#[test]
fn veth_into_namespace_and_udp_through_a_bridge() {
    if !root() {
        return;
    }
    let (host_ns, host) = sandbox();
    let a = TempNetns::new("nubotest").unwrap();
    let b = TempNetns::new("nubotest").unwrap();

    host.ensure_bridge("brqudp", Some(1500)).unwrap();
    assert!(host.ensure_veth("tapa", a.name(), "qr-a").unwrap());
    assert!(!host.ensure_veth("tapa", a.name(), "qr-a").unwrap());
    // Half a pair is rebuilt.
    host.create_veth("tapb", "tmpb", None).unwrap();
    assert!(host.ensure_veth("tapb", b.name(), "qr-b").unwrap());
    assert!(host.link("tmpb").unwrap().is_none());
    for tap in ["tapa", "tapb"] {
        host.ensure_master(tap, Some("brqudp")).unwrap();
        host.ensure_up(tap).unwrap();
    }

    let na = Netlink::in_namespace(a.name()).unwrap();
    let nb = Netlink::in_namespace(b.name()).unwrap();
    assert_eq!(na.require_link("qr-a").unwrap().kind, LinkKind::Veth);
    for (nl, dev, addr) in [(&na, "qr-a", "10.9.0.1/24"), (&nb, "qr-b", "10.9.0.2/24")] {
        assert!(nl.ensure_addrs(dev, &[net(addr)]).unwrap());
        assert!(nl.ensure_up(dev).unwrap());
        assert!(!nl.ensure_up(dev).unwrap());
    }

    // Move a link between namespaces (renamed on the way).
    host.create_veth("mv0", "mv1", None).unwrap();
    host.move_to_namespace("mv1", a.name(), Some("moved"))
        .unwrap();
    assert!(host.link("mv1").unwrap().is_none());
    assert_eq!(na.require_link("moved").unwrap().kind, LinkKind::Veth);

    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = {
        let name = b.name().to_string();
        std::thread::spawn(move || {
            netns::run_in(&name, move || {
                let sock = UdpSocket::bind("10.9.0.2:5555").unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                let (n, from) = sock.recv_from(&mut buf).unwrap();
                (buf[..n].to_vec(), from)
            })
            .unwrap()
        })
    };
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    netns::run_in(a.name(), || {
        let sock = UdpSocket::bind("10.9.0.1:0").unwrap();
        // Several datagrams: the first may wait for ARP.
        for _ in 0..20 {
            sock.send_to(b"hello nubo", "10.9.0.2:5555").unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .unwrap();
    let (payload, from) = receiver.join().unwrap();
    assert_eq!(payload, b"hello nubo");
    assert_eq!(from.ip(), ip("10.9.0.1"));

    drop((na, nb, host));
    drop((a, b, host_ns));
}
