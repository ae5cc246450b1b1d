#!/bin/sh
# Run testbed scenarios and print machine-readable result lines.
#
#   runner.sh SCENARIO_DIR [NAME|GLOB ...]      (default: every scenario)
#
# For each scenario SCENARIO_DIR/NAME.sh (run with `sh`, cwd = a fresh
# scratch dir exported as TESTBED_WORK):
#   TESTBED-BEGIN NAME
#   ...scenario output (stdout+stderr)...
#   TESTBED-END NAME status=pass|fail|skip rc=N ms=N
# then finally `TESTBED-DONE`. Exit 0 = pass, 77 = skip, 75 = the guest
# triple-faulted (the scenario runs once more, after a `TESTBED-RETRY NAME
# reason` line; its second result counts), anything else = fail.
#
# Scenario headers (optional comment lines):
#   # testbed-timeout: SECONDS   (default $TESTBED_SCENARIO_TIMEOUT or 180)
#   # testbed-needs: qemu        (read by run.sh to decide what goes into L1)
#
# Runs under busybox sh inside the L1 VM, or on a host with hardware KVM.
set -eu

dir=$1; shift
[ $# -gt 0 ] || set -- '*'

uptime_now() { read -r u _ </proc/uptime; echo "$u"; }

# Expand names/globs into a de-duplicated, ordered list.
names=
for pat in "$@"; do
    found=
    for f in "$dir"/$pat.sh; do
        [ -f "$f" ] || continue
        n=$(basename "$f" .sh)
        found=1
        case " $names " in *" $n "*) ;; *) names="$names $n" ;; esac
    done
    if [ -z "$found" ]; then
        echo "TESTBED-BEGIN $pat"
        echo "no scenario matches '$pat' in $dir"
        echo "TESTBED-END $pat status=fail rc=127 ms=0"
    fi
done

in_l1() { [ "${TESTBED_IN_L1:-}" = 1 ]; }

# The processes of L1's user space that are not the runner's own: PID 1,
# this shell, its parent, the heartbeat and kvmhold (l1-init.sh) are ours;
# kernel threads have no exe. Prints "pid:comm" words.
KVMHOLD_PID=$(cat /run/kvmhold.pid 2>/dev/null || true)
foreign_procs() {
    read -r me _ </proc/self/stat   # this function may run in a subshell: $(...)
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        case $p in 1|"$$"|"$PPID"|"$me"|"${HEARTBEAT_PID:-x}"|"${KVMHOLD_PID:-x}") continue ;; esac
        [ -e "/proc/$p/exe" ] || continue
        read -r comm <"/proc/$p/comm" 2>/dev/null || continue
        printf '%s ' "$p:$comm"
    done
}

# Inside L1 we own every process: kill whatever a scenario left behind
# (busybox timeout only kills the scenario's shell, not its children).
reap_leftovers() {
    in_l1 || return 0
    for pc in $(foreign_procs); do
        kill -9 "${pc%%:*}" 2>/dev/null || true
    done
}

# Network interfaces other than lo (L1 has no NIC in scenario mode).
links() {
    for l in /sys/class/net/*; do
        l=${l##*/}
        case $l in lo|eth0|'*') ;; *) printf '%s ' "$l" ;; esac
    done
}

# Top-level entries of the shared scratch places, except the runner's own.
scratch_entries() {
    for f in "${TMPDIR:-/tmp}"/* /dev/shm/*; do
        case $f in "${TMPDIR:-/tmp}/testbed-work"|*'*') ;; *) printf '%s ' "$f" ;; esac
    done
}

# KVM VMs the L1 kernel still holds (debugfs has one "PID-FD" dir per VM),
# except kvmhold's (l1-init.sh).
kvm_vms() {
    n=0
    for d in /sys/kernel/debug/kvm/*-*; do
        case ${d##*/} in "${KVMHOLD_PID:-x}"-*) continue ;; esac
        [ -d "$d" ] && n=$((n + 1))
    done
    echo "$n"
}

