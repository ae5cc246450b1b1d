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
#   TESTBED_RECYCLE_AFTER   a fresh L1 after this many scenarios (default 8; 0 = never)
#   TESTBED_RECYCLE_MEM_MB  a fresh L1 when L1's MemAvailable drops below this (default 512; 0 = never)
#   TESTBED_KVMHOLD=0  no VM held open in L1 (kvmhold.c; default 1)
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
RECYCLE_AFTER=${TESTBED_RECYCLE_AFTER:-8}
RECYCLE_MEM_MB=${TESTBED_RECYCLE_MEM_MB:-512}
PIDFILE=$OUTDIR/qemu.$$.pid
# QEMU's human monitor: when the watchdog fires, run.sh shows where L1's
# vCPUs are (RIP; L1 boots with nokaslr, so /proc/kallsyms of any L1
# resolves them) and injects an NMI, which L1 turns into a panic with a
# backtrace (unknown_nmi_panic), after SysRq l and w through the emulated
# keyboard.
MONSOCK=$OUTDIR/qemu.$$.mon
rm -f "$PIDFILE" "$MONSOCK"
monitor() { # monitor CMD...: run HMP commands, print their output
    command -v python3 >/dev/null && [ -S "$MONSOCK" ] || return 0
    timeout 20 python3 - "$MONSOCK" "$@" <<'PY' 2>&1 || true
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
def until_prompt():
    buf = b""
    while not buf.endswith(b"(qemu) "):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")
cmd = "connect"
try:
    s.connect(sys.argv[1])
    until_prompt()
    for cmd in sys.argv[2:]:
        s.sendall(cmd.encode() + b"\n")
        out = until_prompt().replace("\r", "")
        # (the monitor echoes the command with terminal escapes: dropped)
        lines = [l for l in out.split("\n") if l and "\x1b" not in l and not l.startswith("(qemu)")]
        for l in lines:
            print(f"{cmd}: {l}")
except OSError as e:
    print(f"{cmd}: no answer from the monitor ({e})")
PY
}
# boot_l1 NAME...: one L1 runs the named scenarios; its console is appended
# to $LOG. Sets rc (QEMU's exit status) and recycle (the TESTBED-RECYCLE
# line, if L1 stopped early to be replaced by a fresh one).
boot_l1() {
    local list left
    list=$(IFS=,; echo "$*")
    left=$((TIMEOUT - (SECONDS - START)))
    [ "$left" -gt 0 ] || { rc=124; recycle=''; return; }
    exec {qfd}< <(
        timeout --foreground -k 10 "$left" \
            qemu-system-x86_64 -accel "tcg,thread=${TESTBED_TCG_THREAD:-multi}" -cpu max,-xsave -M q35 \
                -smp "${TESTBED_L1_CPUS:-2}" -m "${TESTBED_L1_MEM:-2048}" \
                -nographic -no-reboot -nic none -pidfile "$PIDFILE" \
                -monitor "unix:$MONSOCK,server=on,wait=off" \
                -kernel "$GUEST/bzImage" -initrd "$L1_INITRD" \
                -append "console=ttyS0 quiet panic=-1 nokaslr testbed.scenarios=$list $RECYCLE_ARGS" \
                </dev/null 2>&1
        echo "__QEMU_RC=$?"
    )
    rc=255 deadline=$((SECONDS + STALL)) partial='' watchdog='' kill_at=0 last_heartbeat='' recycle=''
    boot_t0=$SECONDS
    on_line() {
        local clean=${1//$'\r'/}
        case "$clean" in
            __QEMU_RC=*) rc=${clean#__QEMU_RC=}; return ;;
            *TESTBED-BEGIN\ *) deadline=$((SECONDS + $(scenario_limit "${clean##*TESTBED-BEGIN }") + STALL)) ;;
            *TESTBED-END\ *)
                deadline=$((SECONDS + STALL))
                # QEMU's translation cache after each scenario (size, flushes).
                jit=$(monitor "info jit" | grep -E 'gen code size|TB count|TB flush count|TB invalidate count' |
                    sed 's/^info jit: *//; s/  */ /g' | tr '\n' ';' || true)
                [ -z "$jit" ] || printf 'run.sh: jit after %s: %s\n' "${clean##*TESTBED-END }" "$jit" >>"$LOG"
                ;;
            *TESTBED-KVM\ *)
                deadline=$((SECONDS + STALL))
                log "L1 #$boots is up after $((SECONDS - boot_t0)) s"
                ;;
            *TESTBED-HEARTBEAT\ *) last_heartbeat="${clean##*TESTBED-HEARTBEAT } at ${SECONDS}s" ;;
            *TESTBED-RECYCLE\ *) recycle=${clean##*TESTBED-RECYCLE } ;;
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
            watchdog=nmi kill_at=$((SECONDS + 20))
            log "watchdog: no progress from L1 for too long (TESTBED_STALL=${STALL}s); last heartbeat: ${last_heartbeat:-none}"
            # Where the vCPUs are, twice (spinning or stopped?), then an NMI for backtraces.
            for round in 1 2; do
                monitor "info cpus" "info registers -a" "info jit" |
                    grep -E '^info cpus|CPU#|RIP=|RSP=|^info registers -a: (CR0|EFER)|TB flush|gen code size|no answer' |
                    sed "s/^/run.sh: monitor($round): /" | tee -a "$LOG" >&2 || true
                sleep 1
            done
            # SysRq through the emulated keyboard: backtraces of the CPUs
            # (l) and of blocked tasks (w), if L1's kernel still takes interrupts.
            monitor "sendkey alt-sysrq-l" "sendkey alt-sysrq-w" >/dev/null
            sleep 5
            monitor nmi >/dev/null
            log "watchdog: sent SysRq l, w and an NMI to L1; killing QEMU in 20 s"
        elif [ "$watchdog" = nmi ] && [ $SECONDS -gt $kill_at ]; then
            watchdog=done
            log "watchdog: killing QEMU"
            [ ! -s "$PIDFILE" ] || kill "$(cat "$PIDFILE")" 2>/dev/null || true
        fi
    done
    exec {qfd}<&-
    rm -f "$PIDFILE" "$MONSOCK"
    [ "$rc" = 0 ] || log "qemu exited with status $rc$([ "$rc" = 124 ] && echo " (overall timeout ${TIMEOUT}s)")"
}

