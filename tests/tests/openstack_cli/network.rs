//! The networking part of the CLI workflow (issue #11): tenant networks,
//! DHCP, VXLAN and VLAN isolation, a router with SNAT and a floating IP,
//! security groups and anti-spoofing, a daemon restart, and the deletes —
//! each proven by packets in the testbed's L1, where the daemon runs.
//!
//! L1 is prepared at boot by `tests/testbed/ctl/net-fixture.sh`: a second
//! "host" (namespace `host2`, underlay 192.168.100.2 on a veth) for VXLAN, a
//! trunk (`trunk0` = physnet1, its far end `trunk1` in namespace `switch`)
//! for VLANs, and the daemon's external network `public` (203.0.113.0/24 on
//! a host bridge with masquerade, `--external-network`). This module adds an
//! "outside" host (namespace `outside`, 203.0.113.10) on the external
//! network, and a namespace `h2vm` behind host2's VXLAN.
//!
//! The guests boot the test initramfs with `nubo.then=net`: DHCP on every
//! NIC (a `NUBO-NET` console line each), `httpd` on port 80 answering
//! `nubo-guest mac=<mac>`, and, with `nubo.probe=IP:PORT,...`, a `NUBO-PROBE
//! IP:PORT ok <answer>|fail` line whenever a target's state changes; with
//! `nubo.spoof=SRC,DST` it also pings DST from the foreign address SRC.

use super::*;

/// What a guest's console says about its NIC.
#[derive(Debug, Clone)]
struct NicLine {
    mac: String,
    ip: String,
    mtu: String,
}

fn nic_line(console: &str, ifname: &str) -> Option<NicLine> {
    let line = console
        .lines()
        .rfind(|l| l.contains(&format!("NUBO-NET {ifname} ")))?;
    let get = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    Some(NicLine {
        mac: get("mac"),
        ip: get("ip"),
        mtu: get("mtu"),
    })
}

/// The last `NUBO-PROBE target ...` line: `Some(answer)` for ok, `None`
/// for fail; `Err` when there is none yet.
fn probe_state(console: &str, target: &str) -> Result<Option<String>, ()> {
    let prefix = format!("NUBO-PROBE {target} ");
    let line = console
        .lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.trim()))
        .next_back()
        .ok_or(())?;
    Ok(line.strip_prefix("ok").map(|a| a.trim().to_string()))
}

/// Runs a script in L1 and fails on a non-zero status.
fn l1(tb: &Testbed, script: &str) -> Result<String, String> {
    let (out, rc) = tb.ctl(script);
    if rc == 0 {
        Ok(out)
    } else {
        Err(format!(
            "L1 script failed ({rc}):\n{script}\n--- output ---\n{}",
            tail(&out, 30)
        ))
    }
}

/// An HTTP GET from inside an L1 namespace: the body's first line, or
/// `None` when nothing answered within 3 s.
fn wget_from(tb: &Testbed, ns: &str, url: &str) -> Option<String> {
    let (out, rc) = tb.ctl(&format!(
        "ip netns exec {ns} timeout 3 wget -q -O - {url} 2>/dev/null | head -n 1"
    ));
    let body = out.trim().to_string();
    (rc == 0 && !body.is_empty()).then_some(body)
}

/// Packets `tcpdump` sees on `dev` (in namespace `ns`, or L1's own when
/// empty) matching `filter` while `during` runs.
fn capture(
    tb: &Testbed,
    ns: &str,
    dev: &str,
    filter: &str,
    secs: u32,
    during: &str,
) -> Result<usize, String> {
    let exec = if ns.is_empty() {
        String::new()
    } else {
        format!("ip netns exec {ns} ")
    };
    let out = l1(
        tb,
        &format!(
            "f=/tmp/cap.$$; {exec}timeout {secs} tcpdump -Z root -l -n -e -i {dev} {filter} >$f 2>/dev/null &\n\
             sleep 1\n{during}\nwait\necho COUNT=$(grep -c . $f)\nhead -n 5 $f; rm -f $f"
        ),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("COUNT="))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("capture on {dev}: no count in {out}"))
}

