#!/usr/bin/env python3
"""Volume creation benchmark (issue #12), in the testbed's L1 with the daemon
(serve mode; the lvm backend on the fixture's volume group nubo-vg).

Per backend (`file`, `lvm`), --runs times each, interleaved:
- empty: `POST /volumes {size: 1}` until `GET` says `available` (polled every
  10 ms), against the peer: the bare tool in L1 (`qemu-img create -f qcow2
  1G` for file, `lvcreate -T -V 1G` for lvm);
- from image: the same from a 1 GiB raw image (--data-mib of random data, the
  rest zeros), against the peer `qemu-img convert` of the same file (to a
  qcow2 file; none for lvm: qemu-img writes every zero onto an LV, which runs
  L1's tmpfs out of memory).
Prints a Markdown table: median ms with min-max, and nubo/peer ratios.

Usage: bench/volume.py --api URL --ctl URL [--runs 5] [--data-mib 256]
       (tests/testbed/serve.sh prints the two ports)
Everything it creates is deleted at the end.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from orchestrator import Api, ctl_exec, log  # noqa: E402


def l1(ctl, script):
    out = ctl_exec(ctl, script)
    body, _, last = out.rstrip("\n").rpartition("\n")
    status = int(last[5:]) if last.startswith("EXIT=") else -1
    return body, status


def l1_ms(ctl, script):
    """Runs `script` in L1, timed there (/proc/uptime: 10 ms steps); returns ms."""
    out, rc = l1(ctl, "read t0 _ </proc/uptime; "
                      f"{script} >/dev/null 2>&1 || echo FAILED; read t1 _ </proc/uptime; "
                      "echo MS=$(( (${t1%.*}${t1#*.} - ${t0%.*}${t0#*.}) * 10 ))")
    if "FAILED" in out or rc != 0:
        raise RuntimeError(f"L1: {script}: {out}")
    return int(out.strip().splitlines()[-1][3:])


def volume_ms(api, vpath, body):
    t0 = time.monotonic()
    v = api.json("POST", f"{vpath}/volumes", {"volume": body})["volume"]
    while True:
        st = api.json("GET", f"{vpath}/volumes/{v['id']}")["volume"]["status"]
        if st == "available":
            ms = (time.monotonic() - t0) * 1000
            break
        if st.startswith("error"):
            raise RuntimeError(f"volume {v['id']} went to {st}")
        time.sleep(0.01)
    api.call("DELETE", f"{vpath}/volumes/{v['id']}")
    while True:
        st, _, _ = api.call("GET", f"{vpath}/volumes/{v['id']}", ok=(200, 404))
        if st == 404:
            return ms
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data-mib", type=int, default=256)
    a = ap.parse_args()
    api = Api(a.api)
    pw_line, _ = l1(a.ctl, "grep OS_PASSWORD /var/lib/nubo/admin-openrc")
    project, _ = api.auth(pw_line.split("=", 1)[1].strip().strip("'"))
    vpath = f"/volume/v3/{project}"
    _, rc = l1(a.ctl, "lvm vgs nubo-vg")
    backends = ["file"] + (["lvm"] if rc == 0 else [])
    if "lvm" not in backends:
        log("no volume group nubo-vg in L1: file only")
    vtype = None
    if "lvm" in backends:
        vtype = api.json("POST", f"{vpath}/types",
                         {"volume_type": {"name": f"bench-lvm-{os.getpid()}"}})["volume_type"]
        api.json("POST", f"{vpath}/types/{vtype['id']}/extra_specs",
                 {"extra_specs": {"volume_backend_name": "lvm"}})
    # The image: --data-mib of random data, then zeros, 1 GiB in all.
    data = os.urandom(a.data_mib << 20) + bytes((1024 - a.data_mib) << 20)
    img = api.json("POST", "/image/v2/images", {"name": "bench-vol-img", "disk_format": "raw",
                                                 "container_format": "bare"})
    t0 = time.monotonic()
    api.call("PUT", f"/image/v2/images/{img['id']}/file", raw=data, timeout=900)
    log(f"uploaded the 1 GiB image in {time.monotonic() - t0:.1f} s")
    del data
    ipath = f"/var/lib/nubo/images/{img['id']}"
    res = {}
    try:
        for run in range(a.runs):
            for b in backends:
                body = {"size": 1}
                if b == "lvm":
                    body["volume_type"] = vtype["name"]
                res.setdefault((b, "empty", "nubo"), []).append(volume_ms(api, vpath, body))
                res.setdefault((b, "image", "nubo"), []).append(
                    volume_ms(api, vpath, dict(body, imageRef=img["id"])))
                if b == "file":
                    p = "/var/lib/nubo/bench-peer.qcow2"
                    res.setdefault((b, "empty", "peer"), []).append(
                        l1_ms(a.ctl, f"qemu-img create -q -f qcow2 {p} 1G"))
                    l1(a.ctl, f"rm -f {p}")
                    res.setdefault((b, "image", "peer"), []).append(
                        l1_ms(a.ctl, f"qemu-img convert -f raw -O qcow2 {ipath} {p}"))
                    l1(a.ctl, f"rm -f {p}")
                else:
                    lv = "nubo-vg/bench-peer"
                    res.setdefault((b, "empty", "peer"), []).append(
                        l1_ms(a.ctl, f"lvm lvcreate -q -T nubo-vg/nubo-pool -V 1G -n bench-peer"))
                    # No image peer for lvm: qemu-img onto an LV of the loop
                    # device writes every zero and runs L1's tmpfs out of memory.
                    l1(a.ctl, f"lvm lvremove -q -f {lv}")
            log(f"run {run + 1}/{a.runs} done")
    finally:
        api.call("DELETE", f"/image/v2/images/{img['id']}", ok=(204, 404))
        if vtype:
            api.call("DELETE", f"{vpath}/types/{vtype['id']}", ok=(202, 204, 404))
    print(f"### volume create, 1 GiB ({a.runs} runs; image: {a.data_mib} MiB of data + zeros)\n")
    print("| backend | source | nubo ms (min-max) | peer ms (min-max) | nubo/peer |")
    print("|---|---|---|---|---|")
    for b in backends:
        for src in ["empty", "image"]:
            n, p = res[(b, src, "nubo")], res.get((b, src, "peer"), [])
            mn = statistics.median(n)
            peer = ratio = "-"
            if p:
                mp = statistics.median(p)
                peer = f"{mp:.0f} ({min(p):.0f}-{max(p):.0f})"
                ratio = f"{mn / mp:.2f}" if mp else "-"
            print(f"| {b} | {src} | {mn:.0f} ({min(n):.0f}-{max(n):.0f}) | {peer} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
