#!/usr/bin/env python3
"""Control API start-up benchmark, directly on this host's /dev/kvm.

Starts `nubo-vmm run --api-socket PATH` with the tiny guest built with
`--then halt` (it prints its line and halts, so the VMM stays up), N times.
Polls the socket from the moment the process is spawned (a connect attempt
every ~0.2 ms) with a minimal HTTP/1.1 `GET /vm` spoken directly over
AF_UNIX, and measures wall clock from process start to:

- the first 200 answer to `GET /vm`, whatever the state it reports (the
  socket is bound before the VM is built, so this answer usually says
  "starting"); this is the figure comparable to Firecracker's
  api_server.process_startup_time_us;
- the first 200 answer that reports "running" (the VM is built and its
  vCPUs started).

After each run the VMM is stopped with `PUT /vm/stop` and must exit with
status 0. Prints a Markdown table with medians, min and max.

Usage: bench/api_startup.py [--runs N] [--nubo-vmm PATH] [--json FILE]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

POLL_S = 0.0002  # between connect attempts
TIMEOUT_S = 10.0


def http(path_sock, method, path):
    """One HTTP/1.1 request over a Unix socket; returns (status, body bytes).
    Raises OSError when the socket is not there or not accepting yet."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path_sock)
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
                  f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ConnectionError(f"not an HTTP answer: {buf[:200]!r}")
    return int(parts[1]), body


def get_vm(sock):
    """(status, state or None) of one GET /vm."""
    status, body = http(sock, "GET", "/vm")
    state = None
    if status == 200:
        state = json.loads(body).get("state")
    return status, state


def run_once(cmd, sock):
    """Returns (ms to the first 200, its state, ms to the first 'running')."""
    if os.path.exists(sock):
        os.unlink(sock)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    first = first_state = running = None
    try:
        while running is None:
            now = time.perf_counter()
            if now - start > TIMEOUT_S:
                raise RuntimeError("the API did not report 'running' within "
                                   f"{TIMEOUT_S} s")
            if proc.poll() is not None:
                raise RuntimeError(f"nubo-vmm exited {proc.returncode} early: "
                                   f"{proc.stderr.read().decode()[-300:]}")
            try:
                status, state = get_vm(sock)
            except OSError:
                time.sleep(POLL_S)
                continue
            t = (time.perf_counter() - start) * 1000
            if status != 200:
                raise RuntimeError(f"GET /vm answered {status}")
            if first is None:
                first, first_state = t, state
            if state == "running":
                running = t
            else:
                time.sleep(POLL_S)
        status, _ = http(sock, "PUT", "/vm/stop")
        if status != 204:
            raise RuntimeError(f"PUT /vm/stop answered {status}")
        rc = proc.wait(timeout=TIMEOUT_S)
        if rc != 0:
            raise RuntimeError(f"nubo-vmm exited {rc} after PUT /vm/stop: "
                               f"{proc.stderr.read().decode()[-300:]}")
        if os.path.exists(sock):
            raise RuntimeError("nubo-vmm left its API socket behind")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return first, first_state, running


def summarize(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--nubo-vmm", default=os.path.join(root, "target/release/nubo-vmm"))
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    tmp = tempfile.mkdtemp(prefix="nubo-bench-")
    try:
        tiny = os.path.join(tmp, "tiny-halt.elf")
        sock = os.path.join(tmp, "vm.sock")
        subprocess.run([args.nubo_vmm, "tiny-guest", "--pvh", "--then", "halt",
                        "--out", tiny], check=True)
        cmd = [args.nubo_vmm, "run", "--kernel", tiny, "--memory", "128M", "--cpus", "1",
               "--serial", "off", "--api-socket", sock]
        run_once(cmd, sock)  # warm the page cache
        first, running, states = [], [], {}
        for _ in range(args.runs):
            f, state, r = run_once(cmd, sock)
            first.append(f)
            running.append(r)
            states[state] = states.get(state, 0) + 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {"first_200": summarize(first), "running": summarize(running),
               "first_200_states": states}
    seen = ", ".join(f"{n}× {s}" for s, n in sorted(states.items()))
    print(f"nubo-vmm process start to the API socket answering GET /vm with 200, "
          f"{args.runs} runs, tiny guest (--then halt), 1 vCPU, 128 MiB, "
          f"this host's /dev/kvm\n")
    print("| GET /vm answers 200 | median ms | min ms | max ms |")
    print("|---|---|---|---|")
    for label, key in ((f"first answer (state then: {seen})", "first_200"),
                       ('first answer with state "running"', "running")):
        s = summary[key]
        print(f"| {label} | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    print("\nFirecracker reports ≈12 ms wall (api_server.process_startup_time_us, "
          "typically) for the same")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
