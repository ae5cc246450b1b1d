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

Usage: bench/io.py [--log CONSOLE_LOG...]
(runs fresh testbed sessions until 5 one-queue and 5 two-queue rounds are
complete for both VMMs, at most 6: L1 itself crashes now and then under load)
(needs target/release/nubo-vmm; BENCH_RUNTIME / BENCH_NETTIME / BENCH_DISK_MB
are not forwarded into L1 - edit the scenario defaults to change them)
"""
import argparse
import os
import re
import shutil
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from orchestrator import run_bench_scenario  # noqa: E402
OUT = os.path.join(ROOT, "target/bench-io")


# Jobs per configuration: a round counts only when both VMMs have all of them.
JOBS = {"1q": ["randread-4k-qd1", "randwrite-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32",
               "seqread-1m", "seqwrite-1m", "iperf3-g2h", "iperf3-h2g"],
        "2q": ["randread-4k-qd32-j2", "randwrite-4k-qd32-j2"]}
WANT = {"1q": 5, "2q": 5}
MAX_SESSIONS = 6


def parse(logs):
    """(vmm, cfg, test) -> {round: value} from every BENCH line of `logs`
    (IOPS for 4k jobs, MiB/s for 1m, Mbit/s for iperf3), the QEMU machine and
    the API latency line; rounds that either VMM did not finish are dropped."""
    res, machine, api = {}, "?", None
    for log in logs:
        for line in open(log, errors="replace"):
            line = line.replace("\r", "")
            m = re.search(r"BENCH vmm=(\w+) cfg=(\S+) round=(\d+) fio=(\S+) iops=(\d+) bw_kib=(\d+)", line)
            if m:
                vmm, cfg, rnd, job = m.group(1), m.group(2), int(m.group(3)), m.group(4)
                v = int(m.group(5)) if "-4k" in job else int(m.group(6)) / 1024
                res.setdefault((vmm, cfg, job), {})[rnd] = v
            m = re.search(r"BENCH vmm=(\w+) cfg=(\S+) round=(\d+) net=(\w+) mbps=([\d.]+)", line)
            if m:
                res.setdefault((m.group(1), m.group(2), "iperf3-" + m.group(4)), {})[int(m.group(3))] = float(m.group(5))
            m = re.search(r"BENCH vmm=(\w+) cfg=(\S+) round=(\d+) irq=(\S+) irqs=(\d+) ios=(\d+)", line)
            if m and int(m.group(6)):
                res.setdefault((m.group(1), m.group(2), "irq/io " + m.group(4)), {})[int(m.group(3))] = \
                    int(m.group(5)) / int(m.group(6))
            m = re.search(r"BENCH_QEMU_MACHINE (\S+)", line)
            if m:
                machine = m.group(1)
            m = re.search(r"API-LATENCY (n=.*)", line)
            if m and "BENCH" in line:
                api = m.group(1)
    for cfg, jobs in JOBS.items():
        rounds = set()
        for (vmm, c, _), d in res.items():
            if c == cfg and vmm in ("nubo", "qemu"):
                rounds |= set(d)
        for r in rounds:
            if not all(r in res.get((vmm, cfg, job), {}) for vmm in ("nubo", "qemu") for job in jobs):
                for vmm in ("nubo", "qemu"):
                    for job in jobs:
                        res.get((vmm, cfg, job), {}).pop(r, None)
    return res, machine, api


def complete_rounds(res, cfg):
    return len(res.get(("qemu", cfg, JOBS[cfg][-1]), {}))


def run_sessions():
    """Runs the scenario in fresh testbeds until every configuration has its
    rounds (an L1 crash, the nested emulation's known fault, costs the
    session's unfinished round only); returns the console logs."""
    logs = []
    for session in range(1, MAX_SESSIONS + 1):
        res, _, api = parse(logs)
        left = {cfg: max(0, WANT[cfg] - complete_rounds(res, cfg)) for cfg in WANT}
        have_l1 = any(vmm == "l1" for vmm, _, _ in res)
        if not any(left.values()) and api:
            break
        round0 = 1 + max([r for d in res.values() for r in d] + [session * 10])
        params = (f"ROUND0={round0} ROUNDS={left['1q']} ROUNDS2={left['2q']} "
                  f"L1_CEILING={0 if have_l1 else 1} API_LATENCY={0 if api else 1}\n")
        print(f"session {session}: {params.strip()}", file=sys.stderr)
        log = run_bench_scenario("io-vs-qemu", OUT, "4096", params)
        kept = os.path.join(OUT, f"console-{session}.log")
        shutil.copy(log, kept)
        logs.append(kept)
    return logs


def print_engines(res):
    """The engine comparison: each VMM on each engine, QD32 random 4 KiB."""
    print("QD32 random 4 KiB IOPS by I/O engine, median (min-max) over rounds\n")
    print("| VMM | engine | randread-4k-qd32 | randwrite-4k-qd32 | interrupts per request (read, write) |")
    print("|---|---|---|---|---|")
    for vmm, eng in (("nubo", "io_uring"), ("nubo", "threads"), ("qemu", "threads"), ("qemu", "io_uring")):
        cells, irq = [], []
        for test in ("randread-4k-qd32", "randwrite-4k-qd32"):
            d = res.get((vmm, f"eng-{eng}", test), {})
            cells.append(f"{statistics.median(d.values()):.0f} ({min(d.values()):.0f}-{max(d.values()):.0f})"
                         if d else "-")
            d = res.get((vmm, f"eng-{eng}", "irq/io " + test), {})
            irq.append(f"{statistics.median(d.values()):.2f}" if d else "-")
        print(f"| {vmm} | {eng} | {cells[0]} | {cells[1]} | {irq[0]}, {irq[1]} |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", nargs="*", help="parse existing console logs instead of running")
    ap.add_argument("--engines", type=int, metavar="ROUNDS",
                    help="only compare the I/O engines (QD32 random 4 KiB) over ROUNDS rounds")
    args = ap.parse_args()
    if args.engines and not args.log:
        params = (f"ROUND0=1 ROUNDS=0 ROUNDS2=0 L1_CEILING=0 API_LATENCY=0 "
                  f"ENGINE_ROUNDS={args.engines}\n")
        log = run_bench_scenario("io-vs-qemu", OUT, "4096", params)
        kept = os.path.join(OUT, "console-engines.log")
        shutil.copy(log, kept)
        args.log = [kept]
    logs = args.log if args.log else run_sessions()
    res, machine, api = parse(logs)
    if not res:
        print("no BENCH lines found", file=sys.stderr)
        return 1
    if any(cfg.startswith("eng-") for _, cfg, _ in res):
        print_engines(res)
        if args.engines:
            return 0

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
