#!/usr/bin/env python3
"""Orchestrator benchmark: the `nubo` daemon's OpenStack APIs end to end.

Three measurements, all by polling the API directly (never the CLI's
`--wait`, which polls every 5 s):

1. create -> readiness, sequential (>= 10 runs): `POST /servers` until the
   guest's readiness line shows in `os-getConsoleOutput`, and until
   `GET /servers/{id}` says ACTIVE; polled every --poll-ms (5 ms). Each
   server is deleted afterwards (until its GET answers 404; also timed).
   Reported: median, min, p90, max. The comparison is OpenStack's Rally
   `NovaServers.boot_and_delete_server` median of 8.6 s (the issue's figure);
   the target is <= 1 s.
2. 20 concurrent creates: 20 threads POST at once (a barrier), each then
   polls its own server until it leaves BUILD and its readiness line shows.
   Reported: all ACTIVE yes/no, time from the POSTs to the last ACTIVE and to
   the last readiness line. Then all are deleted.
3. list at 1000 servers: 1000 servers in the daemon's database, then 200x
   `GET /servers/detail` (Nova's default page is 1000, so each answer holds
   all of them), p50/p99/max latency and body size, plus
   `GET /servers/detail?limit=100` and `GET /servers` (brief). Target: p99
   <= 50 ms. The servers are real (created in batches of 20 with
   `max_count`) unless that takes more than --real-budget-s or fails; then
   the rest are seeded as SHUTOFF rows straight into STATE/nubo.db (daemon
   stopped) and the output says so.

Modes:

  --guest tiny (default): starts its own daemon on this host, with the tiny
    guest (`nubo-vmm tiny-guest --then halt`, a ~400-byte PVH ELF that prints
    NUBO-TINY-READY and halts its vCPU) as --default-kernel and a 1 MiB raw
    image as the boot disk. This measures the orchestrator and the VMM start,
    not a Linux boot. Everything it started is killed and its state
    directory removed at the end, also on Ctrl-C and errors.

  --guest linux --api URL [--ctl URL] [--password PW]: against a running
    daemon (tests/testbed/serve.sh: L1 with the daemon, API and control
    forwarded to the host). Uploads guest/out/rootfs.ext4 as a raw image
    with os_command_line "console=ttyS0 root=/dev/vda rw quiet nubo.then=halt",
    waits for NUBO-GUEST-READY. The admin password comes from --password or
    from admin-openrc read through the control endpoint. The project's quota
    is lifted through the API; with --restart-daemon (needs --ctl) the daemon
    is restarted with --cpu-allocation-ratio 16 --shutdown-timeout 1 so that
    20 servers fit in a 2-vCPU L1. The 1000-server list is skipped unless
    --list-servers is given.

Usage: bench/orchestrator.py [--guest tiny|linux] [--runs N] [--concurrent N]
         [--list-servers N] [--list-requests N] [--json FILE] ...
"""
import argparse
import glob
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RALLY_MEDIAN_S = 8.6     # OpenStack + Rally boot_and_delete_server median (the issue)
TARGET_READY_S = 1.0     # create -> guest running
TARGET_LIST_P99_MS = 50  # GET /servers/detail at 1000 servers
GUEST_CMDLINE = "console=ttyS0 root=/dev/vda rw quiet nubo.then=halt"
READY = {"tiny": "NUBO-TINY-READY", "linux": "NUBO-GUEST-READY"}

# No proxies: the daemon is on 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class ApiError(Exception):
    def __init__(self, status, method, path, body):
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]!r}")
        self.status = status


class Api:
    """A minimal OpenStack client over urllib (one connection per request)."""

    def __init__(self, base):
        self.base = base.rstrip("/")
        self.token = None

    def call(self, method, path, body=None, raw=None, ctype=None, ok=(200, 201, 202, 204),
             timeout=60):
        """Returns (status, headers, body bytes); raises ApiError outside `ok`."""
        data = None
        headers = {"Accept": "application/json"}
        if self.token:
            headers["X-Auth-Token"] = self.token
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = ctype or "application/octet-stream"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with OPENER.open(req, timeout=timeout) as r:
                status, hdrs, out = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, out = e.code, e.headers, e.read()
        if status not in ok:
            raise ApiError(status, method, path, out)
        return status, hdrs, out

    def json(self, method, path, body=None, ok=(200, 201, 202, 204)):
        _, _, out = self.call(method, path, body=body, ok=ok)
        return json.loads(out) if out else None

    def auth(self, password, user="admin", project="admin", domain="Default"):
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": domain}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": domain}}}}}
        _, hdrs, out = self.call("POST", "/identity/v3/auth/tokens", body=body)
        self.token = hdrs["X-Subject-Token"]
        tok = json.loads(out)["token"]
        return tok["project"]["id"], tok["user"]["id"]


