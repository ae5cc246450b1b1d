//! The DHCP server against a real client (busybox `udhcpc`), entirely inside
//! two network namespaces this test creates: namespace A holds a bridge the
//! server serves (its socket opened inside A), namespace B the client, on a
//! veth whose other end is a port of A's bridge.
//!
//! Needs root, `ip` and the static busybox built by `guest/build.sh`
//! (`NUBO_BUSYBOX`, else `guest/out/busybox`, else `/work/main/guest/out/busybox`);
//! skips with a reason otherwise.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netstack::dhcp::{DhcpError, DhcpServer, Lease, Scope, ServerConfig};
use netstack::Ipv4Net;

const CLIENT_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56];

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces (and with them every device in them) on drop,
/// also when the test fails.
struct Netns(Vec<String>);
impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn busybox() -> Option<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("NUBO_BUSYBOX")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            here.join("../guest/out/busybox"),
            PathBuf::from("/work/main/guest/out/busybox"),
        ])
        .find(|p| p.is_file())
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs iproute2's ip".into());
    }
    if busybox().is_none() {
        return Some("needs the static busybox (run guest/build.sh)".into());
    }
    None
}

fn scope() -> Scope {
    Scope {
        cidr: Ipv4Net::from((Ipv4Addr::new(10, 77, 0, 0), 24)),
        server_ip: Ipv4Addr::new(10, 77, 0, 2),
        server_mac: [0xfa, 0x16, 0x3e, 0, 0, 2],
        gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 77, 0, 53), Ipv4Addr::new(9, 9, 9, 9)],
        domain: Some("nubo.test".into()),
        host_routes: vec![(
            Ipv4Net::from((Ipv4Addr::new(192, 168, 50, 0), 24)),
            Ipv4Addr::new(10, 77, 0, 254),
        )],
        mtu: Some(1400),
        lease_secs: 86_400,
        leases: vec![Lease {
            mac: CLIENT_MAC,
            ip: Ipv4Addr::new(10, 77, 0, 42),
            hostname: "vm-42".into(),
        }],
    }
}

/// Timestamps of the first DISCOVER, OFFER and ACK seen on the bridge,
/// from a packet socket of our own in namespace A.
struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<[Option<Instant>; 3]>,
}

fn dhcp_type(frame: &[u8]) -> Option<(u16, u8)> {
    let udp = netstack::dhcp::packet::ethertype(frame)?;
    if udp != 0x0800 || *frame.get(23)? != 17 {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 0xf) * 4;
    let dport = u16::from_be_bytes([*frame.get(14 + ihl + 2)?, *frame.get(14 + ihl + 3)?]);
    let opts = frame.get(14 + ihl + 8 + 240..)?;
    let mut i = 0;
    while let Some(&code) = opts.get(i) {
        match code {
            0 => i += 1,
            255 => return None,
            53 => return Some((dport, *opts.get(i + 2)?)),
            _ => i += 2 + usize::from(*opts.get(i + 1)?),
        }
    }
    None
}

fn sniff(ns: &str, ifname: &str) -> Sniffer {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let path = format!("/run/netns/{ns}");
    let ifname = std::ffi::CString::new(ifname).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let f = fs::File::open(&path).unwrap();
        // SAFETY: plain syscalls on descriptors we own; results checked.
        let fd = unsafe {
            assert_eq!(libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET), 0);
            let idx = libc::if_nametoindex(ifname.as_ptr());
            assert_ne!(idx, 0);
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(fd >= 0);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = idx as i32;
            let r = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            fd
        };
        tx.send(()).unwrap();
        let (mut discover, mut offer, mut ack) = (None, None, None);
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::Acquire) {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd; then a read into a live buffer.
            let n = unsafe {
                if libc::poll(&mut p, 1, 50) <= 0 {
                    continue;
                }
                libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
            };
            let now = Instant::now();
            if n <= 0 {
                continue;
            }
            match dhcp_type(&buf[..n as usize]) {
                Some((67, 1)) if discover.is_none() => discover = Some(now),
                Some((68, 2)) if offer.is_none() => offer = Some(now),
                Some((68, 5)) if ack.is_none() => ack = Some(now),
                _ => {}
            }
        }
        // SAFETY: closes the socket opened above.
        unsafe { libc::close(fd) };
        [discover, offer, ack]
    });
    rx.recv().unwrap();
    Sniffer { stop, thread }
}

const SCRIPT: &str = r#"#!/bin/sh
echo "event=$1 interface=$interface ip=$ip subnet=$subnet router=$router dns=$dns mtu=$mtu staticroutes=$staticroutes hostname=$hostname domain=$domain lease=$lease serverid=$serverid" >>"$OUT"
"#;

