#!/usr/bin/env python3
"""VMM start-up and memory benchmark, directly on this host's /dev/kvm.

Boots the same tiny guest (a PVH ELF that prints NUBO-TINY-READY on COM1 and
powers off) with nubo-vmm and with QEMU (-M microvm -enable-kvm), N times
each, alternating. Measures process start -> the guest's line on stdout
(wall clock) and the process's peak RSS (GNU time's %M, in separate runs). Prints a
Markdown table with medians, min, max and the nubo/QEMU ratios.

Usage: bench/startup.py [--runs N] [--nubo-vmm PATH] [--qemu PATH] [--json FILE]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

READY = b"NUBO-TINY-READY"
TIME = "/usr/bin/time"  # Debian package "time"


def peak_rss_kib(cmd):
    """Peak RSS of one run, measured by GNU time: a child forked from Python
    would carry Python's own high-water mark into ru_maxrss."""
    out = subprocess.run([TIME, "-f", "%M"] + cmd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False)
    return int(out.stderr.decode().strip().splitlines()[-1])


def run_once(cmd):
    """Returns (ms to the ready line, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    seen = None
    buf = b""
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        buf += chunk
        if seen is None and READY in buf:
            seen = (time.perf_counter() - start) * 1000
    rc = proc.wait()
    if seen is None:
        raise RuntimeError(f"{cmd[0]}: no ready line; output: {buf[-300:]!r}")
    return seen, rc


def summarize(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--nubo-vmm", default=os.path.join(root, "target/release/nubo-vmm"))
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--json")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="nubo-bench-")
    tiny = os.path.join(tmp, "tiny-pvh.elf")
    subprocess.run([args.nubo_vmm, "tiny-guest", "--pvh", "--out", tiny], check=True)

    nubo_cmd = [args.nubo_vmm, "run", "--kernel", tiny, "--memory", "128M", "--cpus", "1"]
    qemu_cmd = [args.qemu, "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on",
                "-enable-kvm", "-cpu", "host", "-m", "128M", "-smp", "1", "-nodefaults",
                "-no-user-config", "-nographic", "-serial", "stdio", "-kernel", tiny,
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"] if args.qemu else None

    results = {"nubo-vmm": {"ms": [], "rss_kib": []}}
    if qemu_cmd:
        results["qemu"] = {"ms": [], "rss_kib": []}
    # Warm the page cache for both binaries.
    run_once(nubo_cmd)
    if qemu_cmd:
        run_once(qemu_cmd)
    for _ in range(args.runs):
        for name, cmd in (("nubo-vmm", nubo_cmd), ("qemu", qemu_cmd)):
            if cmd is None:
                continue
            ms, rc = run_once(cmd)
            if name == "nubo-vmm" and rc != 0:
                raise RuntimeError(f"nubo-vmm exited {rc}")
            results[name]["ms"].append(ms)
            results[name]["rss_kib"].append(peak_rss_kib(cmd))
    shutil.rmtree(tmp, ignore_errors=True)

    summary = {n: {"ms": summarize(r["ms"]), "rss_kib": summarize(r["rss_kib"])}
               for n, r in results.items()}
    print(f"VMM start-up to the tiny guest's first line, {args.runs} runs each, "
          f"1 vCPU, 128 MiB, this host's /dev/kvm\n")
    print("| VMM | median ms | min ms | max ms | peak RSS MiB (median) |")
    print("|---|---|---|---|---|")
    for n, s in summary.items():
        print(f"| {n} | {s['ms']['median']:.1f} | {s['ms']['min']:.1f} | "
              f"{s['ms']['max']:.1f} | {s['rss_kib']['median'] / 1024:.1f} |")
    if "qemu" in summary:
        t = summary["nubo-vmm"]["ms"]["median"] / summary["qemu"]["ms"]["median"]
        m = summary["nubo-vmm"]["rss_kib"]["median"] / summary["qemu"]["rss_kib"]["median"]
        print(f"\nRatio nubo-vmm/QEMU: start-up {t:.2f}x, peak RSS {m:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
