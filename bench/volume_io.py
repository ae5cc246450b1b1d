#!/usr/bin/env python3
"""Volume I/O benchmark (issue #12) in the testbed: fio in a nubo-vmm guest on
a disk of each kind a server can have (bench/testbed-scenarios/volume-io.sh):
the boot disk's shape (qcow2 overlay), a `file` volume (standalone qcow2), an
`lvm` volume (thin LV) and a raw file, interleaved over BENCH_RUNS rounds.
Prints a Markdown table: median IOPS / bandwidth with min-max, and each
volume kind against the boot disk.

Usage: bench/volume_io.py [--log CONSOLE_LOG]   (needs target/release/nubo-vmm)
"""
import argparse
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from orchestrator import run_bench_scenario  # noqa: E402
OUT = os.path.join(ROOT, "target/bench-volume-io")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", help="parse an existing console log instead of running")
    args = ap.parse_args()
    log = args.log
    if not log:
        log = run_bench_scenario("volume-io", OUT, "6144")
    res = {}
    for line in open(log, errors="replace"):
        m = re.search(r"BENCH disk=(\w+) run=(\d+) fio=(\S+) iops=(\d+) bw_kib=(\d+)", line.replace("\r", ""))
        if m:
            res.setdefault((m.group(1), m.group(3)), []).append((int(m.group(4)), int(m.group(5))))
    if not res:
        print("no BENCH lines found", file=sys.stderr)
        return 1
    jobs = ["randread-4k", "randwrite-4k", "seqread-1m", "seqwrite-1m"]
    disks = [d for d in ["boot", "file", "lvm", "raw"] if any(k[0] == d for k in res)]

    def med(d, j, i):
        v = [r[i] for r in res.get((d, j), [])]
        return statistics.median(v) if v else None

    def cell(d, j):
        v = res.get((d, j))
        if not v:
            return "-"
        i = 0 if j.endswith("4k") else 1
        xs = [r[i] for r in v]
        unit = "IOPS" if i == 0 else "MiB/s"
        conv = (lambda x: x) if i == 0 else (lambda x: x / 1024)
        return f"{conv(statistics.median(xs)):.0f} {unit} ({conv(min(xs)):.0f}-{conv(max(xs)):.0f}, n={len(xs)})"

    print("| job | " + " | ".join(disks) + " | " + " | ".join(f"{d}/boot" for d in disks if d != "boot") + " |")
    print("|---" * (1 + len(disks) + len(disks) - 1) + "|")
    for j in jobs:
        i = 0 if j.endswith("4k") else 1
        base = med("boot", j, i)
        ratios = []
        for d in disks:
            if d == "boot":
                continue
            m = med(d, j, i)
            ratios.append(f"{m / base:.2f}" if m is not None and base else "-")
        print(f"| {j} | " + " | ".join(cell(d, j) for d in disks) + " | " + " | ".join(ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