# L1 recycling: runner.sh stops after a scenario when this L1 has run
# TESTBED_RECYCLE_AFTER scenarios, or its MemAvailable fell below
# TESTBED_RECYCLE_MEM_MB (TESTBED-RECYCLE line, no TESTBED-DONE); a fresh L1
# then runs the scenarios without a result. A recycle never reruns a
# scenario and is not a failure; an L1 that dies or wedges is not recycled
# here (that is cargo test's retry, with its own budget).
RECYCLE_ARGS="testbed.recycle_after=$RECYCLE_AFTER testbed.recycle_mem_mb=$RECYCLE_MEM_MB testbed.kvmhold=${TESTBED_KVMHOLD:-1}"
log "a fresh L1 after $RECYCLE_AFTER scenarios or below $RECYCLE_MEM_MB MB available (0 = never)"
START=$SECONDS
: >"$LOG"
todo=("${selected[@]}")
boots=0
while :; do
    boots=$((boots + 1))
    boot_l1 "${todo[@]}"
    [ -n "$recycle" ] && [ "$rc" = 0 ] || break
    ended=$(tr -d '\r' <"$LOG" | sed -n 's/^TESTBED-END \([^ ]*\) .*/\1/p')
    next=()
    for n in "${todo[@]}"; do
        grep -qxF -- "$n" <<<"$ended" || next+=("$n")
    done
    [ ${#next[@]} -gt 0 ] || break
    [ ${#next[@]} -lt ${#todo[@]} ] || { log "error: L1 recycled without running a scenario"; break; }
    log "L1 $boots recycled ($recycle); booting a fresh L1 for ${#next[@]} scenario(s)"
    todo=("${next[@]}")
done
judge "$LOG"