# ------------------------------------------------------------------ helpers

def pct(samples, p):
    """The p-th percentile (inclusive method; the max for p=100)."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0]
    return statistics.quantiles(s, n=100, method="inclusive")[p - 1] if p < 100 else s[-1]


def summary(samples):
    return {"n": len(samples), "median": statistics.median(samples), "min": min(samples),
            "p90": pct(samples, 90), "p99": pct(samples, 99), "max": max(samples)}


def server_status(api, sid):
    """The server's status, or None once it is gone (404)."""
    st, _, out = api.call("GET", f"/compute/v2.1/servers/{sid}", ok=(200, 404))
    if st == 404:
        return None, None
    s = json.loads(out)["server"]
    return s["status"], s.get("fault")


def console(api, sid):
    """The console text, or None while the server cannot answer yet."""
    st, _, out = api.call("POST", f"/compute/v2.1/servers/{sid}/action",
                          body={"os-getConsoleOutput": {}}, ok=(200, 409, 404))
    if st != 200:
        return None
    return json.loads(out).get("output") or ""


def watch(api, sid, t0, ready, poll_s, timeout_s):
    """Polls one server from t0 until it is ACTIVE and its console shows
    `ready`, or it is ERROR. Returns dict(active_s, ready_s, status, fault)."""
    active_at = ready_at = None
    status = "BUILD"
    fault = None
    deadline = t0 + timeout_s
    while time.perf_counter() < deadline:
        if active_at is None:
            status, fault = server_status(api, sid)
            now = time.perf_counter()
            if status == "ACTIVE":
                active_at = now - t0
            elif status not in ("BUILD",):
                break
        if ready_at is None:
            out = console(api, sid)
            if out is not None and ready in out:
                ready_at = time.perf_counter() - t0
        if active_at is not None and ready_at is not None:
            break
        time.sleep(poll_s)
    return {"id": sid, "active_s": active_at, "ready_s": ready_at, "status": status,
            "fault": fault}


def delete_and_wait(api, sid, poll_s, timeout_s=60):
    t0 = time.perf_counter()
    api.call("DELETE", f"/compute/v2.1/servers/{sid}", ok=(204, 404))
    while time.perf_counter() - t0 < timeout_s:
        st, _ = server_status(api, sid)
        if st is None:
            return time.perf_counter() - t0
        time.sleep(poll_s)
    raise RuntimeError(f"server {sid} not gone {timeout_s} s after DELETE")


def create(api, name, image, flavor, max_count=None):
    srv = {"name": name, "imageRef": image, "flavorRef": flavor, "networks": "none"}
    if max_count:
        srv["min_count"] = 1
        srv["max_count"] = max_count
    return api.json("POST", "/compute/v2.1/servers", {"server": srv})["server"]["id"]


def list_all(api, query=""):
    """All servers (following the pages)."""
    out = []
    path = "/compute/v2.1/servers/detail" + query
    while path:
        body = api.json("GET", path)
        out += body["servers"]
        nxt = [l["href"] for l in body.get("servers_links", []) if l.get("rel") == "next"]
        path = nxt[0][nxt[0].index("/compute/"):] if nxt else None
    return out


