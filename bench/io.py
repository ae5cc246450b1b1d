#!/usr/bin/env python3
"""Device I/O benchmark in the testbed: nubo-vmm vs QEMU+KVM in the same L1
VM (QEMU/TCG, nested SVM), same kernel, initramfs and bench rootfs, 1 vCPU,
512 MiB. fio on a raw virtio-blk disk (a file in L1's tmpfs) and iperf3
between the guest and L1 over virtio-net on a TAP; L1's own fio on the same
file (loop device) is the ceiling.

Builds guest/out/bench/rootfs.ext4 (guest/bench-build.sh), stages it with
bench/testbed-scenarios/io-vs-qemu.sh and loop.ko in target/bench-io/scenarios,
runs tests/testbed/run.sh io-vs-qemu (TESTBED_L1_MEM=4096) and prints a
Markdown table with nubo/QEMU ratios.

Usage: bench/io.py [--log CONSOLE_LOG]
(needs target/release/nubo-vmm; BENCH_RUNTIME / BENCH_NETTIME / BENCH_DISK_MB
are not forwarded into L1 - edit the scenario defaults to change them)
"""
import argparse
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from orchestrator import run_bench_scenario  # noqa: E402
OUT = os.path.join(ROOT, "target/bench-io")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", help="parse an existing console log instead of running")
    args = ap.parse_args()
    log = args.log
    if not log:
        log = run_bench_scenario("io-vs-qemu", OUT, "4096")
            # still print whatever results made it into the log
    # (vmm, cfg, test) -> {round: value}; values are IOPS (4k), MiB/s (1m) or Mbit/s.
    res, machine, api = {}, "?", None
    for line in open(log, errors="replace"):
        line = line.replace("\r", "")
        m = re.search(r"BENCH vmm=(\w+) cfg=(\w+) round=(\d+) fio=(\S+) iops=(\d+) bw_kib=(\d+)", line)
        if m:
            vmm, cfg, rnd, job = m.group(1), m.group(2), int(m.group(3)), m.group(4)
            v = int(m.group(5)) if "-4k" in job else int(m.group(6)) / 1024
            res.setdefault((vmm, cfg, job), {})[rnd] = v
        m = re.search(r"BENCH vmm=(\w+) cfg=(\w+) round=(\d+) net=(\w+) mbps=([\d.]+)", line)
        if m:
            res.setdefault((m.group(1), m.group(2), "iperf3-" + m.group(4)), {})[int(m.group(3))] = float(m.group(5))
        m = re.search(r"BENCH_QEMU_MACHINE (\S+)", line)
        if m:
            machine = m.group(1)
        m = re.search(r"API-LATENCY (n=.*)", line)
        if m and "BENCH" in line:
            api = m.group(1)
    if not res:
        print("no BENCH lines found", file=sys.stderr)
        return 1

    def med(d):
        return statistics.median(d.values()) if d else None

    def f(x):
        return "-" if x is None else f"{x:.0f}"

    print(f"Device I/O in the testbed L1 (QEMU/TCG, nested SVM), 512 MiB; QEMU machine {machine} "
          f"(aio=threads); fio libaio direct=1 on a raw file in L1 tmpfs; median (min-max) over rounds; "
          f"ratio = nubo/QEMU of the medians, with the min-max of the per-round ratios\n")
    print("| cfg | test | L1 (loop dev) | nubo-vmm | QEMU | nubo / QEMU | per-round ratios |")
    print("|---|---|---|---|---|---|---|")
    units = {"4k": "IOPS", "1m": "MiB/s"}
    order = ["randread-4k-qd1", "randwrite-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32",
             "randread-4k-qd32-j2", "randwrite-4k-qd32-j2", "seqread-1m", "seqwrite-1m",
             "iperf3-g2h", "iperf3-h2g"]
    for cfg in ("1q", "2q"):
        for test in order:
            n, q = res.get(("nubo", cfg, test), {}), res.get(("qemu", cfg, test), {})
            if not n and not q:
                continue
            l1 = res.get(("l1", "1q", test.replace("-j2", "")), {}) if cfg == "1q" else {}
            unit = "Mbit/s" if test.startswith("iperf3") else units.get(test.split("-")[1], "")
            rr = [n[r] / q[r] for r in n if r in q and q[r]]
            span = f"{min(rr):.2f}-{max(rr):.2f}" if rr else "-"
            ratio = f"{med(n) / med(q):.2f}x" if n and q and med(q) else "-"

            def cell(d):
                return f"{f(med(d))} ({f(min(d.values()))}-{f(max(d.values()))})" if d else "-"
            print(f"| {cfg} ({len(n)} rounds) | {test} {unit} | {f(med(l1))} | {cell(n)} | {cell(q)} | "
                  f"{ratio} | {span} |")
    if api:
        print(f"\n`GET /vm` while fio QD32 saturates the disk: {api}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
