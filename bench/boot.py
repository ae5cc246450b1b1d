#!/usr/bin/env python3
"""Linux boot benchmark in the testbed: nubo-vmm vs QEMU+KVM (microvm) in the
same L1 VM, same Debian cloud kernel and initramfs, 1 vCPU, 512 MiB.

Runs tests/testbed/run.sh with bench/testbed-scenarios/boot-vs-qemu.sh and
prints a Markdown table of VMM start -> the guest's readiness line (wall, as
seen in L1, 10 ms resolution) and the guest's own uptime at that line.

Usage: bench/boot.py [--log CONSOLE_LOG]
(needs target/release/nubo-vmm and guest/build.sh; the number of runs is
RUNS in bench/testbed-scenarios/boot-vs-qemu.sh)
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", help="parse an existing console log instead of running")
    args = ap.parse_args()
    log = args.log
    if not log:
        out = os.path.join(ROOT, "target/bench-testbed")
        env = dict(os.environ, TESTBED_SCENARIO_DIR=os.path.join(ROOT, "bench/testbed-scenarios"),
                   TESTBED_OUT=out, TESTBED_TIMEOUT="1500")
        rc = subprocess.run([os.path.join(ROOT, "tests/testbed/run.sh"), "boot-vs-qemu"],
                            env=env, stdout=subprocess.DEVNULL).returncode
        log = os.path.join(out, "console.log")
        if rc != 0:
            print(f"testbed run failed (rc={rc}); see {log}; parsing what it has", file=sys.stderr)
    rows, fails = {}, {}
    for line in open(log, errors="replace"):
        m = re.search(r"BENCH-FAIL vmm=(\w+) kernel=(\S+)", line)
        if m:
            fails[(m.group(1), m.group(2))] = fails.get((m.group(1), m.group(2)), 0) + 1
        m = re.search(r"BENCH vmm=(\w+) kernel=(\S+) boot_ms=(\d+) uptime=([\d.]+)", line)
        if m:
            key = (m.group(1), m.group(2))
            rows.setdefault(key, []).append((int(m.group(3)), float(m.group(4))))
    if not rows:
        print("no BENCH lines found", file=sys.stderr)
        return 1
    print("Linux boot in the testbed L1 (QEMU/TCG, nested SVM), 1 vCPU, 512 MiB, "
          "Debian cloud kernel + busybox initramfs, `quiet`\n")
    print("| VMM | kernel | runs | boot ms median | min | max | guest uptime s median |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for (vmm, kernel), samples in sorted(rows.items()):
        ms = [s[0] for s in samples]
        up = [s[1] for s in samples]
        med[(vmm, kernel)] = statistics.median(ms)
        print(f"| {vmm} | {kernel} | {len(ms)} | {statistics.median(ms):.0f} | {min(ms)} | "
              f"{max(ms)} | {statistics.median(up):.2f} |")
    for qkernel in ("bzImage", "vmlinux"):
        q = med.get(("qemu", qkernel))
        if q:
            for (vmm, kernel), m in sorted(med.items()):
                if vmm == "nubo":
                    print(f"\nnubo-vmm ({kernel}) / QEMU microvm ({qkernel}): {m / q:.2f}x", end="")
    print()
    for (vmm, kernel), n in sorted(fails.items()):
        print(f"failed boots (not in the table): {vmm} {kernel}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