/// Runs udhcpc in namespace `ns`; returns the `bound` line its script got.
fn udhcpc(bb: &Path, ns: &str, ifname: &str, dir: &Path, extra: &[&str]) -> String {
    let script = dir.join("script.sh");
    let out = dir.join("events.txt");
    fs::write(&script, SCRIPT).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let _ = fs::remove_file(&out);
    let bb = bb.to_str().unwrap();
    let st = Command::new("ip")
        .args(["netns", "exec", ns, bb, "udhcpc", "-i", ifname])
        .args(["-q", "-n", "-f", "-t", "3", "-T", "1", "-s"])
        .arg(&script)
        .args(extra)
        .env("OUT", &out)
        .output()
        .unwrap();
    let events = fs::read_to_string(&out).unwrap_or_default();
    assert!(
        st.status.success(),
        "udhcpc failed: {}\n{}\nevents:\n{events}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    events
        .lines()
        .find(|l| l.starts_with("event=bound"))
        .unwrap_or_else(|| panic!("no bound event in:\n{events}"))
        .to_owned()
}

#[test]
fn udhcpc_gets_exactly_its_static_lease() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP dhcp_netns: {why}");
        return;
    }
    let bb = busybox().unwrap();
    let tag = std::process::id();
    let (a, b) = (format!("nubo-dhcpa-{tag}"), format!("nubo-dhcpb-{tag}"));
    let _guard = Netns(vec![a.clone(), b.clone()]);
    ip(&["netns", "add", &a]);
    ip(&["netns", "add", &b]);
    ip(&["-n", &a, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &a, "link", "set", "br0", "up"]);
    ip(&[
        "-n", &a, "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", &b,
    ]);
    ip(&["-n", &a, "link", "set", "vA", "master", "br0", "up"]);
    ip(&[
        "-n",
        &b,
        "link",
        "set",
        "vB",
        "address",
        "fa:16:3e:12:34:56",
    ]);
    ip(&["-n", &b, "link", "set", "vB", "up"]);
    ip(&["-n", &b, "link", "set", "lo", "up"]);

    let server = DhcpServer::start(ServerConfig {
        netns: Some(format!("/run/netns/{a}").into()),
        promiscuous: true,
    })
    .unwrap();
    // A bridge that does not exist (in A): a typed error.
    assert!(matches!(
        server.set_scopes("br-missing", vec![scope()]),
        Err(DhcpError::NoSuchInterface(_))
    ));
    server.set_scopes("br0", vec![scope()]).unwrap();
    assert_eq!(server.bridges(), vec!["br0".to_owned()]);

    let dir = std::env::temp_dir().join(format!("nubo-dhcp-test-{tag}"));
    fs::create_dir_all(&dir).unwrap();

    let sniffer = sniff(&a, "br0");
    let bound = udhcpc(&bb, &b, "vB", &dir, &[]);
    sniffer.stop.store(true, Ordering::Release);
    let [discover, offer, ack] = sniffer.thread.join().unwrap();
    eprintln!("udhcpc: {bound}");
    for want in [
        "interface=vB ",
        "ip=10.77.0.42 ",
        "subnet=255.255.255.0 ",
        "router=10.77.0.1 ",
        "dns=10.77.0.53 9.9.9.9 ",
        "mtu=1400 ",
        "staticroutes=192.168.50.0/24 10.77.0.254 0.0.0.0/0 10.77.0.1 ",
        "hostname=vm-42 ",
        "domain=nubo.test ",
        "lease=86400 ",
        "serverid=10.77.0.2",
    ] {
        assert!(bound.contains(want), "{want:?} missing from {bound:?}");
    }
    let d = discover.expect("DISCOVER seen");
    let o = offer.expect("OFFER seen");
    let took = ack.expect("ACK seen").duration_since(d);
    eprintln!(
        "DHCP DISCOVER -> OFFER (the server): {:.3} ms",
        o.duration_since(d).as_secs_f64() * 1e3
    );
    eprintln!(
        "DHCP DISCOVER -> ACK: {:.3} ms (target <= 50 ms)",
        took.as_secs_f64() * 1e3
    );
    assert!(
        took < Duration::from_millis(500),
        "DISCOVER -> ACK took {took:?}"
    );

    guest_script_applies_the_lease(&bb, &b, &dir);
    unicast_renewal_is_acked(&bb, &b, &dir);

    // Broadcast replies when the client asks for them (-B).
    let bound = udhcpc(&bb, &b, "vB", &dir, &["-B"]);
    assert!(bound.contains("ip=10.77.0.42 "), "{bound}");

    // The bridge deleted and created again: the next set_scopes notices
    // (new ifindex) and opens a new socket.
    ip(&["-n", &a, "link", "del", "br0"]);
    ip(&["-n", &a, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &a, "link", "set", "br0", "up"]);
    ip(&["-n", &a, "link", "set", "vA", "master", "br0", "up"]);
    server.set_scopes("br0", vec![scope()]).unwrap();
    let bound = udhcpc(&bb, &b, "vB", &dir, &[]);
    assert!(bound.contains("ip=10.77.0.42 "), "{bound}");

    // Leases change atomically while running: the MAC is no longer known,
    // so the client gets no answer.
    let mut s = scope();
    s.leases.clear();
    server.set_scopes("br0", vec![s]).unwrap();
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &b,
            bb.to_str().unwrap(),
            "udhcpc",
            "-i",
            "vB",
        ])
        .args(["-q", "-n", "-f", "-t", "2", "-T", "1", "-s", "/bin/true"])
        .output()
        .unwrap();
    assert!(
        !st.status.success(),
        "udhcpc got a lease for an unknown MAC"
    );

    assert!(server.remove("br0"));
    server.stop();
    let _ = fs::remove_dir_all(&dir);
}

