#!/usr/bin/env bash
# Run testbed scenarios; exit 0 only if all selected scenarios passed.
#
#   tests/testbed/run.sh [SCENARIO|GLOB ...]     (or TESTBED_SCENARIOS="a b*")
#
# Without hardware KVM on the host (e.g. PVM), the scenarios run inside an L1
# VM: QEMU/TCG emulating an AMD CPU with SVM+NPT, where kvm-amd gives a real
# /dev/kvm. With hardware KVM (kvm_intel/kvm_amd loaded) they run directly on
# the host with the same environment and output lines.
#
# Environment:
#   TESTBED_SCENARIOS  space-separated names/globs (default: all)
#   TESTBED_TIMEOUT    overall limit in seconds (default 1200)
#   TESTBED_OUT        output dir (default target/testbed); console.log goes there
#   NUBO_VMM           VMM binary (default target/release/nubo-vmm)
#   TESTBED_WITH_QEMU  1/0: put QEMU into L1 (default: 1 iff a selected
#                      scenario says `# testbed-needs: qemu`)
#   TESTBED_MODE       auto (default) | l1 | host: force where scenarios run
#   TESTBED_FORCE_L1=1 same as TESTBED_MODE=l1
#   TESTBED_L1_CPUS / TESTBED_L1_MEM   L1 size (default 2 / 2048)
#   TESTBED_STALL      seconds without L1 progress before QEMU is killed (120)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SCEN=${TESTBED_SCENARIO_DIR:-$HERE/scenarios}
OUTDIR=${TESTBED_OUT:-$ROOT/target/testbed}
LOG=$OUTDIR/console.log
TIMEOUT=${TESTBED_TIMEOUT:-1200}
export NUBO_VMM=${NUBO_VMM:-$ROOT/target/release/nubo-vmm}
mkdir -p "$OUTDIR"

log() { echo "run.sh: $*" >&2; }
die() { log "error: $*"; exit 2; }

# --- selection: args, else $TESTBED_SCENARIOS, else all.
if [ $# -gt 0 ]; then patterns=("$@")
else read -r -a patterns <<<"${TESTBED_SCENARIOS:-*}"; fi
[ ${#patterns[@]} -gt 0 ] || patterns=('*')
selected=()
for pat in "${patterns[@]}"; do
    matched=0
    for f in "$SCEN"/$pat.sh; do
        [ -f "$f" ] || continue
        selected+=("$(basename "$f" .sh)"); matched=1
    done
    [ $matched = 1 ] || die "no scenario matches '$pat' (see $SCEN)"
done
# De-duplicate, keep order.
mapfile -t selected < <(printf '%s\n' "${selected[@]}" | awk '!seen[$0]++')
log "scenarios: ${selected[*]}"

if [ -z "${TESTBED_WITH_QEMU:-}" ]; then
    TESTBED_WITH_QEMU=0
    for n in "${selected[@]}"; do
        grep -q '^# testbed-needs:.*qemu' "$SCEN/$n.sh" && TESTBED_WITH_QEMU=1
    done
fi
export TESTBED_WITH_QEMU

"$ROOT/guest/build.sh" >/dev/null
export NUBO_GUEST_BUILT=1
GUEST=${NUBO_GUEST_OUT:-$ROOT/guest/out}

# --- judge LOGFILE: all selected scenarios ended with pass/skip + TESTBED-DONE.
judge() {
    local logf=$1 n line bad=0
    for n in "${selected[@]}"; do
        line=$(tr -d '\r' <"$logf" | grep -m1 "^TESTBED-END $n " || true)
        case "$line" in
            *status=pass*|*status=skip*) ;;
            "") log "FAIL $n: no result (VM died or timed out?)"; bad=1 ;;
            *) log "FAIL $n: ${line#TESTBED-END $n }"; bad=1 ;;
        esac
    done
    if ! tr -d '\r' <"$logf" | grep -q '^TESTBED-DONE'; then
        log "FAIL: TESTBED-DONE missing"; bad=1
    fi
    [ $bad = 0 ] && log "all ${#selected[@]} scenario(s) passed"
    return $bad
}

hw_kvm() { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }

MODE=${TESTBED_MODE:-auto}
[ "${TESTBED_FORCE_L1:-0}" != 1 ] || MODE=l1
if [ "$MODE" = auto ]; then
    if hw_kvm; then MODE=host; else MODE=l1; fi
fi

