#!/bin/sh
# Control API: pause/resume. The guest prints "COUNTER n uptime" every 0.1 s
# (nubo.then=counter). While paused no COUNTER lines appear; after resume
# they continue within 1 s with n+1 (no gap). The guest's uptime across the
# pause is reported (GUEST_DELTA_MS vs PAUSE_MS); it must not go backwards or
# jump by more than 10 s. Then PUT /vm/stop -> exit status 0.
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

counter_uptime() { # counter_uptime N: the uptime field of "COUNTER N ..."
    tr -d '\r' <"$CON" | awk -v n="$1" '$1 == "COUNTER" && $2 == n { print $3; exit }'
}

start_vmm "quiet nubo.then=counter"
wait_line NUBO-GUEST-READY "$READY_TIMEOUT"
wait_line '^COUNTER 5 ' 30

tp=$(now)
api_ok PUT /vm/pause
api_ok GET /vm
[ "$(json state)" = paused ] || fail "state '$(json state)' after pause, expected paused"
usleep 200000   # let a line the VMM was writing land
c1=$(last_counter)
echo "paused at COUNTER $c1"
sleep 1
c2=$(last_counter)
[ "$c2" = "$c1" ] || fail "COUNTER went from $c1 to $c2 while paused"
api_ok GET /vm
[ "$(json state)" = paused ] || fail "state '$(json state)' while paused"

tr=$(now)
api_ok PUT /vm/resume
PAUSE_MS=$(ms_between "$tp" "$tr")
end=$(awk -v t="$tr" 'BEGIN { print t + 1 }')
while [ "$(last_counter)" = "$c1" ]; do
    awk -v t="$(now)" -v e="$end" 'BEGIN { exit !(t > e) }' && fail "no new COUNTER line within 1 s of resume"
    usleep 20000
done
RESUME_MS=$(ms_between "$tr" "$(now)")
api_ok GET /vm
[ "$(json state)" = running ] || fail "state '$(json state)' after resume, expected running"
wait_line "^COUNTER $((c1 + 5)) " 10

# No gaps: the counter values are exactly 1..N (the last line may be partial).
tr -d '\r' <"$CON" | sed '$d' | awk '$1 == "COUNTER" { if ($2 != ++n) { print "gap: expected " n ", got " $2; bad = 1; exit } }
    END { exit bad }' || fail "the counter skipped a value"

u1=$(counter_uptime "$c1") u2=$(counter_uptime "$((c1 + 1))")
GUEST_DELTA_MS=$(ms_between "$u1" "$u2")
echo "PAUSE_MS=$PAUSE_MS RESUME_MS=$RESUME_MS"
echo "GUEST_UPTIME_BEFORE=$u1 GUEST_UPTIME_AFTER=$u2 GUEST_DELTA_MS=$GUEST_DELTA_MS"
if [ "$GUEST_DELTA_MS" -lt $((PAUSE_MS + 1000)) ]; then
    echo "# the pause was not counted in full as guest time"
else
    echo "# NOTE: the guest's uptime advanced by the whole pause (${GUEST_DELTA_MS} ms across a ${PAUSE_MS} ms pause)"
fi
[ "$GUEST_DELTA_MS" -ge 0 ] || fail "guest uptime went backwards across the pause ($u1 -> $u2)"
[ "$GUEST_DELTA_MS" -le 10000 ] || fail "guest uptime jumped by ${GUEST_DELTA_MS} ms across the pause"

api_ok PUT /vm/stop
wait_exit 30
[ -n "$VMM_RC" ] || fail "the VMM did not exit within 30 s of PUT /vm/stop"
[ "$VMM_RC" = 0 ] || fail "VMM exit status $VMM_RC after stop, expected 0"
