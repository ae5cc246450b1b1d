//! netstack::nft against the kernel, inside network namespaces this test
//! creates (and deletes, also on failure). Needs root, `nft` and iproute2's
//! `ip`; skips (with the reason on stderr) without them. The test alone
//! runs `ip` (the daemon never does).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use netstack::nft::{
    apply_tables, check_tables, delete_table, external_table, list_tables, port_table,
    router_table, rule_count, Direction, ExternalNat, Family, FilterRule, FloatingNat, NftError,
    PortFilter, Remote, RouterNat, L4,
};
use netstack::Ipv4Net;

/// Network namespaces made for one test, deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(tag: &str, names: &[&str]) -> Self {
        let mut me = Namespaces(Vec::new());
        for n in names {
            let full = format!("nubonft{}{tag}{n}", std::process::id());
            ip(&["netns", "add", &full]);
            me.0.push(full);
        }
        me
    }

    fn name(&self, i: usize) -> &str {
        &self.0[i]
    }

    /// Runs `ip ARGS` inside namespace `i`.
    fn ip(&self, i: usize, args: &[&str]) {
        let mut all = vec!["-n", self.name(i)];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why this host cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["nft", "ip"] {
        let ok = Command::new(tool)
            .arg(if tool == "nft" { "--version" } else { "-V" })
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!("no working `{tool}`"));
        }
    }
    None
}

macro_rules! skip_unless_able {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn router_nat(fips: Vec<FloatingNat>) -> RouterNat {
    RouterNat {
        gateway_if: "qg-test".into(),
        gateway_ip: a("203.0.113.1"),
        enable_snat: true,
        snat_sources: vec![Ipv4Net::new(a("10.0.0.0"), 24).unwrap()],
        floating_ips: fips,
    }
}

#[test]
fn router_table_apply_list_reapply_delete() {
    skip_unless_able!();
    let ns = Namespaces::new("l", &["r"]);
    let r = Some(ns.name(0));
    let table = router_table(&router_nat(vec![FloatingNat {
        id: "fip".into(),
        floating_ip: a("203.0.113.50"),
        fixed_ip: a("10.0.0.3"),
    }]))
    .unwrap();
    let ext = external_table(&ExternalNat {
        bridge: "brqext".into(),
        cidr: Ipv4Net::new(a("172.24.4.0"), 24).unwrap(),
    })
    .unwrap();

    assert!(list_tables(r).unwrap().is_empty());
    apply_tables(r, &[table.clone(), ext.clone()]).unwrap();
    let listed = list_tables(r).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let router = listed.iter().find(|t| t.name == "nubo_router").unwrap();
    assert_eq!(router.family, Family::Ip);
    assert_eq!(router.hash.as_deref(), Some(table.hash().as_str()));
    // dnat + 1:1 snat + SNAT + 3 forward rules, masquerade
    assert_eq!(rule_count(r).unwrap(), 7);

    // Same rules again: same hash (the agent skips it); applying anyway
    // leaves the same thing.
    apply_tables(r, std::slice::from_ref(&table)).unwrap();
    assert_eq!(list_tables(r).unwrap(), listed);
    assert_eq!(rule_count(r).unwrap(), 7);

    // A change is seen as a different hash.
    let changed = router_table(&router_nat(vec![])).unwrap();
    apply_tables(r, std::slice::from_ref(&changed)).unwrap();
    let now = list_tables(r).unwrap();
    let router = now.iter().find(|t| t.name == "nubo_router").unwrap();
    assert_eq!(router.hash.as_deref(), Some(changed.hash().as_str()));
    assert_eq!(rule_count(r).unwrap(), 5);

    delete_table(r, Family::Ip, "nubo_router").unwrap();
    delete_table(r, Family::Ip, "nubo_router").unwrap(); // idempotent
    delete_table(r, Family::Ip, "nubo_external").unwrap();
    assert!(list_tables(r).unwrap().is_empty());
}

#[test]
fn a_failed_transaction_changes_nothing_and_carries_stderr() {
    skip_unless_able!();
    let ns = Namespaces::new("f", &["r"]);
    let r = Some(ns.name(0));
    let good = router_table(&router_nat(vec![])).unwrap();
    apply_tables(r, std::slice::from_ref(&good)).unwrap();
    // A table the kernel refuses: a jump to a chain that does not exist.
    let bad = netstack::nft::Table::new(
        Family::Ip,
        "nubo_bad",
        "\n\tchain c {\n\t\tjump nowhere\n\t}\n".into(),
    )
    .unwrap();
    let other = router_table(&router_nat(vec![FloatingNat {
        id: "x".into(),
        floating_ip: a("203.0.113.9"),
        fixed_ip: a("10.0.0.9"),
    }]))
    .unwrap();
    match apply_tables(r, &[other, bad]) {
        Err(NftError::Failed { stderr, .. }) => assert!(!stderr.is_empty()),
        other => panic!("expected nft to fail, got {other:?}"),
    }
    let listed = list_tables(r).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].hash.as_deref(), Some(good.hash().as_str()));
    assert!(matches!(
        list_tables(Some("nubo-no-such-namespace")),
        Err(NftError::Namespace { .. })
    ));
}

