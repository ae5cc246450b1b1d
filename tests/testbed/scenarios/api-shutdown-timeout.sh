#!/bin/sh
# Control API: a guest that ignores the power button (nubo.ignore_power=1:
# no acpid) is stopped by the VMM after PUT /vm/shutdown's timeout_s; the
# state is shutting-down meanwhile and the VMM exits 0 after >= 2 s, < 6 s.
# testbed-timeout: 180
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
# --- API scenario helpers (the same block is in every api-*.sh) ---
need_vmm
SOCK=$WORK/api.sock CON=$WORK/console.log
READY_TIMEOUT=${READY_TIMEOUT:-120}
# start_vmm "CMDLINE WORDS" [EXTRA VMM ARGS...]: the VMM runs in the
# background; its pid goes to vmm.pid, its exit status to vmm.rc.
start_vmm() {
    words=$1; shift
    rm -f "$WORK/vmm.pid" "$WORK/vmm.rc" "$SOCK"; : >"$CON"
    info "run: nubo-vmm run --cmdline 'console=ttyS0 $words' --cpus 2 --memory 512M --api-socket $SOCK $*"
    (
        "$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" \
            --cmdline "console=ttyS0 $words" --cpus 2 --memory 512M \
            --serial "file=$CON" --api-socket "$SOCK" "$@" \
            </dev/null >"$WORK/vmm.out" 2>"$WORK/vmm.err" &
        echo $! >"$WORK/vmm.pid"
        wait $! && rc=0 || rc=$?
        echo "$rc" >"$WORK/vmm.rc"
    ) &
    while [ ! -s "$WORK/vmm.pid" ]; do usleep 10000; done
}
vmm_exited() { [ -s "$WORK/vmm.rc" ]; }
cleanup() {
    if [ -s "$WORK/vmm.pid" ] && ! vmm_exited; then
        info "killing the VMM"
        kill -9 "$(cat "$WORK/vmm.pid")" 2>/dev/null || true
    fi
    if [ -s "$WORK/vmm.err" ]; then echo "--- VMM stderr ---"; cat "$WORK/vmm.err"; echo "--- end ---"; fi
    echo "--- console (last 15 lines) ---"; tail -n 15 "$CON" 2>/dev/null | tr -d '\r'; echo "--- end ---"
}
trap cleanup EXIT
now() { read -r u _ </proc/uptime; echo "$u"; }
# wait_line PATTERN SECONDS [COUNT]: wait until COUNT (1) console lines match.
wait_line() {
    end=$(awk -v t="$(now)" -v s="$2" 'BEGIN { print t + s }')
    while [ "$(grep -c -- "$1" "$CON" 2>/dev/null || true)" -lt "${3:-1}" ]; do
        vmm_exited && fail "the VMM exited (status $(cat "$WORK/vmm.rc")) while waiting for '$1'"
        awk -v t="$(now)" -v e="$end" 'BEGIN { exit !(t > e) }' && fail "no '$1' (x${3:-1}) on the console within $2 s"
        usleep 50000
    done
}
# wait_exit SECONDS: wait for the VMM to exit; sets VMM_RC (empty on timeout).
wait_exit() {
    end=$(awk -v t="$(now)" -v s="$1" 'BEGIN { print t + s }')
    VMM_RC=
    while ! vmm_exited; do
        awk -v t="$(now)" -v e="$end" 'BEGIN { exit !(t > e) }' && return 0
        usleep 20000
    done
    VMM_RC=$(cat "$WORK/vmm.rc")
}
# api METHOD PATH [BODY]: sets API_STATUS and API_BODY (never fails).
api() {
    out=$("$NUBO_VMM" api "$SOCK" "$@" 2>&1) || true
    API_STATUS=$(printf '%s\n' "$out" | sed -n 1p)
    API_BODY=$(printf '%s\n' "$out" | sed -n '2,$p')
    echo "api $*: $API_STATUS $(printf '%s' "$API_BODY" | head -c 300)"
}
api_ok() { api "$@"; case "$API_STATUS" in 2??) ;; *) fail "$*: HTTP status '$API_STATUS'" ;; esac; }
json() { printf '%s\n' "$API_BODY" | sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" | head -n1; }
last_counter() { tr -d '\r' <"$CON" | sed -n 's/^COUNTER \([0-9][0-9]*\) .*/\1/p' | tail -n1; }
# --- end of the helper block ---

start_vmm "quiet nubo.ignore_power=1 nubo.then=halt"
wait_line NUBO-GUEST-READY "$READY_TIMEOUT"

t0=$(now)
api_ok PUT /vm/shutdown '{"timeout_s": 2}'
api_ok GET /vm
state=$(json state)
[ "$state" = shutting-down ] || fail "state '$state' after the shutdown request, expected shutting-down"
wait_exit 30
t1=$(now)
SHUTDOWN_MS=$(ms_between "$t0" "$t1")
echo "SHUTDOWN_MS=$SHUTDOWN_MS"
[ -n "$VMM_RC" ] || fail "the VMM did not exit within 30 s of PUT /vm/shutdown"
[ "$VMM_RC" = 0 ] || fail "VMM exit status $VMM_RC, expected 0"
! grep -q NUBO-GUEST-POWER-BUTTON "$CON" || fail "the guest handled the power button despite nubo.ignore_power=1"
[ "$SHUTDOWN_MS" -ge 2000 ] || fail "the VMM stopped after ${SHUTDOWN_MS} ms, before the 2 s timeout"
[ "$SHUTDOWN_MS" -lt 6000 ] || fail "the VMM stopped after ${SHUTDOWN_MS} ms (limit 6000)"