fn json_str(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for k in path {
        match cur.get(k) {
            Some(x) => cur = x,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A 1 MiB image booting the test initramfs with `cmdline` (no root disk).
pub(super) fn net_image(cx: &Ctx, name: &str, cmdline: &str) -> Result<(), String> {
    let f = cx.images_dir().join("net.raw");
    std::fs::write(&f, vec![0u8; 1 << 20]).map_err(|e| e.to_string())?;
    let prop = format!("os_command_line={cmdline}");
    cx.tb.osc_json(&[
        "image",
        "create",
        "--public",
        "--file",
        &f.display().to_string(),
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--property",
        &prop,
        name,
    ])?;
    Ok(())
}

impl Ctx<'_> {
    /// Polls a server's console until `f` finds what it wants.
    pub(super) fn wait_console<T>(
        &self,
        who: Option<&Creds>,
        server: &str,
        what: &str,
        limit: Duration,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<T, String> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(text) = self.tb.osc_as(
                who,
                &["console", "log", "show", server],
                Duration::from_secs(60),
            ) {
                if let Some(v) = f(&text) {
                    return Ok(v);
                }
                last = text;
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "console of {server}: no {what} after {} s; tail:\n{}",
                    limit.as_secs(),
                    tail(&last, 25)
                ));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    fn wait_nic(&self, who: Option<&Creds>, server: &str) -> Result<NicLine, String> {
        self.wait_console(
            who,
            server,
            "NUBO-NET eth0 line",
            Duration::from_secs(240),
            |c| nic_line(c, "eth0"),
        )
    }

    fn wait_probe(
        &self,
        who: Option<&Creds>,
        server: &str,
        target: &str,
        want_ok: bool,
        limit: Duration,
    ) -> Result<Option<String>, String> {
        self.wait_console(
            who,
            server,
            &format!("probe of {target} ok={want_ok}"),
            limit,
            |c| match probe_state(c, target) {
                Ok(Some(a)) if want_ok => Some(Some(a)),
                Ok(None) if !want_ok => Some(None),
                _ => None,
            },
        )
    }
}

/// The networking steps. Only in L1 (the daemon's data plane must never be
/// built on this machine's own interfaces).
pub(super) fn workflow(steps: &mut Steps, cx: &Ctx, tb: &Testbed) {
    // L1, started here or attached to (its control endpoint is remote).
    if !matches!(tb.ctl, Ctl::Remote(_)) {
        progress("network steps: only in the testbed's L1 (TESTBED_MODE=host builds no networks)");
        if in_ci() {
            steps
                .failed
                .push("network steps skipped under CI=true".into());
        }
        return;
    }
    let minute = Duration::from_secs(60);
    let (Some(u1), Some(u2)) = (cx.u1.clone(), cx.u2.clone()) else {
        steps
            .failed
            .push("network steps need the two projects' users".into());
        return;
    };
    let (u1, u2) = (&u1, &u2);
    let img = cx.n("netimg");
    let probe_img = cx.n("netprobe");
    let (n1, s1, n2, s2, r1) = (cx.n("n1"), cx.n("s1"), cx.n("n2"), cx.n("s2"), cx.n("r1"));
    let (vma, vmb, vmc, vmd) = (cx.n("vmA"), cx.n("vmB"), cx.n("vmC"), cx.n("vmD"));
    let (v101, v102) = (cx.n("v101"), cx.n("v102"));
    const B_IP: &str = "10.10.0.50";
    const OUTSIDE: &str = "203.0.113.10";
    let mut state = NetState::default();

    let ok = steps.run(tb, "net-setup", false, || {
        net_image(cx, &img, "console=ttyS0 quiet nubo.then=net")?;
        net_image(
            cx,
            &probe_img,
            &format!(
                "console=ttyS0 quiet nubo.then=net nubo.probe={B_IP}:80,{OUTSIDE}:80 nubo.spoof=10.10.0.99,{B_IP}"
            ),
        )?;
        let public = tb.osc_json(&["network", "show", "public"])?;
        let external = match public.get("router:external") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "External",
            _ => false,
        };
        ensure(external, || {
            format!("network show public: not external: {public}")
        })?;
        state.public_id = field(&public, "id").to_string();
        // The outside host on the external network's bridge.
        l1(
            tb,
            &format!(
                "ip netns del outside 2>/dev/null; ip link del out0 2>/dev/null\n\
                 set -e; br=brq$(echo {id} | cut -c1-11)\n\
                 ip netns add outside\n\
                 ip link add out0 type veth peer name out1\n\
                 ip link set out1 netns outside\n\
                 ip link set out0 master $br up\n\
                 ip -n outside addr add {OUTSIDE}/24 dev out1\n\
                 ip -n outside link set out1 up; ip -n outside link set lo up\n\
                 mkdir -p /tmp/outside-www; echo outside-host >/tmp/outside-www/index.html\n\
                 ip netns exec outside httpd -p 80 -h /tmp/outside-www",
                id = state.public_id
            ),
        )?;
        Ok(())
    });
    if !ok {
        return;
    }

    steps.run(tb, "net-tenant", false, || {
        let net = tb.osc_json_as(Some(u1), &["network", "create", &n1])?;
        ensure(json_str(&net, &["mtu"]) == "1450", || {
            format!("a VXLAN tenant network's MTU is not 1450: {net}")
        })?;
        ensure(
            json_str(&net, &["provider:network_type"]).is_empty(),
            || format!("a member sees provider attributes: {net}"),
        )?;
        let sub = tb.osc_json_as(
            Some(u1),
            &[
                "subnet",
                "create",
                "--network",
                &n1,
                "--subnet-range",
                "10.10.0.0/24",
                "--dns-nameserver",
                "10.10.0.254",
                &s1,
            ],
        )?;
        ensure(json_str(&sub, &["gateway_ip"]) == "10.10.0.1", || {
            format!("subnet create: gateway: {sub}")
        })?;
        let pools = sub
            .get("allocation_pools")
            .map(|p| p.to_string())
            .unwrap_or_default();
        ensure(
            pools.contains("\"10.10.0.2\"") && pools.contains("\"10.10.0.254\""),
            || format!("subnet create: allocation pools: {sub}"),
        )?;
        // Bad input, Neutron's way.
        for (args, what) in [
            (vec!["--subnet-range", "10.10.0.0/33"], "a /33"),
            (
                vec!["--subnet-range", "10.10.0.0/25"],
                "an overlapping CIDR",
            ),
        ] {
            let mut a = vec!["subnet", "create", "--network", n1.as_str()];
            a.extend(args);
            a.push("bad-subnet");
            ensure(tb.osc_as(Some(u1), &a, minute).is_err(), || {
                format!("subnet create with {what} was accepted")
            })?;
        }
        tb.osc_json_as(Some(u1), &["router", "create", &r1])?;
        tb.osc_as(Some(u1), &["router", "add", "subnet", &r1, &s1], minute)?;
        tb.osc_as(
            Some(u1),
            &["router", "set", "--external-gateway", "public", &r1],
            minute,
        )?;
        let r = tb.osc_json_as(Some(u1), &["router", "show", &r1])?;
        let gw_ip = r
            .get("external_gateway_info")
            .and_then(|g| g.get("external_fixed_ips"))
            .and_then(|f| f.get(0))
            .map(|f| json_str(f, &["ip_address"]))
            .unwrap_or_default();
        ensure(gw_ip.starts_with("203.0.113."), || {
            format!("router show: no gateway address: {r}")
        })?;
        state.router_gw = gw_ip;
        let admin_view = tb.osc_json(&["network", "show", &n1])?;
        state.n1_vni = json_str(&admin_view, &["provider:segmentation_id"]);
        state.n1_id = field(&admin_view, "id").to_string();
        ensure(
            json_str(&admin_view, &["provider:network_type"]) == "vxlan"
                && !state.n1_vni.is_empty(),
            || format!("admin's network show: {admin_view}"),
        )
    });

    steps.run(tb, "net-servers", false, || {
        let b = tb.osc_json_as(
            Some(u1),
            &[
                "server",
                "create",
                "--image",
                &img,
                "--flavor",
                "m1.tiny",
                "--nic",
                &format!("net-id={n1},v4-fixed-ip={B_IP}"),
                "--wait",
                &vmb,
            ],
        )?;
        ensure(field(&b, "status") == "ACTIVE", || {
            format!("server create {vmb}: {b}")
        })?;
        let a = tb.osc_json_as(
            Some(u1),
            &[
                "server",
                "create",
                "--image",
                &probe_img,
                "--flavor",
                "m1.tiny",
                "--network",
                &n1,
                "--wait",
                &vma,
            ],
        )?;
        ensure(field(&a, "status") == "ACTIVE", || {
            format!("server create {vma}: {a}")
        })?;
        for (vm, fixed) in [(&vmb, Some(B_IP)), (&vma, None)] {
            let nic = cx.wait_nic(Some(u1), vm)?;
            let show = cx.server_show(Some(u1), vm)?;
            let ip = nic.ip.split('/').next().unwrap_or("").to_string();
            ensure(!ip.is_empty() && show.to_string().contains(&ip), || {
                format!("{vm}: DHCP gave {ip} but the API shows {show}")
            })?;
            if let Some(f) = fixed {
                ensure(ip == f, || format!("{vm}: DHCP gave {ip}, asked for {f}"))?;
            }
            ensure(nic.mtu == "1450", || {
                format!("{vm}: MTU by DHCP {} (want 1450)", nic.mtu)
            })?;
            let ports = tb.osc_json_as(Some(u1), &["port", "list", "--server", vm])?;
            let rows = ports.as_array().cloned().unwrap_or_default();
            ensure(rows.len() == 1, || {
                format!("port list --server {vm}: {ports}")
            })?;
            ensure(
                rows[0]
                    .to_string()
                    .to_ascii_lowercase()
                    .contains(&nic.mac.to_ascii_lowercase()),
                || format!("{vm}: console MAC {} not in {ports}", nic.mac),
            )?;
            state
                .nics
                .push((vm.to_string(), nic, field(&rows[0], "ID").to_string()));
        }
        // Same network, same (default) group: vmA reaches vmB's httpd.
        let mac_b = state.mac(&vmb);
        let got = cx.wait_probe(Some(u1), &vma, &format!("{B_IP}:80"), true, 2 * minute)?;
        ensure(got.as_deref().is_some_and(|a| a.contains(&mac_b)), || {
            format!("{vma} reached {B_IP} but the answer is not {vmb}'s ({mac_b}): {got:?}")
        })?;
        let p = tb.osc_json_as(Some(u1), &["port", "show", &state.port(&vmb)])?;
        ensure(field(&p, "status") == "ACTIVE", || {
            format!("{vmb}'s port: {p}")
        })
    });

    steps.run(tb, "net-isolation", false, || {
        // Project 2: the same CIDR, a server at the same address.
        tb.osc_json_as(Some(u2), &["network", "create", &n2])?;
        tb.osc_json_as(
            Some(u2),
            &[
                "subnet",
                "create",
                "--network",
                &n2,
                "--subnet-range",
                "10.10.0.0/24",
                &s2,
            ],
        )?;
        let n2_id = field(&tb.osc_json(&["network", "show", &n2])?, "id").to_string();
        tb.osc_json_as(
            Some(u2),
            &[
                "server",
                "create",
                "--image",
                &img,
                "--flavor",
                "m1.tiny",
                "--nic",
                &format!("net-id={n2},v4-fixed-ip={B_IP}"),
                "--wait",
                &vmc,
            ],
        )?;
        let nic_c = cx.wait_nic(Some(u2), &vmc)?;
        ensure(nic_c.ip.starts_with(B_IP), || format!("{vmc}: {nic_c:?}"))?;
        // Project 1 cannot see project 2's network.
        ensure(
            tb.osc_as(Some(u1), &["network", "show", &n2_id], minute)
                .is_err(),
            || format!("{} sees {n2}", u1.user),
        )?;
        // vmA keeps probing 10.10.0.50 (vmB): nothing of project 1 reaches
        // project 2's guest at that same address, nor the other way round.
        // (Captured on the guests' TAPs: a bridge device sees only what is
        // flooded to the host.)
        let mac_a = state.mac(&vma);
        let ports_c = tb.osc_json_as(Some(u2), &["port", "list", "--server", &vmc])?;
        let port_c = ports_c
            .get(0)
            .map(|r| field(r, "ID").to_string())
            .unwrap_or_default();
        ensure(port_c.len() > 11, || {
            format!("port list --server {vmc}: {ports_c}")
        })?;
        let tap_a = format!("tap{}", &state.port(&vma)[..11]);
        let tap_c = format!("tap{}", &port_c[..11]);
        let br2 = format!("brq{}", &n2_id[..11]);
        let crossed = capture(tb, "", &tap_c, &format!("ether host {mac_a}"), 8, "sleep 6")?;
        ensure(crossed == 0, || {
            format!("{crossed} frames of {vma} reached {vmc} ({tap_c})")
        })?;
        let crossed = capture(tb, "", &br2, &format!("ether host {mac_a}"), 8, "sleep 6")?;
        ensure(crossed == 0, || {
            format!("{crossed} frames of {vma} on project 2's bridge {br2}")
        })?;
        let crossed = capture(
            tb,
            "",
            &tap_a,
            &format!("ether host {}", nic_c.mac),
            8,
            "sleep 6",
        )?;
        ensure(crossed == 0, || {
            format!("{crossed} frames of {vmc} reached {vma} ({tap_a})")
        })?;
        let seen = capture(
            tb,
            "",
            &tap_a,
            &format!("ether src {mac_a} and tcp port 80"),
            8,
            "sleep 6",
        )?;
        ensure(seen > 0, || {
            format!(
                "the capture on {tap_a} saw no probe of {vma}: the isolation check proves nothing"
            )
        })?;
        let got = cx.wait_probe(Some(u1), &vma, &format!("{B_IP}:80"), true, minute)?;
        let mac_b = state.mac(&vmb);
        ensure(got.as_deref().is_some_and(|a| a.contains(&mac_b)), || {
            format!("{vma}'s probe of {B_IP} answered by someone else than {vmb}: {got:?}")
        })
    });

    steps.run(tb, "net-vxlan", false, || {
        // A second host in L1: namespace host2 with the network's VNI over
        // the underlay, and a "guest" namespace behind it on a port of n1.
        let port = tb.osc_json_as(
            Some(u1),
            &[
                "port", "create", "--network", &n1, "--fixed-ip",
                &format!("subnet={s1},ip-address=10.10.0.77"), &cx.n("p-h2"),
            ],
        )?;
        let mac = field(&port, "mac_address").to_string();
        let vni = &state.n1_vni;
        l1(
            tb,
            &format!(
                "ip -n host2 link del vxlan-{vni} 2>/dev/null; ip -n host2 link del br-{vni} 2>/dev/null\n\
                 ip netns del h2vm 2>/dev/null\n\
                 set -e\n\
                 ip -n host2 link add vxlan-{vni} type vxlan id {vni} local 192.168.100.2 dstport 4789 nolearning\n\
                 ip netns exec host2 bridge fdb append 00:00:00:00:00:00 dev vxlan-{vni} dst 192.168.100.1\n\
                 ip -n host2 link add br-{vni} type bridge\n\
                 ip -n host2 link set vxlan-{vni} master br-{vni} up\n\
                 ip -n host2 link set br-{vni} up\n\
                 ip netns add h2vm\n\
                 ip link add h2a type veth peer name h2b\n\
                 ip link set h2a netns host2; ip link set h2b netns h2vm\n\
                 ip -n host2 link set h2a master br-{vni} up\n\
                 ip -n h2vm link set h2b address {mac} mtu 1450 up\n\
                 ip -n h2vm addr add 10.10.0.77/24 dev h2b"
            ),
        )?;
        let mac_b = state.mac(&vmb);
        let start = Instant::now();
        loop {
            match wget_from(tb, "h2vm", &format!("http://{B_IP}/")) {
                Some(body) if body.contains(&mac_b) => break,
                other if start.elapsed() > minute => {
                    return Err(format!("host2's namespace does not reach {vmb} over VXLAN: {other:?}"))
                }
                _ => std::thread::sleep(Duration::from_secs(2)),
            }
        }
        // The path MTU is the network's: 1422 bytes of ICMP payload fit in
        // 1450 with DF set, 1423 do not.
        l1(tb, &format!("ip netns exec h2vm ping -c 1 -W 2 -M do -s 1422 {B_IP} >/dev/null || ip netns exec h2vm ping -c 1 -W 2 {B_IP}"))
            .map(drop)
    });

    steps.run(tb, "net-snat-fip-sg", false, || {
        // Egress through SNAT: vmA reaches the outside host, which sees the
        // router's gateway address.
        let gw = state.router_gw.clone();
        let seen = capture(
            tb,
            "outside",
            "out1",
            &format!("src host {gw} and tcp dst port 80"),
            12,
            "sleep 10",
        )?;
        let got = cx.wait_probe(Some(u1), &vma, &format!("{OUTSIDE}:80"), true, 2 * minute)?;
        ensure(got.as_deref() == Some("outside-host"), || {
            format!("{vma} -> outside: {got:?}")
        })?;
        ensure(seen > 0, || {
            format!("the outside host saw no TCP from the router's address {gw}")
        })?;
        // The outside reaches vmB only through its floating IP, and only once
        // a rule lets TCP 80 in.
        let fip = tb.osc_json_as(Some(u1), &["floating", "ip", "create", "public"])?;
        let fip_ip = field(&fip, "floating_ip_address").to_string();
        tb.osc_as(
            Some(u1),
            &["server", "add", "floating", "ip", &vmb, &fip_ip],
            minute,
        )?;
        let show = cx.server_show(Some(u1), &vmb)?;
        ensure(show.to_string().contains(&fip_ip), || {
            format!("server show {vmb} lacks {fip_ip}: {show}")
        })?;
        let url = format!("http://{fip_ip}/");
        std::thread::sleep(Duration::from_secs(3));
        ensure(wget_from(tb, "outside", &url).is_none(), || {
            format!("{url} answered before any security group rule allowed TCP 80")
        })?;
        tb.osc_json_as(
            Some(u1),
            &[
                "security",
                "group",
                "rule",
                "create",
                "--ingress",
                "--protocol",
                "tcp",
                "--dst-port",
                "80",
                "--remote-ip",
                "0.0.0.0/0",
                "default",
            ],
        )?;
        let mac_b = state.mac(&vmb);
        let start = Instant::now();
        loop {
            match wget_from(tb, "outside", &url) {
                Some(b) if b.contains(&mac_b) => break,
                other if start.elapsed() > minute => {
                    return Err(format!(
                        "{url} does not reach {vmb} after the rule: {other:?}"
                    ))
                }
                _ => std::thread::sleep(Duration::from_secs(2)),
            }
        }
        // Not through the router to the fixed address directly.
        l1(
            tb,
            &format!("ip -n outside route replace 10.10.0.0/24 via {gw}"),
        )?;
        ensure(
            wget_from(tb, "outside", &format!("http://{B_IP}/")).is_none(),
            || format!("the outside reaches {B_IP} without a floating IP"),
        )?;
        tb.osc_as(
            Some(u1),
            &["server", "remove", "floating", "ip", &vmb, &fip_ip],
            minute,
        )?;
        std::thread::sleep(Duration::from_secs(3));
        ensure(wget_from(tb, "outside", &url).is_none(), || {
            format!("{url} still answers after the floating IP was removed")
        })?;
        tb.osc_as(Some(u1), &["floating", "ip", "delete", &fip_ip], minute)?;
        // Anti-spoofing: vmA pings vmB from 10.10.0.99 (not its address);
        // the frames leave vmA's TAP but never reach vmB's.
        let tap_a = format!("tap{}", &state.port(&vma)[..11]);
        let tap_b = format!("tap{}", &state.port(&vmb)[..11]);
        let sent = capture(tb, "", &tap_a, "src host 10.10.0.99", 6, "sleep 4")?;
        let arrived = capture(tb, "", &tap_b, "src host 10.10.0.99", 6, "sleep 4")?;
        ensure(sent > 0, || {
            format!("{vma} sent nothing from the spoofed 10.10.0.99 on {tap_a}")
        })?;
        ensure(arrived == 0, || {
            format!("{arrived} spoofed packets reached {vmb}")
        })
    });

    steps.run(tb, "net-vlan", false, || {
        // Admin's provider VLANs on physnet1 (trunk0 in L1; its far end
        // trunk1 in namespace `switch`).
        for (net, vid) in [(&v101, "101"), (&v102, "102")] {
            let n = tb.osc_json(&[
                "network",
                "create",
                "--provider-network-type",
                "vlan",
                "--provider-physical-network",
                "physnet1",
                "--provider-segment",
                vid,
                "--disable-port-security",
                net,
            ])?;
            ensure(json_str(&n, &["provider:segmentation_id"]) == vid, || {
                format!("{n}")
            })?;
            tb.osc_json(&[
                "subnet",
                "create",
                "--network",
                net,
                "--subnet-range",
                "172.16.1.0/24",
                &format!("{net}-sub"),
            ])?;
        }
        l1(
            tb,
            "ip -n switch link del trunk1.101 2>/dev/null; ip -n switch link del trunk1.102 2>/dev/null\n\
             set -e\n\
             ip -n switch link add link trunk1 name trunk1.101 type vlan id 101\n\
             ip -n switch link add link trunk1 name trunk1.102 type vlan id 102\n\
             ip -n switch link set trunk1.101 up; ip -n switch link set trunk1.102 up\n\
             ip -n switch addr add 172.16.1.201/24 dev trunk1.101",
        )?;
        tb.osc_json(&[
            "server",
            "create",
            "--image",
            &img,
            "--flavor",
            "m1.tiny",
            "--network",
            &v101,
            "--wait",
            &vmd,
        ])?;
        let nic = cx.wait_nic(None, &vmd)?;
        let ip = nic.ip.split('/').next().unwrap_or("").to_string();
        // Frames leave the trunk tagged 101, none tagged 102.
        let tagged = capture(
            tb,
            "switch",
            "trunk1",
            &format!("vlan 101 and ether host {}", nic.mac),
            8,
            &format!("ip netns exec switch arping -c 3 -I trunk1.101 {ip} >/dev/null 2>&1 || true"),
        )?;
        ensure(tagged > 0, || {
            format!("no frame of {vmd} tagged 101 on the trunk")
        })?;
        let wrong = capture(
            tb,
            "switch",
            "trunk1",
            &format!("vlan 102 and ether host {}", nic.mac),
            8,
            &format!("ip netns exec switch arping -c 3 -I trunk1.102 {ip} >/dev/null 2>&1 || true"),
        )?;
        ensure(wrong == 0, || format!("{wrong} frames of {vmd} tagged 102"))?;
        let mac = nic.mac.clone();
        let start = Instant::now();
        loop {
            match wget_from(tb, "switch", &format!("http://{ip}/")) {
                Some(b) if b.contains(&mac) => break,
                other if start.elapsed() > minute => {
                    return Err(format!(
                        "VLAN 101 on the trunk does not reach {vmd}: {other:?}"
                    ))
                }
                _ => std::thread::sleep(Duration::from_secs(2)),
            }
        }
        Ok(())
    });

    steps.run(tb, "net-restart", false, || {
        // kill -9 the daemon, start it again: the guests keep their
        // connectivity and reconcile changes nothing.
        l1(
            tb,
            "kill -9 $(cat \"$NUBO_PID_FILE\"); sleep 1; rm -f \"$NUBO_PID_FILE\"; \"$NUBO_START\"",
        )?;
        tb.wait_api(Duration::from_secs(120))?;
        let start = Instant::now();
        let changes = loop {
            let log = tb.daemon_log_tail(200);
            if let Some(n) = log
                .lines()
                .rfind(|l| l.contains("network reconcile done"))
                .and_then(|l| l.split("changes=").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                break n;
            }
            if start.elapsed() > minute {
                return Err(format!(
                    "no 'network reconcile done' after the restart:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        ensure(changes == 0, || {
            format!("reconcile after a restart changed {changes} things")
        })?;
        let mac_b = state.mac(&vmb);
        ensure(
            wget_from(tb, "h2vm", &format!("http://{B_IP}/")).is_some_and(|b| b.contains(&mac_b)),
            || "after the restart host2 no longer reaches vmB".to_string(),
        )
    });

    steps.run(tb, "net-delete", false, || {
        // In use: 409s.
        ensure(tb.osc_as(Some(u1), &["network", "delete", &n1], minute).is_err(), || {
            format!("network delete {n1} with servers on it succeeded")
        })?;
        ensure(tb.osc_as(Some(u1), &["subnet", "delete", &s1], minute).is_err(), || {
            format!("subnet delete {s1} with ports succeeded")
        })?;
        for (who, vm) in [(Some(u1), &vma), (Some(u1), &vmb), (Some(u2), &vmc), (None, &vmd)] {
            tb.osc_as(who, &["server", "delete", "--wait", vm], 3 * minute)?;
        }
        tb.osc_as(Some(u1), &["port", "delete", &cx.n("p-h2")], minute)?;
        tb.osc_as(Some(u1), &["router", "remove", "subnet", &r1, &s1], minute)?;
        tb.osc_as(Some(u1), &["router", "unset", "--external-gateway", &r1], minute)?;
        tb.osc_as(Some(u1), &["router", "delete", &r1], minute)?;
        tb.osc_as(Some(u1), &["subnet", "delete", &s1], minute)?;
        tb.osc_as(Some(u1), &["network", "delete", &n1], minute)?;
        tb.osc_as(Some(u2), &["network", "delete", &n2], minute)?;
        tb.osc(&["network", "delete", &v101, &v102])?;
        // Only the external network's own plumbing is left.
        let pub_br = format!("brq{}", &state.public_id[..11]);
        let start = Instant::now();
        loop {
            let out = l1(
                tb,
                "ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(brq|tap|vxlan-|trunk0\\.)' ; \
                 ip netns list | grep qrouter- ; nft list tables | grep nubo_p_ ; true",
            )?;
            let left: Vec<&str> = out
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && *l != pub_br)
                .collect();
            if left.is_empty() {
                break;
            }
            if start.elapsed() > minute {
                return Err(format!("left behind after every delete: {left:?}"));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok(())
    });

    // Best-effort cleanup of what this module added to L1.
    let _ = tb.ctl(&format!(
        "ip netns del outside; ip netns del h2vm; ip link del out0; \
         ip -n host2 link del vxlan-{vni}; ip -n host2 link del br-{vni}; \
         ip -n switch link del trunk1.101; ip -n switch link del trunk1.102; true",
        vni = state.n1_vni
    ));
}

/// What the steps learn and later steps use.
#[derive(Default)]
struct NetState {
    public_id: String,
    n1_id: String,
    n1_vni: String,
    router_gw: String,
    /// (server, its NIC as the console reports it, its port id)
    nics: Vec<(String, NicLine, String)>,
}

impl NetState {
    fn mac(&self, vm: &str) -> String {
        self.nics
            .iter()
            .find(|(n, _, _)| n == vm)
            .map(|(_, nic, _)| nic.mac.clone())
            .unwrap_or_else(|| "unknown-mac".into())
    }

    fn port(&self, vm: &str) -> String {
        self.nics
            .iter()
            .find(|(n, _, _)| n == vm)
            .map(|(_, _, p)| p.clone())
            .unwrap_or_else(|| "unknown-port-id".into())
    }
}
