#!/usr/bin/env python3
"""Networking benchmark (issue #11), in the testbed's L1 with the daemon.

1. Set-up time: network + subnet + router (with the external gateway) +
   a server on it, until the guest's console shows the address DHCP gave it
   (`NUBO-NET eth0 ... ip=`); each API call timed.
2. TCP throughput, 512 MiB streams from one guest (busybox `dd | nc`, timed in
   the guest from /proc/uptime) to:
   - bridge: another guest on the same tenant network (one Linux bridge);
   - vxlan:  a namespace behind a second "host" (namespace host2 in L1, its
     own VXLAN device of the network's VNI over a veth underlay);
   - tap:    L1 itself over a bare TAP (a nubo-vmm started directly in L1
     with `--net tap=`, no bridge, no filter): the baseline.
   Reported: MiB/s per run, median and spread; bridge/tap and vxlan/tap.
3. Reconcile of 200 ports: 200 ports with port security (one nftables table
   each) bound to this host, then the daemon is killed and started again,
   and its log line `network reconcile done changes=N ms=M` read: warm (the
   host has everything: N must be 0) and cold (every port table deleted
   first), --reconciles times each; plus the nftables rule count.

Usage: bench/net.py --api URL --ctl URL [--runs 5] [--ports 200] [--json FILE]
       (tests/testbed/serve.sh prints the two ports; see bench/README or the
       main README's benchmark section)
Everything it creates is deleted at the end.
"""
import argparse
import json
import os
import re
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from orchestrator import Api, ctl_exec, log, tiny_disk  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def l1(ctl, script):
    """Runs a script in L1 (with iproute2's ip); returns (output, status)."""
    out = ctl_exec(ctl, "ip() { /usr/sbin/ip \"$@\"; }\n" + script)
    body, _, last = out.rstrip("\n").rpartition("\n")
    status = int(last[5:]) if last.startswith("EXIT=") else -1
    return body, status


def console(api, sid):
    out = api.json("POST", f"/compute/v2.1/servers/{sid}/action",
                   {"os-getConsoleOutput": {"length": None}})
    return out.get("output", "")


def wait_console(api, sid, pattern, timeout_s, count=1):
    rx = re.compile(pattern)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        found = rx.findall(console(api, sid))
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise RuntimeError(f"server {sid}: no {count}x {pattern!r} within {timeout_s} s:\n"
                       + console(api, sid)[-1500:])


