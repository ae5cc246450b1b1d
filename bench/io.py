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
    fio, net, machine = {}, {}, "?"
    for line in open(log, errors="replace"):
        line = line.replace("\r", "")
        m = re.search(r"BENCH vmm=(\w+) fio=(\S+) iops=(\d+) bw_kib=(\d+)", line)
        if m:
            fio[(m.group(1), m.group(2))] = (int(m.group(3)), int(m.group(4)))
        m = re.search(r"BENCH vmm=(\w+) net=(\w+) mbps=([\d.]+)", line)
        if m:
            net[(m.group(1), m.group(2))] = float(m.group(3))
        m = re.search(r"BENCH_QEMU_MACHINE (\S+)", line)
        if m:
            machine = m.group(1)
    if not fio and not net:
        print("no BENCH lines found", file=sys.stderr)
        return 1

    def cell(d, k, fmt):
        return fmt(d[k]) if k in d else "-"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b else "-"

    print(f"Device I/O in the testbed L1 (QEMU/TCG, nested SVM), 1 vCPU, 512 MiB; "
          f"QEMU machine {machine}; fio libaio direct=1 on a raw file in L1 tmpfs\n")
    print("| test | L1 (loop dev) | nubo-vmm | QEMU | nubo / QEMU |")
    print("|---|---|---|---|---|")
    for job, iodepth in (("randread-4k", 32), ("randwrite-4k", 32), ("seqread-1m", 8), ("seqwrite-1m", 8)):
        if job.endswith("4k"):
            val, unit = (lambda v: v[0]), "IOPS"
        else:
            val, unit = (lambda v: v[1] / 1024), "MiB/s"
        vals = {vmm: (val(fio[(vmm, job)]) if (vmm, job) in fio else None) for vmm in ("l1", "nubo", "qemu")}
        f = (lambda x: "-" if x is None else f"{x:.0f}")
        print(f"| fio {job} QD{iodepth} {unit} | {f(vals['l1'])} | {f(vals['nubo'])} | "
              f"{f(vals['qemu'])} | {ratio(vals['nubo'], vals['qemu'])} |")
    for d, label in (("g2h", "guest -> L1"), ("h2g", "L1 -> guest")):
        n, q = net.get(("nubo", d)), net.get(("qemu", d))
        f = (lambda x: "-" if x is None else f"{x:.0f}")
        print(f"| iperf3 {label} Mbit/s | | {f(n)} | {f(q)} | {ratio(n, q)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