fn port_filter() -> PortFilter {
    PortFilter {
        tap: "tap0123abcd-01".into(),
        mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
        ips: vec![a("10.0.0.5")],
        allowed_pairs: vec![(
            Ipv4Net::new(a("10.0.9.0"), 24).unwrap(),
            Some([2, 0, 0, 0, 0, 9]),
        )],
        rules: vec![
            FilterRule {
                id: "ssh".into(),
                direction: Direction::Ingress,
                l4: L4::from_neutron(Some(6), Some((22, 22))).unwrap(),
                remote: Remote::Prefix(Ipv4Net::new(a("192.0.2.0"), 24).unwrap()),
            },
            FilterRule {
                id: "ping".into(),
                direction: Direction::Ingress,
                l4: L4::from_neutron(Some(1), Some((8, 0))).unwrap(),
                remote: Remote::Any,
            },
            FilterRule {
                id: "group".into(),
                direction: Direction::Ingress,
                l4: L4::Any,
                remote: Remote::Group {
                    group_id: "0123456789abcdef".into(),
                    members: vec![a("10.0.0.6"), a("10.0.0.7")],
                },
            },
            FilterRule {
                id: "out".into(),
                direction: Direction::Egress,
                l4: L4::Any,
                remote: Remote::Any,
            },
        ],
    }
}

/// The port table with the kernel: loaded where the bridge family has
/// conntrack (`nf_conntrack_bridge`); elsewhere nft must refuse the
/// `ct state` rules only (which shows the rest is valid) and the test says
/// it skipped the load.
#[test]
fn port_table_loads_where_bridge_conntrack_exists() {
    skip_unless_able!();
    let ns = Namespaces::new("p", &["h"]);
    let h = Some(ns.name(0));
    ns.ip(0, &["link", "add", "br0", "type", "bridge"]);
    let table = port_table(&port_filter()).unwrap();
    match check_tables(h, std::slice::from_ref(&table)) {
        Ok(()) => {
            apply_tables(h, std::slice::from_ref(&table)).unwrap();
            let listed = list_tables(h).unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].hash.as_deref(), Some(table.hash().as_str()));
            assert!(rule_count(h).unwrap() > 10);
            delete_table(h, Family::Bridge, table.name()).unwrap();
            assert!(list_tables(h).unwrap().is_empty());
        }
        Err(NftError::Failed { stderr, .. }) => {
            // nft prints each refused command: an "Error:" line, the
            // command, a marker line. Every refused one must be a ct rule.
            let lines: Vec<&str> = stderr.lines().collect();
            let mut refused = 0;
            for (i, l) in lines.iter().enumerate() {
                if l.contains("Error:") {
                    refused += 1;
                    let cmd = lines.get(i + 1).copied().unwrap_or_default();
                    assert!(
                        l.contains("Protocol error") && cmd.contains("ct state"),
                        "refused for another reason: {l} / {cmd}\n{stderr}"
                    );
                }
            }
            assert!(refused > 0, "{stderr}");
            eprintln!(
                "SKIPPED loading the port table: this kernel has no conntrack in the bridge \
                 family (nf_conntrack_bridge); only its ct rules were refused"
            );
        }
        Err(e) => panic!("{e}"),
    }
}