/// guest/udhcpc.script (what the guest runs) under busybox sh with busybox
/// applets first in PATH, its state dir and console redirected into `dir`.
fn guest_script_applies_the_lease(bb: &Path, ns: &str, dir: &Path) {
    let applets = dir.join("bin");
    fs::create_dir_all(&applets).unwrap();
    for a in [
        "ip", "sed", "sort", "tr", "cat", "mkdir", "mv", "hostname", "sh",
    ] {
        let l = applets.join(a);
        let _ = fs::remove_file(&l);
        std::os::unix::fs::symlink(bb, &l).unwrap();
    }
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/udhcpc.script");
    let wrapper = dir.join("guest-wrapper.sh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} sh {} \"$@\"\n",
            bb.display(),
            guest.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let run = dir.join("run");
    let console = dir.join("console");
    let _ = fs::remove_dir_all(&run);
    let _ = fs::remove_file(&console);
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            bb.to_str().unwrap(),
            "udhcpc",
            "-i",
            "vB",
        ])
        .args(["-q", "-n", "-f", "-t", "3", "-T", "1", "-s"])
        .arg(&wrapper)
        .env("NUBO_RUN", &run)
        .env("NUBO_CONSOLE", &console)
        .env("NUBO_SET_HOSTNAME", "0")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let line = fs::read_to_string(&console).unwrap();
    eprintln!("guest script: {line}");
    assert_eq!(
        line,
        "NUBO-NET vB mac=fa:16:3e:12:34:56 ip=10.77.0.42/24 gw=10.77.0.1 mtu=1400\n"
    );
    assert_eq!(
        fs::read_to_string(run.join("resolv.conf")).unwrap(),
        "search nubo.test\nnameserver 10.77.0.53\nnameserver 9.9.9.9\n"
    );
    assert_eq!(
        fs::read_to_string(run.join("www/index.html")).unwrap(),
        "vm-42 mac=fa:16:3e:12:34:56\n"
    );
    let show = |what: &[&str]| {
        let o = Command::new("ip")
            .args(["-n", ns])
            .args(what)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let addrs = show(&["-4", "addr", "show", "dev", "vB"]);
    assert!(addrs.contains("inet 10.77.0.42/24"), "{addrs}");
    assert!(addrs.contains("mtu 1400"), "{addrs}");
    let routes = show(&["-4", "route"]);
    eprintln!("guest routes:\n{routes}");
    assert!(
        routes.contains("default via 10.77.0.1 dev vB metric 200"),
        "{routes}"
    );
    assert!(
        routes.contains("192.168.50.0/24 via 10.77.0.254 dev vB metric 200"),
        "{routes}"
    );
}

/// A bound client renews by unicast to the server identifier (after
/// resolving it by ARP): the server must answer both.
fn unicast_renewal_is_acked(bb: &Path, ns: &str, dir: &Path) {
    let out = dir.join("events.txt");
    let script = dir.join("script.sh");
    let _ = fs::remove_file(&out);
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            bb.to_str().unwrap(),
            "udhcpc",
            "-i",
            "vB",
        ])
        .args(["-f", "-t", "3", "-T", "1", "-s"])
        .arg(&script)
        .env("OUT", &out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |what: &str| {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if fs::read_to_string(&out).unwrap_or_default().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    let bound = wait_for("event=bound");
    // `ip netns exec` execs udhcpc, so the child's pid is udhcpc's.
    // SAFETY: signals a child we spawned and still own.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let renewed = wait_for("event=renew");
    let _ = child.kill();
    let _ = child.wait();
    assert!(bound, "no lease");
    assert!(
        renewed,
        "no renewal ACK: {}",
        fs::read_to_string(&out).unwrap_or_default()
    );
}