def wait_active(api, sid, timeout_s=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        s = api.json("GET", f"/compute/v2.1/servers/{sid}")["server"]
        if s["status"] == "ACTIVE":
            return
        if s["status"] == "ERROR":
            raise RuntimeError(f"server {sid} ERROR: {s.get('fault')}")
        time.sleep(0.3)
    raise RuntimeError(f"server {sid} not ACTIVE in {timeout_s} s")


def timed(label, times, f):
    t0 = time.monotonic()
    r = f()
    times.append((label, time.monotonic() - t0))
    return r


def image(api, cmdline, disk):
    body = {"name": f"netbench-{uuid.uuid4().hex[:6]}", "disk_format": "raw",
            "container_format": "bare", "os_command_line": cmdline, "visibility": "public"}
    iid = api.json("POST", "/image/v2/images", body)["id"]
    with open(disk, "rb") as f:
        api.call("PUT", f"/image/v2/images/{iid}/file", raw=f.read(), timeout=300)
    return iid


def server(api, name, image_id, flavor, net_id, fixed_ip=None):
    nic = {"uuid": net_id}
    if fixed_ip:
        nic["fixed_ip"] = fixed_ip
    return api.json("POST", "/compute/v2.1/servers", {"server": {
        "name": name, "imageRef": image_id, "flavorRef": flavor, "networks": [nic]}})["server"]["id"]


def sends(api, sid, target, runs, timeout_s=900):
    lines = wait_console(api, sid, rf"NUBO-SEND {re.escape(target)} mib=(\d+) secs=([0-9.]+)",
                         timeout_s, count=runs)
    return [int(m) / max(float(s), 0.01) for m, s in lines[:runs]]


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def reconcile_log(ctl):
    out, _ = l1(ctl, "grep 'network reconcile done' \"$NUBO_LOG_FILE\" | tail -n 1")
    m = re.search(r"changes=(\d+).*ms=(\d+)", out)
    if not m:
        raise RuntimeError(f"no reconcile line: {out}")
    return int(m.group(1)), int(m.group(2))


def restart_daemon(ctl, api, password):
    l1(ctl, "kill -9 $(cat \"$NUBO_PID_FILE\"); sleep 0.5; rm -f \"$NUBO_PID_FILE\"; "
            "\"$NUBO_START\" >/dev/null")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        try:
            api.auth(password)
            return
        except Exception:  # noqa: BLE001 - the daemon is starting
            time.sleep(0.3)
    raise RuntimeError("the daemon did not come back")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--ports", type=int, default=200)
    ap.add_argument("--reconciles", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--skip-throughput", action="store_true")
    a = ap.parse_args()
    api = Api(a.api)
    pw_line, _ = l1(a.ctl, "grep OS_PASSWORD /var/lib/nubo/admin-openrc")
    password = pw_line.split("=", 1)[1].strip().strip("'")
    api.auth(password)
    res = {}
    made = {"servers": [], "ports": [], "routers": [], "networks": [], "images": []}
    disk = "/tmp/netbench.raw"
    tiny_disk(disk)
    flavor = api.json("POST", "/compute/v2.1/flavors", {"flavor": {
        "name": f"netbench-{uuid.uuid4().hex[:6]}", "ram": 192, "vcpus": 1, "disk": 0}})["flavor"]["id"]
    try:
        # 1. set-up time
        times = []
        net = timed("network create", times, lambda: api.json(
            "POST", "/network/v2.0/networks", {"network": {"name": "netbench"}})["network"])
        made["networks"].append(net["id"])
        timed("subnet create", times, lambda: api.json("POST", "/network/v2.0/subnets", {"subnet": {
            "network_id": net["id"], "cidr": "10.50.0.0/24", "ip_version": 4}}))
        router = timed("router create", times, lambda: api.json(
            "POST", "/network/v2.0/routers", {"router": {"name": "netbench"}})["router"])
        made["routers"].append(router["id"])
        sub = api.json("GET", f"/network/v2.0/subnets?network_id={net['id']}")["subnets"][0]
        made["subnets"] = [sub["id"]]
        timed("router add subnet", times, lambda: api.json(
            "PUT", f"/network/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]}))
        public = api.json("GET", "/network/v2.0/networks?name=public")["networks"][0]["id"]
        timed("router set gateway", times, lambda: api.json(
            "PUT", f"/network/v2.0/routers/{router['id']}",
            {"router": {"external_gateway_info": {"network_id": public}}}))
        sink_img = image(api, "console=ttyS0 quiet nubo.then=net nubo.sink=5001", disk)
        made["images"].append(sink_img)
        t0 = time.monotonic()
        sink = server(api, "netbench-sink", sink_img, flavor, net["id"], "10.50.0.50")
        made["servers"].append(sink)
        wait_active(api, sink)
        times.append(("server create -> ACTIVE", time.monotonic() - t0))
        wait_console(api, sink, r"NUBO-NET eth0 mac=\S+ ip=10\.50\.0\.50/24", 300)
        times.append(("server create -> DHCP address on the console", time.monotonic() - t0))
        res["setup_s"] = dict(times)
        log("set-up: " + ", ".join(f"{k} {v:.2f} s" for k, v in times))
        vni = api.json("GET", f"/network/v2.0/networks/{net['id']}")["network"]["provider:segmentation_id"]

        # This host's name, as its ports are bound to it.
        host = api.json("GET", f"/network/v2.0/ports?device_id={sink}")["ports"][0]["binding:host_id"]
        port = None
        if a.skip_throughput:
            log("throughput: skipped (--skip-throughput)")
        else:
            port = throughput(api, a, res, made, net, vni, flavor, disk)
        for sid in made["servers"]:
            api.call("DELETE", f"/compute/v2.1/servers/{sid}", ok=(204, 404))
        made["servers"] = []
        reconcile(api, a, res, made, net, host, password)
    finally:
        cleanup(api, made, flavor)
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


def throughput(api, a, res, made, net, vni, flavor, disk):
    """Section 2; returns the VXLAN namespace's port."""
    runs, mib = a.runs, a.mib
    snd_img = image(api, f"console=ttyS0 quiet nubo.then=net nubo.send=10.50.0.50:5001:{mib}:{runs}", disk)
    made["images"].append(snd_img)
    snd = server(api, "netbench-send", snd_img, flavor, net["id"])
    made["servers"].append(snd)
    wait_active(api, snd)
    bridge = sends(api, snd, "10.50.0.50:5001", runs)
    log(f"bridge: {[round(x, 1) for x in bridge]} MiB/s")
    # vxlan: a namespace behind host2
    port = api.json("POST", "/network/v2.0/ports", {"port": {
        "network_id": net["id"], "fixed_ips": [{"ip_address": "10.50.0.77"}]}})["port"]
    made["ports"].append(port["id"])
    out, rc = l1(a.ctl, f"""
ip -n host2 link del vxlan-{vni} 2>/dev/null; ip -n host2 link del br-{vni} 2>/dev/null; ip netns del nbvm 2>/dev/null
set -e
ip -n host2 link add vxlan-{vni} type vxlan id {vni} local 192.168.100.2 dstport 4789 nolearning
ip netns exec host2 /usr/sbin/bridge fdb append 00:00:00:00:00:00 dev vxlan-{vni} dst 192.168.100.1
ip -n host2 link add br-{vni} type bridge
ip -n host2 link set vxlan-{vni} master br-{vni} up
ip -n host2 link set br-{vni} up
ip netns add nbvm
ip link add nba type veth peer name nbb
ip link set nba netns host2; ip link set nbb netns nbvm
ip -n host2 link set nba master br-{vni} up
ip -n nbvm link set nbb address {port['mac_address']} mtu 1450 up
ip -n nbvm addr add 10.50.0.77/24 dev nbb
# Not through the ip() function: a backgrounded function keeps the control
# CGI's output open.
printf '#!/bin/sh\nexec cat >/dev/null\n' >/tmp/nbsink; chmod +x /tmp/nbsink
/usr/sbin/ip netns exec nbvm setsid nc -ll -p 5001 -e /tmp/nbsink </dev/null >/dev/null 2>&1 &
""")
    if rc != 0:
        raise RuntimeError(f"host2 set-up: {out}")
    vx_img = image(api, f"console=ttyS0 quiet nubo.then=net nubo.send=10.50.0.77:5001:{mib}:{runs}", disk)
    made["images"].append(vx_img)
    vx = server(api, "netbench-vxlan", vx_img, flavor, net["id"])
    made["servers"].append(vx)
    wait_active(api, vx)
    vxlan = sends(api, vx, "10.50.0.77:5001", runs)
    log(f"vxlan: {[round(x, 1) for x in vxlan]} MiB/s")
    # bare TAP baseline: a nubo-vmm of our own in L1
    out, rc = l1(a.ctl, f"""
ip link del nbtap0 2>/dev/null
ip tuntap add dev nbtap0 mode tap vnet_hdr
ip addr add 192.168.77.1/24 dev nbtap0; ip link set nbtap0 up
printf '#!/bin/sh\nexec cat >/dev/null\n' >/tmp/nbsink; chmod +x /tmp/nbsink
setsid nc -ll -p 5001 -e /tmp/nbsink </dev/null >/dev/null 2>&1 &
rm -f /tmp/nbtap.log
setsid /testbed/bin/nubo-vmm run --kernel /testbed/l2/bzImage --initrd /testbed/l2/initramfs.cpio.gz \\
  --cmdline 'console=ttyS0 quiet nubo.then=net nubo.dhcp=0 nubo.ip=192.168.77.2/24 nubo.send=192.168.77.1:5001:{mib}:{runs}' \\
  --cpus 1 --memory 192M --net tap=nbtap0 --serial file=/tmp/nbtap.log </dev/null >/tmp/nbtap.out 2>&1 &
echo $! >/tmp/nbtap.pid
""")
    if rc != 0:
        raise RuntimeError(f"bare TAP guest: {out}")
    t0 = time.monotonic()
    tap = []
    while time.monotonic() - t0 < 900 and len(tap) < runs:
        out, _ = l1(a.ctl, "cat /tmp/nbtap.log 2>/dev/null | grep NUBO-SEND")
        tap = [int(m) / max(float(s), 0.01)
               for m, s in re.findall(r"mib=(\d+) secs=([0-9.]+)", out)]
        time.sleep(2)
    l1(a.ctl, "kill $(cat /tmp/nbtap.pid); sleep 0.5; ip link del nbtap0; "
              "ip netns del nbvm; pkill -f 'nc -ll -p 5001'; true")
    if len(tap) < runs:
        raise RuntimeError(f"bare TAP guest sent {len(tap)} of {runs} streams")
    log(f"tap: {[round(x, 1) for x in tap]} MiB/s")
    res["throughput_mib_s"] = {"bridge": stats(bridge), "vxlan": stats(vxlan), "tap": stats(tap)}
    res["ratio_bridge_tap"] = statistics.median(bridge) / statistics.median(tap)
    res["ratio_vxlan_tap"] = statistics.median(vxlan) / statistics.median(tap)
    return port


def reconcile(api, a, res, made, net, host, password):
    """Section 3."""
    # 3. reconcile of N ports
    t0 = time.monotonic()
    for i in range(a.ports):
        # Owned by a (pretend) server, so each gets its filter table.
        p = api.json("POST", "/network/v2.0/ports", {"port": {
            "network_id": net["id"], "binding:host_id": host, "name": f"nb{i}",
            "device_owner": "compute:nova", "device_id": str(uuid.uuid4())}})["port"]
        made["ports"].append(p["id"])
    res["create_ports_s"] = time.monotonic() - t0
    log(f"{a.ports} ports created in {res['create_ports_s']:.1f} s")
    warm, cold = [], []
    for _ in range(a.reconciles):
        restart_daemon(a.ctl, api, password)
        time.sleep(1)
        warm.append(reconcile_log(a.ctl))
        l1(a.ctl, "for t in $(nft list tables | awk '/nubo_p_/ {print $3}'); do "
                  "nft delete table bridge $t; done")
        restart_daemon(a.ctl, api, password)
        time.sleep(1)
        cold.append(reconcile_log(a.ctl))
    out, _ = l1(a.ctl, "nft -j list ruleset")
    rules = sum(1 for o in json.loads(out)["nftables"] if "rule" in o and
                o["rule"]["table"].startswith("nubo_"))
    tables, _ = l1(a.ctl, "nft list tables | grep -c nubo_p_")
    res["reconcile"] = {"ports": a.ports, "warm": warm, "cold": cold,
                        "nft_rules": rules, "port_tables": int(tables.strip() or 0)}
    log(f"reconcile warm (changes, ms): {warm}; cold: {cold}; {rules} rules in "
        f"{tables.strip()} port tables")


def cleanup(api, made, flavor):
    """Deletes everything the benchmark made."""
    for sid in made["servers"]:
        api.call("DELETE", f"/compute/v2.1/servers/{sid}", ok=(204, 404))
    time.sleep(3)
    for pid in made["ports"]:
        api.call("DELETE", f"/network/v2.0/ports/{pid}", ok=(204, 404, 409))
    for rid in made["routers"]:
        api.call("PUT", f"/network/v2.0/routers/{rid}", {"router": {"external_gateway_info": {}}},
                 ok=(200, 404, 409))
        for sub_id in made.get("subnets", []):
            api.call("PUT", f"/network/v2.0/routers/{rid}/remove_router_interface",
                     {"subnet_id": sub_id}, ok=(200, 404, 400, 409))
        api.call("DELETE", f"/network/v2.0/routers/{rid}", ok=(204, 404, 409))
    for nid in made["networks"]:
        api.call("DELETE", f"/network/v2.0/networks/{nid}", ok=(204, 404, 409))
    for iid in made["images"]:
        api.call("DELETE", f"/image/v2/images/{iid}", ok=(204, 404))
    api.call("DELETE", f"/compute/v2.1/flavors/{flavor}", ok=(202, 204, 404))




if __name__ == "__main__":
    main()