# ------------------------------------------------------------------ the daemon (tiny mode)

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    """A `nubo serve` of our own, with a short state dir; kills everything on close."""

    def __init__(self, args):
        self.args = args
        self.state = tempfile.mkdtemp(prefix="nbench-", dir="/tmp")
        self.port = free_port()
        self.proc = None
        self.password = "bench-" + uuid.uuid4().hex[:12]
        self.kernel = os.path.join(self.state, "tiny.elf")
        self.logf = None
        self.starts = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def prepare(self):
        # Private copies: other builds may replace target/release meanwhile.
        bindir = os.path.join(self.state, "bin")
        os.mkdir(bindir)
        for name in ("nubo", "nubo_vmm"):
            dst = os.path.join(bindir, os.path.basename(getattr(self.args, name)))
            shutil.copy2(getattr(self.args, name), dst)
            setattr(self, name, dst)
        subprocess.run([self.nubo_vmm, "tiny-guest", "--out", self.kernel, "--then", "halt"],
                       check=True, stdout=subprocess.DEVNULL)

    def start(self):
        a = self.args
        cmd = [self.nubo, "serve", "--state-dir", self.state, "--listen", f"127.0.0.1:{self.port}",
               "--vmm", self.nubo_vmm, "--default-kernel", self.kernel,
               "--shutdown-timeout", "1", "--cpu-allocation-ratio", str(a.cpu_allocation_ratio),
               "--quota-instances=-1", "--quota-cores=-1", "--quota-ram=-1"]
        env = dict(os.environ, NUBO_ADMIN_PASSWORD=self.password,
                   NUBO_LOG=os.environ.get("NUBO_LOG", "warn"))
        self.logf = open(os.path.join(self.state, "nubo.log"), "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)
        self.starts += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nubo exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nubo did not listen within 30 s: {self.log_tail()}")

    def log_tail(self, n=1500):
        try:
            with open(os.path.join(self.state, "nubo.log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """Stops the daemon (the VMMs keep running, as in production)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.logf:
            self.logf.close()
            self.logf = None

    def vmm_pids(self, only_vmm=False):
        """Pids of the processes of this state dir: the VMMs' pid files, plus
        any process whose command line names the state dir (with only_vmm,
        just the nubo-vmm ones)."""
        pids = set()
        inst = os.path.join(self.state, "instances")
        if os.path.isdir(inst):
            for d in os.listdir(inst):
                try:
                    with open(os.path.join(inst, d, "vmm.pid")) as f:
                        pids.add(int(f.read().strip()))
                except (OSError, ValueError):
                    pass
        me = os.getpid()
        for p in os.listdir("/proc"):
            if p.isdigit() and int(p) != me:
                try:
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        if self.state.encode() in f.read():
                            pids.add(int(p))
                except OSError:
                    pass
        ours = set()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cl = f.read()
                if self.state.encode() in cl and (  # never a reused pid
                        not only_vmm or b"nubo-vmm" in cl.split(b"\0")[0]):
                    ours.add(pid)
            except OSError:
                pass
        return ours

    def kill_vmms(self):
        for _ in range(50):
            pids = self.vmm_pids()
            if not pids:
                return 0
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        return len(self.vmm_pids())

    def close(self):
        self.stop()
        left = self.kill_vmms()
        if left:
            log(f"warning: {left} processes of {self.state} would not die")
        shutil.rmtree(self.state, ignore_errors=True)

    def running_vmms(self):
        return len(self.vmm_pids())


# ------------------------------------------------------------------ the benchmarks

def bench_sequential(api, image, flavor, ready, runs, poll_s, timeout_s):
    res = []
    for i in range(runs):
        t0 = time.perf_counter()
        sid = create(api, f"bench-seq-{i}", image, flavor)
        post_s = time.perf_counter() - t0
        w = watch(api, sid, t0, ready, poll_s, timeout_s)
        w["post_s"] = post_s
        w["delete_s"] = delete_and_wait(api, sid, poll_s)
        res.append(w)
        log(f"  run {i + 1}/{runs}: POST {post_s * 1000:.1f} ms, ACTIVE "
            f"{fmt_s(w['active_s'])}, ready {fmt_s(w['ready_s'])}, delete {w['delete_s'] * 1000:.0f} ms"
            + (f" [{w['status']}: {w['fault']}]" if w["ready_s"] is None else ""))
        if w["ready_s"] is None:
            raise RuntimeError(f"server {sid} never showed {ready!r} (status {w['status']}, "
                               f"fault {w['fault']})")
    return res


def fmt_s(v):
    return "-" if v is None else f"{v * 1000:.0f} ms"


def bench_concurrent(api, image, flavor, ready, n, poll_s, timeout_s):
    barrier = threading.Barrier(n + 1)
    t0_box = {}

    def one(i):
        barrier.wait()
        t0 = t0_box["t0"]
        sid = create(api, f"bench-conc-{i}", image, flavor)
        post_s = time.perf_counter() - t0
        w = watch(api, sid, t0, ready, poll_s, timeout_s)
        w["post_s"] = post_s
        return w

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        futs = [ex.submit(one, i) for i in range(n)]
        t0_box["t0"] = time.perf_counter()
        barrier.wait()
        results = []
        errors = []
        for f in futs:
            try:
                results.append(f.result())
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(str(e))
    actives = [r["active_s"] for r in results if r["active_s"] is not None]
    readies = [r["ready_s"] for r in results if r["ready_s"] is not None]
    out = {
        "n": n, "created": len(results), "errors": errors,
        "active": len(actives), "ready": len(readies),
        "all_active": len(actives) == n and not errors,
        "last_post_s": max((r["post_s"] for r in results), default=None),
        "first_active_s": min(actives, default=None),
        "last_active_s": max(actives, default=None),
        "median_active_s": statistics.median(actives) if actives else None,
        "last_ready_s": max(readies, default=None) if len(readies) == n else None,
        "median_ready_s": statistics.median(readies) if readies else None,
        "not_active": [{"id": r["id"], "status": r["status"], "fault": r["fault"]}
                       for r in results if r["active_s"] is None],
        "poll_ms": poll_s * 1000,
    }
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        list(ex.map(lambda r: delete_and_wait(api, r["id"], 0.02), results))
    out["delete_all_s"] = time.perf_counter() - t
    return out


def fill_real(api, image, flavor, want, batch, budget_s, log_every=100):
    """Creates servers in batches of `batch` (max_count) until `want` exist
    and have left BUILD, or the budget runs out. Returns (active, elapsed_s, error)."""
    t0 = time.perf_counter()
    err = None
    i = 0
    while True:
        servers = list_all(api)
        have = len(servers)
        building = sum(1 for s in servers if s["status"] == "BUILD")
        errored = [s for s in servers if s["status"] == "ERROR"]
        active = sum(1 for s in servers if s["status"] == "ACTIVE")
        if errored:
            err = f"{len(errored)} servers in ERROR, e.g. {errored[0].get('fault')}"
            break
        if have >= want and building == 0:
            break
        if time.perf_counter() - t0 > budget_s:
            err = f"over the {budget_s:.0f} s budget with {active} ACTIVE"
            break
        if have < want and building < batch * 2:
            n = min(batch, want - have)
            try:
                create(api, f"bench-list-{i}", image, flavor, max_count=n)
            except ApiError as e:
                err = str(e)
                break
            i += 1
            if have // log_every != (have + n) // log_every:
                log(f"  {have + n} servers requested, {active} ACTIVE, "
                    f"{time.perf_counter() - t0:.0f} s")
        else:
            time.sleep(0.05)
    return active, time.perf_counter() - t0, err


def seed_rows(db_path, n, project_id, user_id, image, flavor):
    """Inserts n SHUTOFF servers (no VMM) the way the API would have created them."""
    conn = sqlite3.connect(db_path)
    try:
        fl = conn.execute("SELECT vcpus, ram, disk FROM flavors WHERE id = ?", (flavor,)).fetchone()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows = [(str(uuid.uuid4()), f"bench-seed-{i}", project_id, user_id, image, flavor,
                 fl[0], fl[1], fl[2], "SHUTOFF", None, 4, None, "{}", socket.gethostname(),
                 now, now, now) for i in range(n)]
        conn.executemany(
            "INSERT INTO servers (id, name, project_id, user_id, image_id, flavor_id, vcpus, ram, "
            "disk, status, task_state, power_state, fault, metadata, host, created_at, updated_at, "
            "launched_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        conn.commit()
    finally:
        conn.close()


def time_gets(api, path, n):
    lat, sizes, counts = [], [], []
    for _ in range(n):
        t = time.perf_counter()
        _, _, out = api.call("GET", path)
        lat.append((time.perf_counter() - t) * 1000)
        sizes.append(len(out))
        counts.append(len(json.loads(out)["servers"]))
    s = summary(lat)
    s.update(bytes=statistics.median(sizes), servers=statistics.median(counts), requests=n)
    return s


# ------------------------------------------------------------------ setup

def setup_cloud(api, args, ready_mode, disk_file, props):
    fl_name = f"bench-{uuid.uuid4().hex[:8]}"
    flavor = api.json("POST", "/compute/v2.1/flavors", {"flavor": {
        "name": fl_name, "ram": args.ram, "vcpus": 1, "disk": 0, "id": None}})["flavor"]["id"]
    body = {"name": f"bench-{ready_mode}", "disk_format": "raw", "container_format": "bare"}
    body.update(props)
    image = api.json("POST", "/image/v2/images", body)["id"]
    with open(disk_file, "rb") as f:
        data = f.read()
    api.call("PUT", f"/image/v2/images/{image}/file", raw=data, timeout=600)
    st = api.json("GET", f"/image/v2/images/{image}")["status"]
    if st != "active":
        raise RuntimeError(f"image {image} is {st} after the upload")
    return flavor, image


def ctl_exec(ctl, script):
    req = urllib.request.Request(ctl.rstrip("/") + "/cgi-bin/exec", data=script.encode(),
                                 method="POST")
    with OPENER.open(req, timeout=120) as r:
        return r.read().decode(errors="replace")


def stage_bench_scenario(scenario, out):
    """Stages a bench/testbed-scenarios/ scenario for tests/testbed/run.sh in
    OUT/scenarios, with the bench rootfs (fio, iperf3: guest/bench-build.sh)
    and loop.ko next to it; returns that directory."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    img = subprocess.run([os.path.join(root, "guest/bench-build.sh")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    scen = os.path.join(out, "scenarios")
    shutil.rmtree(scen, ignore_errors=True)
    os.makedirs(scen)
    shutil.copy(os.path.join(root, f"bench/testbed-scenarios/{scenario}.sh"), scen)
    shutil.copy(img, os.path.join(scen, "bench-rootfs.ext4"))
    loops = glob.glob(os.path.join(root, "guest/out/modules/lib/modules/*/kernel/drivers/block/loop.ko"))
    if loops:
        shutil.copy(loops[0], scen)
    return scen


def run_bench_scenario(scenario, out, l1_mem, params=None):
    """Stages `scenario` (stage_bench_scenario, plus `params`, if given, as a
    `bench-params` file next to it for the scenario to source) and runs it in
    the testbed (TESTBED_TIMEOUT and TESTBED_L1_MEM from the environment win);
    returns the console log's path, which holds whatever results made it there
    also when the run failed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scen = stage_bench_scenario(scenario, out)
    if params is not None:
        with open(os.path.join(scen, "bench-params"), "w") as f:
            f.write(params)
    env = dict(os.environ, TESTBED_SCENARIO_DIR=scen, TESTBED_OUT=out,
               TESTBED_TIMEOUT=os.environ.get("TESTBED_TIMEOUT", "2400"),
               TESTBED_L1_MEM=os.environ.get("TESTBED_L1_MEM", l1_mem))
    rc = subprocess.run([os.path.join(root, "tests/testbed/run.sh"), scenario],
                        env=env, stdout=subprocess.DEVNULL).returncode
    log_path = os.path.join(out, "console.log")
    if rc != 0:
        print(f"testbed run failed (rc={rc}); see {log_path}", file=sys.stderr)
    return log_path


def tiny_disk(path, size=1 << 20):
    """A raw disk that no format probe mistakes for anything: a text pattern."""
    pat = b"nubo bench raw disk\n"
    with open(path, "wb") as f:
        f.write((pat * (size // len(pat) + 1))[:size])


# ------------------------------------------------------------------ output

def print_tables(res):
    seq = res.get("sequential")
    if seq:
        r, a = seq["ready_s"], seq["active_s"]
        print(f"### create -> readiness ({res['guest']} guest, {seq['runs']} sequential runs, "
              f"poll {seq['poll_ms']:g} ms)\n")
        print("| measure | median s | min s | p90 s | max s |")
        print("|---|---|---|---|---|")
        print(f"| POST answered (202) | {seq['post_s']['median']:.3f} | {seq['post_s']['min']:.3f} "
              f"| {seq['post_s']['p90']:.3f} | {seq['post_s']['max']:.3f} |")
        print(f"| POST -> ACTIVE | {a['median']:.3f} | {a['min']:.3f} | {a['p90']:.3f} | {a['max']:.3f} |")
        print(f"| POST -> `{res['ready_line']}` on the console | {r['median']:.3f} | {r['min']:.3f} "
              f"| {r['p90']:.3f} | {r['max']:.3f} |")
        d = seq["delete_s"]
        print(f"| DELETE -> 404 | {d['median']:.3f} | {d['min']:.3f} | {d['p90']:.3f} | {d['max']:.3f} |")
        print(f"\nRally boot_and_delete_server median {RALLY_MEDIAN_S} s: nubo create->ready "
              f"median is {r['median'] / RALLY_MEDIAN_S:.4f}x of it "
              f"({RALLY_MEDIAN_S / r['median']:.0f}x faster); target <= {TARGET_READY_S} s: "
              f"{'met' if r['median'] <= TARGET_READY_S else 'NOT met'} "
              f"(p90 {r['p90']:.3f} s).\n")
    c = res.get("concurrent")
    if c:
        f3 = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"### {c['n']} concurrent creates (poll {c['poll_ms']:g} ms per server)\n")
        print("| all ACTIVE | last POST answered s | first ACTIVE s | median ACTIVE s | last ACTIVE s "
              "| median ready s | last ready s | delete all s |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {'yes' if c['all_active'] else 'NO'} ({c['active']}/{c['n']}) | {f3(c['last_post_s'])} "
              f"| {f3(c['first_active_s'])} | {f3(c['median_active_s'])} | {f3(c['last_active_s'])} "
              f"| {f3(c['median_ready_s'])} | {f3(c['last_ready_s'])} | {f3(c['delete_all_s'])} |")
        if c["errors"] or c["not_active"]:
            print(f"\nerrors: {c['errors'][:3]} not active: {c['not_active'][:3]}")
        print()
    lst = res.get("list")
    if lst:
        print(f"### list at {lst['servers']} servers ({lst['how']})\n")
        print("| request | requests | servers returned | p50 ms | p99 ms | max ms | body bytes |")
        print("|---|---|---|---|---|---|---|")
        for key, label in [("detail", "GET /servers/detail"),
                           ("detail_limit100", "GET /servers/detail?limit=100"),
                           ("brief", "GET /servers")]:
            s = lst[key]
            print(f"| `{label}` | {s['requests']} | {s['servers']:.0f} | {s['median']:.2f} "
                  f"| {s['p99']:.2f} | {s['max']:.2f} | {s['bytes']:.0f} |")
        p99 = lst["detail"]["p99"]
        print(f"\ntarget p99 <= {TARGET_LIST_P99_MS} ms at 1000 servers: "
              f"{'met' if p99 <= TARGET_LIST_P99_MS else 'NOT met'} "
              f"(p99 {p99:.2f} ms = {p99 / TARGET_LIST_P99_MS:.2f}x of the target).")
        if lst.get("fill_s") is not None:
            print(f"Filling: {lst['real']} real servers in {lst['fill_s']:.1f} s"
                  + (f", {lst['seeded']} seeded rows ({lst['fill_error']})" if lst["seeded"] else "")
                  + (f"; {lst['vmms']} nubo-vmm processes, their RSS {lst['vmm_rss_mib']:.0f} MiB in all"
                     if lst.get("vmms") else "")
                  + (f"; while the lists ran, all VMMs together used {lst['vmm_cpu_share'] * 100:.1f}% "
                     "of one CPU" if lst.get("vmm_cpu_share") is not None else "") + ".")
        print()


def cpu_s(pids):
    """utime + stime of these processes, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def vmm_rss_mib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest", choices=["tiny", "linux"], default="tiny")
    ap.add_argument("--runs", type=int, default=10, help="sequential create->ready runs")
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--list-servers", type=int, default=None,
                    help="servers for the list test (tiny: 1000; linux: 0 = skip)")
    ap.add_argument("--list-requests", type=int, default=200)
    ap.add_argument("--seed-only", action="store_true",
                    help="list test: seed rows directly, do not try real servers")
    ap.add_argument("--real-budget-s", type=float, default=300,
                    help="give up on real servers for the list test after this long")
    ap.add_argument("--batch", type=int, default=20, help="max_count of one create in the fill")
    ap.add_argument("--poll-ms", type=float, default=5)
    ap.add_argument("--concurrent-poll-ms", type=float, default=5)
    ap.add_argument("--timeout-s", type=float, default=None, help="per server (tiny 30, linux 300)")
    ap.add_argument("--ram", type=int, default=None, help="flavor MiB (tiny 16, linux 64)")
    ap.add_argument("--cpu-allocation-ratio", type=float, default=1000)
    ap.add_argument("--skip", default="", help="comma list of: sequential,concurrent,list")
    ap.add_argument("--nubo", default=os.path.join(ROOT, "target/release/nubo"))
    ap.add_argument("--nubo-vmm", default=os.path.join(ROOT, "target/release/nubo-vmm"))
    ap.add_argument("--api", help="linux mode: the daemon's URL")
    ap.add_argument("--ctl", help="linux mode: the testbed's control URL")
    ap.add_argument("--password", help="linux mode: admin password (else admin-openrc via --ctl)")
    ap.add_argument("--restart-daemon", action="store_true",
                    help="linux mode: restart the L1 daemon with room for 20 servers (needs --ctl)")
    ap.add_argument("--rootfs", default=os.path.join(ROOT, "guest/out/rootfs.ext4"))
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()
    linux = args.guest == "linux"
    if args.list_servers is None:
        args.list_servers = 0 if linux else 1000
    args.timeout_s = args.timeout_s or (300 if linux else 30)
    args.ram = args.ram or (64 if linux else 16)
    skip = set(filter(None, args.skip.split(",")))
    ready = READY[args.guest]

    # SIGTERM behaves like Ctrl-C: the finally below cleans up.
    def on_term(*_):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_term)

    res = {"guest": args.guest, "ready_line": ready, "host_cpus": os.cpu_count(),
           "loadavg_start": os.getloadavg(),
           "rally_median_s": RALLY_MEDIAN_S, "target_ready_s": TARGET_READY_S,
           "target_list_p99_ms": TARGET_LIST_P99_MS}
    daemon = None
    try:
        if linux:
            if not args.api:
                ap.error("--guest linux needs --api URL (and --ctl URL or --password)")
            password = args.password
            if not password:
                if not args.ctl:
                    ap.error("--guest linux needs --password or --ctl")
                out = ctl_exec(args.ctl, 'cat "${NUBO_STATE_DIR:-/var/lib/nubo}/admin-openrc"')
                m = re.search(r"OS_PASSWORD=['\"]?([^'\"\n]+)", out)
                if not m:
                    raise RuntimeError(f"no OS_PASSWORD in admin-openrc: {out[:300]!r}")
                password = m.group(1)
            if args.restart_daemon:
                if not args.ctl:
                    ap.error("--restart-daemon needs --ctl")
                restart_l1_daemon(args, password)
            api = Api(args.api)
            project_id, user_id = api.auth(password)
            api.json("PUT", f"/compute/v2.1/os-quota-sets/{project_id}", {"quota_set": {
                "instances": -1, "cores": -1, "ram": -1}})
            disk, props = args.rootfs, {"os_command_line": GUEST_CMDLINE}
        else:
            daemon = Daemon(args)
            daemon.prepare()
            daemon.start()
            api = Api(daemon.url)
            project_id, user_id = api.auth(daemon.password)
            disk = os.path.join(daemon.state, "disk.raw")
            tiny_disk(disk)
            props = {}
        res["api"] = api.base
        flavor, image = setup_cloud(api, args, args.guest, disk, props)
        res.update(flavor_ram_mib=args.ram, image=image, flavor=flavor)

        if "sequential" not in skip and args.runs > 0:
            log(f"create -> {ready}: {args.runs} sequential runs")
            runs = bench_sequential(api, image, flavor, ready, args.runs, args.poll_ms / 1000,
                                    args.timeout_s)
            res["sequential"] = {
                "runs": len(runs), "poll_ms": args.poll_ms,
                "ready_s": summary([r["ready_s"] for r in runs]),
                "active_s": summary([r["active_s"] for r in runs]),
                "post_s": summary([r["post_s"] for r in runs]),
                "delete_s": summary([r["delete_s"] for r in runs]),
                "samples": runs,
            }
            res["sequential"]["ratio_to_rally"] = res["sequential"]["ready_s"]["median"] / RALLY_MEDIAN_S

        if "concurrent" not in skip and args.concurrent > 0:
            log(f"{args.concurrent} concurrent creates")
            res["concurrent"] = bench_concurrent(api, image, flavor, ready, args.concurrent,
                                                 args.concurrent_poll_ms / 1000, args.timeout_s)
            log(f"  all ACTIVE: {res['concurrent']['all_active']}, last ACTIVE "
                f"{res['concurrent']['last_active_s']}, last ready {res['concurrent']['last_ready_s']}")

        if "list" not in skip and args.list_servers > 0:
            res["list"] = bench_list(api, args, daemon, image, flavor, project_id, user_id)
    finally:
        if daemon:
            log(f"cleaning up {daemon.state}")
            daemon.close()
    res["loadavg_end"] = os.getloadavg()
    print_tables(res)
    print(f"Host load average (1/5/15 min) at the start {res['loadavg_start']}, at the end "
          f"{res['loadavg_end']}, on {res['host_cpus']} CPUs.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")


def bench_list(api, args, daemon, image, flavor, project_id, user_id):
    want = args.list_servers
    lst = {"servers": want, "real": 0, "seeded": 0, "fill_s": None, "fill_error": None}
    if not args.seed_only:
        log(f"list: creating {want} real servers in batches of {args.batch} "
            f"(budget {args.real_budget_s:.0f} s)")
        active, fill_s, err = fill_real(api, image, flavor, want, args.batch, args.real_budget_s)
        lst.update(real=active, fill_s=fill_s, fill_error=err)
        log(f"  {active} ACTIVE after {fill_s:.1f} s" + (f" ({err})" if err else ""))
        if daemon:
            pids = daemon.vmm_pids(only_vmm=True)
            lst["vmms"] = len(pids)
            lst["vmm_rss_mib"] = vmm_rss_mib(pids)
    else:
        lst["fill_error"] = "--seed-only"
    have = len(list_all(api))
    if have < want:
        if not daemon:
            raise RuntimeError(f"only {have} servers and no local daemon to seed rows into")
        # Wait for the stragglers, then seed the rest with the daemon stopped.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                s["status"] == "BUILD" for s in list_all(api)):
            time.sleep(0.2)
        have = len(list_all(api))
        log(f"list: seeding {want - have} rows into nubo.db (daemon stopped)")
        daemon.stop()
        seed_rows(os.path.join(daemon.state, "nubo.db"), want - have, project_id, user_id,
                  image, flavor)
        lst["seeded"] = want - have
        daemon.start()
        api.auth(daemon.password)
    servers = list_all(api)
    lst["servers"] = len(servers)
    lst["status_counts"] = {}
    for s in servers:
        lst["status_counts"][s["status"]] = lst["status_counts"].get(s["status"], 0) + 1
    lst["how"] = ("real servers" if lst["seeded"] == 0 else
                  f"{lst['servers'] - lst['seeded']} real servers + {lst['seeded']} rows seeded "
                  "into nubo.db")
    log(f"list: {lst['servers']} servers ({lst['status_counts']}); "
        f"{args.list_requests}x GET /servers/detail")
    api.call("GET", "/compute/v2.1/servers/detail")  # warm-up
    lst["loadavg_before"] = os.getloadavg()
    vmms = daemon.vmm_pids(only_vmm=True) if daemon else set()
    cpu0, t0 = cpu_s(vmms), time.perf_counter()
    lst["detail"] = time_gets(api, "/compute/v2.1/servers/detail", args.list_requests)
    lst["detail_limit100"] = time_gets(api, "/compute/v2.1/servers/detail?limit=100",
                                       args.list_requests)
    lst["brief"] = time_gets(api, "/compute/v2.1/servers", args.list_requests)
    if vmms:
        # What the idle (halted) guests cost the host meanwhile.
        lst["vmm_cpu_share"] = (cpu_s(vmms) - cpu0) / (time.perf_counter() - t0)
    return lst


def restart_l1_daemon(args, password):
    """Restarts the testbed's daemon with room for 20 guests (nubo-start.sh's
    flags plus --cpu-allocation-ratio 16 --shutdown-timeout 1)."""
    port = args.api.rstrip("/").rsplit(":", 1)[-1]
    script = f"""
kill $(cat "$NUBO_PID_FILE") 2>/dev/null
for i in $(seq 50); do [ -d /proc/$(cat "$NUBO_PID_FILE") ] || break; sleep 0.2; done
NUBO_ADMIN_PASSWORD='{password}' setsid /testbed/bin/nubo serve --state-dir "$NUBO_STATE_DIR" \\
  --listen 0.0.0.0:8774 --vmm /testbed/bin/nubo-vmm --default-kernel /testbed/l2/bzImage \\
  --default-initrd /testbed/l2/initramfs.cpio.gz --public-url http://127.0.0.1:{port} \\
  --cpu-allocation-ratio 16 --shutdown-timeout 1 </dev/null >>"$NUBO_LOG_FILE" 2>&1 &
echo $! >"$NUBO_PID_FILE"
sleep 2; cat /proc/$(cat "$NUBO_PID_FILE")/cmdline | tr '\\0' ' '
"""
    log(ctl_exec(args.ctl, script).strip())


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
