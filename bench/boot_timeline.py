#!/usr/bin/env python3
"""Tables from a bench/testbed-scenarios/boot-timeline.sh console log: per
boot phase (VMM start -> first guest entry -> the kernel's clock starts ->
readiness line), where the kernel part goes (guest running vs. handling
exits), exits by kind (reason, I/O port, MSR, MMIO address), the nested page
faults and the initcalls that differ between nubo-vmm and QEMU.

Usage: bench/boot_timeline.py CONSOLE_LOG [--min-initcall-ms 20]
"""
import argparse
import collections
import re
import statistics


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--min-initcall-ms", type=float, default=20)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    phase = collections.defaultdict(list)
    win = collections.defaultdict(list)
    exits = collections.defaultdict(lambda: collections.defaultdict(list))
    npf = collections.defaultdict(list)
    initcalls = collections.defaultdict(lambda: collections.defaultdict(list))
    boots = collections.Counter()
    for line in open(args.log, errors="replace"):
        line = line.rstrip("\r\n")
        if m := re.match(r"PHASE (\S+) (.*)", line):
            kv = dict(x.split("=", 1) for x in m.group(2).split() if "=" in x)
            if "start_to_entry_ms" in kv:
                boots[m.group(1)] += 1
                phase[m.group(1)].append({k: float(v) for k, v in kv.items() if v != "?"})
        elif m := re.match(r"WIN (\S+) (\S+) wall_ms=(\d+) guest_ms=(\d+) exits=(\d+) exit_ms=(\d+)", line):
            win[(m.group(1), m.group(2))].append(tuple(int(m.group(i)) for i in range(3, 7)))
        elif m := re.match(r"EXIT (\S+) (\S+) ([\d.]+) (\d+) (.*)", line):
            exits[(m.group(1), m.group(2))][m.group(5)].append((float(m.group(3)), int(m.group(4))))
        elif m := re.match(r"NPFSUM (\S+) (\S+) n=(\d+) ms=(\d+)", line):
            npf[(m.group(1), m.group(2))].append((int(m.group(3)), int(m.group(4))))
        elif m := re.match(r"INITCALL (\S+) (\S+) (\d+)", line):
            initcalls[m.group(1)][m.group(2)].append(int(m.group(3)) / 1000)
    tags = sorted(boots)
    print("### Phases (median over boots, ms)\n")
    print("| boot | n | VMM start -> first entry | first entry -> kvmclock | kvmclock -> ready | ready | guest uptime s |")
    print("|---|---|---|---|---|---|---|")
    for t in tags:
        p = phase[t]
        g = lambda k: med([x[k] for x in p if k in x])
        print(f"| {t} | {len(p)} | {g('start_to_entry_ms'):.0f} | {g('entry_to_kvmclock_ms'):.0f} | "
              f"{g('kvmclock_to_ready_ms'):.0f} | {g('ready_ms'):.0f} | {g('uptime'):.2f} |")
    print("\n### Where the time goes (median ms; exits = handled in L1's KVM or the VMM)\n")
    print("| boot | phase | wall | guest running | exits | exit handling | NPF exits | NPF ms |")
    print("|---|---|---|---|---|---|---|---|")
    for t in tags:
        for ph in ("early", "kernel"):
            w = win.get((t, ph), [])
            n = npf.get((t, ph), [])
            if w:
                print(f"| {t} | {ph} | {med([x[0] for x in w]):.0f} | {med([x[1] for x in w]):.0f} | "
                      f"{med([x[2] for x in w]):.0f} | {med([x[3] for x in w]):.0f} | "
                      f"{med([x[0] for x in n]):.0f} | {med([x[1] for x in n]):.0f} |")
    print(f"\n### Exits by kind, kernel phase (median count / ms; top {args.top} by ms per boot)\n")
    for t in tags:
        e = exits.get((t, "kernel"), {})
        rows = sorted(e.items(), key=lambda kv: -med([x[0] for x in kv[1]]))[: args.top]
        print(f"- **{t}**: " + "; ".join(f"{k} {med([x[1] for x in v]):.0f}/{med([x[0] for x in v]):.0f} ms" for k, v in rows))
    print(f"\n### Initcalls differing by more than {args.min_initcall_ms:g} ms (median ms)\n")
    nubo = [t for t in tags if t.startswith("nubo")]
    qemu = [t for t in tags if t.startswith("qemu")]
    for a in nubo:
        b = next((q for q in qemu if q.split("-", 1)[1] == a.split("-", 1)[1]), None)
        if not b:
            continue
        names = set(initcalls[a]) | set(initcalls[b])
        rows = []
        for n in names:
            x, y = med(initcalls[a].get(n, [0])), med(initcalls[b].get(n, [0]))
            if abs(x - y) > args.min_initcall_ms:
                rows.append((x - y, n, x, y))
        print(f"- **{a} vs {b}**: " + ("; ".join(f"{n} {x:.0f} vs {y:.0f}" for _, n, x, y in sorted(rows, reverse=True)) or "none"))


if __name__ == "__main__":
    main()