/// Runs `f` on a thread that entered namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: setns on a valid namespace fd; it moves only this
            // (scoped, short-lived) thread into the namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Sends one datagram from `src` (in `from`) to `dst` (the port is the
/// receiver's), and returns the source address it arrives with at `bind` (in
/// `to`, on a port the kernel picks: a fixed one could still be taken).
fn datagram_source(
    ns: &Namespaces,
    from: usize,
    src: Ipv4Addr,
    to: usize,
    bind: Ipv4Addr,
    dst: Ipv4Addr,
) -> SocketAddrV4 {
    let rx = in_netns(ns.name(to), || {
        UdpSocket::bind(SocketAddrV4::new(bind, 0)).unwrap()
    });
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = rx.local_addr().unwrap().port();
    in_netns(ns.name(from), || {
        let tx = UdpSocket::bind(SocketAddrV4::new(src, 0)).unwrap();
        tx.send_to(b"nubo", SocketAddrV4::new(dst, port)).unwrap();
    });
    let mut buf = [0u8; 16];
    let (n, peer) = rx.recv_from(&mut buf).expect("datagram through the router");
    assert_eq!(&buf[..n], b"nubo");
    match peer {
        std::net::SocketAddr::V4(p) => p,
        other => panic!("{other}"),
    }
}

/// inside (10.0.0.2, .3) -- router (qr 10.0.0.1 | qg-test 203.0.113.1) --
/// outside (203.0.113.2): SNAT to the gateway, 1:1 SNAT and DNAT for a
/// floating IP.
#[test]
fn router_nat_rewrites_addresses() {
    skip_unless_able!();
    let ns = Namespaces::new("n", &["in", "r", "out"]);
    let (inside, router, outside) = (0, 1, 2);
    let r = ns.name(router).to_string();
    ns.ip(
        inside,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "qr-test", "netns", &r,
        ],
    );
    ns.ip(
        outside,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "qg-test", "netns", &r,
        ],
    );
    for (i, dev, addr) in [
        (inside, "eth0", "10.0.0.2/24"),
        (inside, "eth0", "10.0.0.3/24"),
        (router, "qr-test", "10.0.0.1/24"),
        (router, "qg-test", "203.0.113.1/24"),
        (router, "qg-test", "203.0.113.50/32"),
        (outside, "eth0", "203.0.113.2/24"),
    ] {
        ns.ip(i, &["addr", "add", addr, "dev", dev]);
    }
    for (i, dev) in [
        (inside, "eth0"),
        (router, "qr-test"),
        (router, "qg-test"),
        (outside, "eth0"),
    ] {
        ns.ip(i, &["link", "set", dev, "up"]);
    }
    ns.ip(inside, &["link", "set", "lo", "up"]);
    ns.ip(inside, &["route", "add", "default", "via", "10.0.0.1"]);
    in_netns(&r, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap()
    });

    let table = router_table(&router_nat(vec![FloatingNat {
        id: "fip".into(),
        floating_ip: a("203.0.113.50"),
        fixed_ip: a("10.0.0.3"),
    }]))
    .unwrap();
    apply_tables(Some(&r), &[table]).unwrap();

    let out = a("203.0.113.2");
    let bind_out = a("0.0.0.0");
    // SNAT: 10.0.0.2 leaves as the gateway's address.
    let src = datagram_source(&ns, inside, a("10.0.0.2"), outside, bind_out, out);
    assert_eq!(*src.ip(), a("203.0.113.1"));
    // 1:1: 10.0.0.3 leaves as its floating IP.
    let src = datagram_source(&ns, inside, a("10.0.0.3"), outside, bind_out, out);
    assert_eq!(*src.ip(), a("203.0.113.50"));
    // DNAT: the floating IP reaches 10.0.0.3, from the real outside address.
    let src = datagram_source(
        &ns,
        outside,
        a("203.0.113.2"),
        inside,
        a("10.0.0.3"),
        a("203.0.113.50"),
    );
    assert_eq!(*src.ip(), a("203.0.113.2"));
}
