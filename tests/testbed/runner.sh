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

# Inside L1 we own every process: kill whatever a scenario left behind
# (busybox timeout only kills the scenario's shell, not its children).
reap_leftovers() {
    [ "${TESTBED_IN_L1:-}" = 1 ] || return 0
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        case $p in 1|"$$"|"$PPID") continue ;; esac
        [ -e "/proc/$p/exe" ] || continue   # kernel threads have no exe
        kill -9 "$p" 2>/dev/null || true
    done
}

for n in $names; do
    f=$dir/$n.sh
    limit=$(sed -n 's/^# testbed-timeout: *\([0-9][0-9]*\).*/\1/p' "$f" | head -n1)
    limit=${limit:-${TESTBED_SCENARIO_TIMEOUT:-180}}
    TESTBED_WORK=${TMPDIR:-/tmp}/testbed-work/$n
    rm -rf "$TESTBED_WORK"; mkdir -p "$TESTBED_WORK"
    export TESTBED_WORK

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
    reap_leftovers
    echo "TESTBED-END $n status=$status rc=$rc ms=$ms"
done
echo "TESTBED-DONE"