if [ "$MODE" = host ]; then
    # --- Host mode: same runner, busybox applets first in PATH so scenarios
    # see the same tools as in L1.
    log "running scenarios directly on the host"
    BB=$OUTDIR/busybox-bin
    rm -rf "$BB"; mkdir -p "$BB"
    for applet in $("$GUEST/busybox" --list); do ln -sf "$GUEST/busybox" "$BB/$applet"; done
    if [ -c /dev/kvm ]; then echo "TESTBED-KVM ok"; else echo "TESTBED-KVM missing"; fi | tee "$LOG"
    set +e
    env PATH="$BB:$PATH" TESTBED_LIB="$HERE/lib.sh" \
        L2_BZIMAGE="$GUEST/bzImage" L2_VMLINUX="$GUEST/vmlinux" \
        L2_INITRD="$GUEST/initramfs.cpio.gz" L2_ROOTFS="$GUEST/rootfs.ext4" \
        TMPDIR="$OUTDIR/tmp" \
        timeout "$TIMEOUT" "$GUEST/busybox" sh "$HERE/runner.sh" "$SCEN" "${selected[@]}" 2>&1 | tee -a "$LOG"
    set -e
    judge "$LOG"
    exit
fi

# --- L1 mode.
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
L1_INITRD=$("$HERE/build-l1.sh" "$OUTDIR/l1-initramfs.cpio")
list=$(IFS=,; echo "${selected[*]}")
log "booting L1 (timeout ${TIMEOUT}s), console -> $LOG"

# Per-scenario limit from its header (same rule as runner.sh).
scenario_limit() {
    local t
    t=$(sed -n 's/^# testbed-timeout: *\([0-9][0-9]*\).*/\1/p' "$SCEN/$1.sh" 2>/dev/null | head -n1)
    echo "${t:-${TESTBED_SCENARIO_TIMEOUT:-180}}"
}

# QEMU runs in the background; this loop copies its console to stdout and
# $LOG and acts as a watchdog: if L1 makes no progress (no TESTBED-KVM within
# STALL s of boot, a scenario running past its own limit + STALL s, nothing
# after a scenario for STALL s) L1 itself is wedged and QEMU is killed, so a
# hung L1 costs minutes, not the whole overall timeout.
STALL=${TESTBED_STALL:-120}
PIDFILE=$OUTDIR/qemu.$$.pid
rm -f "$PIDFILE"
exec {qfd}< <(
    timeout --foreground -k 10 "$TIMEOUT" \
        qemu-system-x86_64 -accel "tcg,thread=${TESTBED_TCG_THREAD:-multi}" -cpu max,-xsave -M q35 \
            -smp "${TESTBED_L1_CPUS:-2}" -m "${TESTBED_L1_MEM:-2048}" \
            -nographic -no-reboot -nic none -pidfile "$PIDFILE" \
            -kernel "$GUEST/bzImage" -initrd "$L1_INITRD" \
            -append "console=ttyS0 quiet panic=-1 testbed.scenarios=$list" \
            </dev/null 2>&1
    echo "__QEMU_RC=$?"
)
: >"$LOG"
rc=255 deadline=$((SECONDS + STALL)) partial='' watchdog=''
on_line() {
    local clean=${1//$'\r'/}
    case "$clean" in
        __QEMU_RC=*) rc=${clean#__QEMU_RC=}; return ;;
        *TESTBED-BEGIN\ *) deadline=$((SECONDS + $(scenario_limit "${clean##*TESTBED-BEGIN }") + STALL)) ;;
        *TESTBED-END\ *|*TESTBED-KVM\ *) deadline=$((SECONDS + STALL)) ;;
    esac
    printf '%s\n' "$1"
    printf '%s\n' "$1" >>"$LOG"
}
while :; do
    if IFS= read -r -t 5 -u "$qfd" chunk; then
        on_line "$partial$chunk"; partial=''
    elif [ $? -gt 128 ]; then
        partial+=$chunk   # timed out mid-line: keep what arrived
    else
        [ -z "$partial$chunk" ] || on_line "$partial$chunk"
        break             # EOF: QEMU is gone
    fi
    if [ -z "$watchdog" ] && [ $SECONDS -gt $deadline ]; then
        watchdog=1
        log "watchdog: no progress from L1 for too long (TESTBED_STALL=${STALL}s); killing QEMU"
        [ ! -s "$PIDFILE" ] || kill "$(cat "$PIDFILE")" 2>/dev/null || true
    fi
done
exec {qfd}<&-
rm -f "$PIDFILE"
[ "$rc" = 0 ] || log "qemu exited with status $rc$([ "$rc" = 124 ] && echo " (overall timeout ${TIMEOUT}s)")"
judge "$LOG"