meminfo_kb() { awk -v k="$1:" '$1 == k { print $2; exit }' /proc/meminfo; }
used_kb() { df -k "$1" 2>/dev/null | awk 'NR == 2 { print $3 }'; }

# TESTBED-STATS NAME ...: L1's health after a scenario, and what the
# scenario left behind. A passing scenario that leaves processes, network
# interfaces or files behind fails (status=fail rc=70): scenarios clean up
# after themselves, or L1 fills up over a run.
DMESG_SEEN=0
stats_after() {
    name=$1
    left_procs='' left_links='' left_files=''
    if in_l1; then
        # Give processes that were just killed (a trap's kill -9) a moment.
        i=0
        while [ -n "$(foreign_procs)" ] && [ $i -lt 30 ]; do usleep 100000; i=$((i + 1)); done
        left_procs=$(foreign_procs)
        left_links=$(links)
    fi
    for sf in $(scratch_entries); do
        case " $SCRATCH_BEFORE " in *" $sf "*) ;; *) left_files="$left_files$sf " ;; esac
    done
    work_kb=$(du -sk "$TESTBED_WORK" 2>/dev/null | cut -f1)
    if in_l1; then
        fds=0
        for pc in $left_procs; do
            for fd in /proc/"${pc%%:*}"/fd/*; do [ -e "$fd" ] && fds=$((fds + 1)); done
        done
        echo "TESTBED-STATS $name up=$(uptime_now) memavail_kb=$(meminfo_kb MemAvailable)" \
            "memfree_kb=$(meminfo_kb MemFree) shmem_kb=$(meminfo_kb Shmem) slab_kb=$(meminfo_kb Slab)" \
            "vmalloc_kb=$(meminfo_kb VmallocUsed) tmp_used_kb=$(used_kb "${TMPDIR:-/tmp}")" \
            "work_kb=${work_kb:-0} kvm_vms=$(kvm_vms) left_procs=$(echo $left_procs | wc -w) left_fds=$fds" \
            "left_links=$(echo $left_links | wc -w) left_files=$(echo $left_files | wc -w)"
        # L1 kernel messages since the last scenario that matter for its health.
        dmesg >/run/testbed-dmesg 2>/dev/null
        total=$(wc -l </run/testbed-dmesg)
        [ "$total" -ge "$DMESG_SEEN" ] || DMESG_SEEN=0   # the ring buffer wrapped
        tail -n +$((DMESG_SEEN + 1)) /run/testbed-dmesg |
            grep -iE 'lockup|rcu|oom|out of memory|kvm|svm|hung|BUG|WARNING|Call Trace|page allocation|blocked for' |
            head -n 40 | sed "s/^/TESTBED-DMESG $name: /"
        DMESG_SEEN=$total
    else
        echo "TESTBED-STATS $name work_kb=${work_kb:-0} left_files=$(echo $left_files | wc -w)"
    fi
    leftover=''
    # (unquoted echo: one space between words, none at the end)
    [ -z "$left_procs" ] || leftover="${leftover}processes: $(echo $left_procs); "
    [ -z "$left_links" ] || leftover="${leftover}network interfaces: $(echo $left_links); "
    [ -z "$left_files" ] || leftover="${leftover}files: $(echo $left_files); "
    if [ -n "$leftover" ]; then
        echo "TESTBED-LEFTOVER $name ${leftover%; }"
        for l in $left_links; do ip link delete "$l" 2>/dev/null || true; done
        for sf in $left_files; do rm -rf "$sf"; done
    fi
}

# L1's heartbeat: every 20 s a TESTBED-HEARTBEAT line with the uptime and
# MemAvailable, from shell builtins only (no child processes), so a stuck
# scenario and a stuck L1 look different on the console.
HEARTBEAT_PID=
if in_l1; then
    mkfifo /run/testbed-heartbeat 2>/dev/null || true
    (
        trap - EXIT
        while :; do
            read -r -t 20 _ <>/run/testbed-heartbeat || true
            read -r up _ </proc/uptime
            avail=
            while read -r k v _; do
                case $k in MemAvailable:) avail=$v; break ;; esac
            done </proc/meminfo
            echo "TESTBED-HEARTBEAT up=$up memavail_kb=$avail"
        done
    ) &
    HEARTBEAT_PID=$!
    mkdir -p /sys/kernel/debug
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
    dmesg >/run/testbed-dmesg 2>/dev/null
    DMESG_SEEN=$(wc -l </run/testbed-dmesg)
fi

# L1 recycling (run.sh): after a scenario, when more remain and this L1 has
# run TESTBED_RECYCLE_AFTER scenarios or its MemAvailable is below
# TESTBED_RECYCLE_MEM_MB, print TESTBED-RECYCLE and stop without
# TESTBED-DONE; run.sh boots a fresh L1 for the rest. 0 = never.
ran=0 total_names=$(echo $names | wc -w)
for n in $names; do
    if [ "$ran" -gt 0 ] && [ "$ran" -lt "$total_names" ] && in_l1; then
        why=
        [ "${TESTBED_RECYCLE_AFTER:-0}" -gt 0 ] && [ "$ran" -ge "$TESTBED_RECYCLE_AFTER" ] &&
            why="after=$ran scenarios"
        avail_mb=$(($(meminfo_kb MemAvailable) / 1024))
        [ "${TESTBED_RECYCLE_MEM_MB:-0}" -gt 0 ] && [ "$avail_mb" -lt "$TESTBED_RECYCLE_MEM_MB" ] &&
            why="${why:+$why, }memavail_mb=$avail_mb < $TESTBED_RECYCLE_MEM_MB"
        if [ -n "$why" ]; then
            [ -z "$HEARTBEAT_PID" ] || kill "$HEARTBEAT_PID" 2>/dev/null || true
            echo "TESTBED-RECYCLE $why next=$n"
            exit 0
        fi
    fi
    ran=$((ran + 1))
    f=$dir/$n.sh
    limit=$(sed -n 's/^# testbed-timeout: *\([0-9][0-9]*\).*/\1/p' "$f" | head -n1)
    limit=${limit:-${TESTBED_SCENARIO_TIMEOUT:-180}}
    TESTBED_WORK=${TMPDIR:-/tmp}/testbed-work/$n
    rm -rf "$TESTBED_WORK"; mkdir -p "$TESTBED_WORK"
    export TESTBED_WORK
    SCRATCH_BEFORE=$(scratch_entries)

    echo "TESTBED-BEGIN $n"
    t0=$(uptime_now)
    set +e
    (cd "$TESTBED_WORK" && exec timeout "$limit" sh "$f" </dev/null 2>&1)
    rc=$?
    if [ "$rc" = 75 ]; then
        # lib.sh's fail(): the guest triple-faulted (a known nested-emulation
        # fault). One more run decides; a second fault fails the scenario.
        reap_leftovers
        echo "TESTBED-RETRY $n the guest triple-faulted; running the scenario once more"
        rm -rf "$TESTBED_WORK"; mkdir -p "$TESTBED_WORK"
        (cd "$TESTBED_WORK" && exec timeout "$limit" sh "$f" </dev/null 2>&1)
        rc=$?
    fi
    set -e
    t1=$(uptime_now)
    ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 + 0.5 }')
    case $rc in
        0) status=pass ;;
        77) status=skip ;;
        *) status=fail ;;
    esac
    [ "$rc" != 143 ] || echo "scenario timed out after ${limit}s"
    stats_after "$n"
    reap_leftovers
    if [ -n "$leftover" ] && [ "$status" = pass ]; then
        echo "FAIL: the scenario left ${leftover%; } behind"
        status=fail rc=70
    fi
    # The scratch dir lives in L1's RAM (tmpfs): it goes when the scenario
    # ends. On a host it stays for a failed scenario, to look at.
    if in_l1 || [ "$status" != fail ]; then rm -rf "$TESTBED_WORK"; fi
    echo "TESTBED-END $n status=$status rc=$rc ms=$ms"
done
[ -z "$HEARTBEAT_PID" ] || kill "$HEARTBEAT_PID" 2>/dev/null || true
echo "TESTBED-DONE"
