#!/usr/bin/env bash
# Boot the testbed's L1 VM in "serve" mode: no scenarios; instead the nubo
# daemon runs inside L1 (with kvm-amd, so its nubo-vmm guests boot) and two
# ports are forwarded from the host's 127.0.0.1:
#
#   APIPORT -> L1:8774   the daemon (`nubo serve`, public URL http://127.0.0.1:APIPORT)
#   CTLPORT -> L1:8775   test-only control: POST a shell script to /cgi-bin/exec,
#                        get its output and a final `EXIT=<status>` line
#
#   tests/testbed/serve.sh        # prints "APIPORT CTLPORT", then runs until L1 powers off
#
# L1's network is QEMU user networking with restrict=on: L1 reaches nothing
# outside; only the two forwards reach in. Stop it with
#   curl -s --data-binary 'poweroff -f' http://127.0.0.1:CTLPORT/cgi-bin/exec
# or by killing this script (SIGINT/SIGTERM kill QEMU).
#
# Output (stdout): the line "APIPORT CTLPORT" first, then "TESTBED-SERVE ready"
# when the control server is up (or "TESTBED-SERVE failed: ..."). The L1
# console goes to $TESTBED_OUT/console.log.
#
# Environment:
#   TESTBED_API_PORT / TESTBED_CTL_PORT  host ports (default: free ones)
#   TESTBED_SERVE_TIMEOUT   overall limit in seconds (default 3600)
#   TESTBED_SERVE_BOOT      seconds to reach "TESTBED-SERVE ready" (default 300)
#   TESTBED_SERVE_PARENT    a pid: when it is gone, QEMU is killed (the test harness)
#   TESTBED_OUT             output dir (default target/testbed-serve)
#   NUBO_VMM / NUBO_BIN     binaries put into L1 (default target/release/{nubo-vmm,nubo})
#   TESTBED_L1_CPUS / TESTBED_L1_MEM   L1 size (default 2 / 3072)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUTDIR=${TESTBED_OUT:-$ROOT/target/testbed-serve}
LOG=$OUTDIR/console.log
TIMEOUT=${TESTBED_SERVE_TIMEOUT:-3600}
BOOT=${TESTBED_SERVE_BOOT:-300}
PARENT=${TESTBED_SERVE_PARENT:-}
export NUBO_VMM=${NUBO_VMM:-$ROOT/target/release/nubo-vmm}
export NUBO_BIN=${NUBO_BIN:-$ROOT/target/release/nubo}
mkdir -p "$OUTDIR"

log() { echo "serve.sh: $*" >&2; }
die() { log "error: $*"; echo "TESTBED-SERVE failed: $*"; exit 2; }

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
API_PORT=${TESTBED_API_PORT:-$(free_port)}
CTL_PORT=${TESTBED_CTL_PORT:-$(free_port)}
[ "$API_PORT" != "$CTL_PORT" ] || CTL_PORT=$(free_port)

"$ROOT/guest/build.sh" >/dev/null
export NUBO_GUEST_BUILT=1
GUEST=${NUBO_GUEST_OUT:-$ROOT/guest/out}
L1_INITRD=$(TESTBED_WITH_QEMU=0 "$HERE/build-l1.sh" "$OUTDIR/l1-initramfs.cpio")
[ -x "$NUBO_BIN" ] || log "warning: no nubo daemon at $NUBO_BIN: nothing will listen on the API port"

echo "$API_PORT $CTL_PORT"
log "booting L1 (api 127.0.0.1:$API_PORT, ctl 127.0.0.1:$CTL_PORT, timeout ${TIMEOUT}s), console -> $LOG"

PIDFILE=$OUTDIR/qemu.$$.pid
rm -f "$PIDFILE"
: >"$LOG"
kill_qemu() {
    if [ -s "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; fi
}
trap 'kill_qemu; exit 130' INT
trap 'kill_qemu; exit 143' TERM
trap 'kill_qemu; rm -f "$PIDFILE"' EXIT

timeout -k 10 "$TIMEOUT" \
    qemu-system-x86_64 -accel "tcg,thread=${TESTBED_TCG_THREAD:-multi}" -cpu max,-xsave -M q35 \
        -smp "${TESTBED_L1_CPUS:-2}" -m "${TESTBED_L1_MEM:-3072}" \
        -display none -monitor none -serial "file:$LOG" -no-reboot \
        -nic "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$API_PORT-:8774,hostfwd=tcp:127.0.0.1:$CTL_PORT-:8775" \
        -pidfile "$PIDFILE" \
        -kernel "$GUEST/bzImage" -initrd "$L1_INITRD" \
        -append "console=ttyS0 quiet panic=-1 testbed.serve=1 testbed.apiport=$API_PORT testbed.serve_timeout=$TIMEOUT" \
        </dev/null 2>"$OUTDIR/qemu.stderr" &
qpid=$!

# Watchdog: L1 must say "TESTBED-SERVE ready" within $BOOT s; the harness
# (TESTBED_SERVE_PARENT) must stay alive; a soft lockup is reported once.
ready='' lockup='' start=$SECONDS
while kill -0 "$qpid" 2>/dev/null; do
    if [ -z "$ready" ] && grep -q 'TESTBED-SERVE ready' "$LOG" 2>/dev/null; then
        ready=1
        echo "TESTBED-SERVE ready"
        log "L1 ready after $((SECONDS - start)) s"
    fi
    if [ -z "$ready" ] && [ $((SECONDS - start)) -gt "$BOOT" ]; then
        log "watchdog: no 'TESTBED-SERVE ready' within ${BOOT}s; killing QEMU"
        echo "TESTBED-SERVE failed: L1 not ready within ${BOOT}s (see $LOG)"
        kill_qemu
    fi
    if [ -n "$PARENT" ] && ! kill -0 "$PARENT" 2>/dev/null; then
        log "parent $PARENT is gone; killing QEMU"
        kill_qemu
    fi
    if [ -z "$lockup" ] && grep -q 'soft lockup - CPU#' "$LOG" 2>/dev/null; then
        lockup=1
        log "warning: L1 reports a soft lockup (the known nested hang); see $LOG"
    fi
    sleep 1
done
rc=0
wait "$qpid" || rc=$?
[ -n "$ready" ] || echo "TESTBED-SERVE failed: QEMU exited (status $rc) before L1 was ready; $(tail -c 300 "$OUTDIR/qemu.stderr" | tr '\n' ' ')"
log "qemu exited with status $rc$([ "$rc" = 124 ] && echo " (overall timeout ${TIMEOUT}s)")"
exit "$rc"
