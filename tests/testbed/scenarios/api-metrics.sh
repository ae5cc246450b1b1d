#!/bin/sh
# Control API robustness: GET /metrics counts vCPU exits (io_out grows while
# the guest prints), a malformed body gets 400 and leaves the guest running,
# an unknown path gets 404, two concurrent clients get only 200s.
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

io_out() { # from the last GET /metrics
    printf '%s\n' "$API_BODY" | awk '$1 == "nubo_vcpu_exits_total{reason=\"io_out\"}" { print $2; exit }'
}

start_vmm "quiet nubo.then=counter"
wait_line NUBO-GUEST-READY "$READY_TIMEOUT"
wait_line '^COUNTER 3 ' 30

api_ok GET /metrics
m1=$(io_out)
sleep 1
api_ok GET /metrics
m2=$(io_out)
echo "IO_OUT_EXITS=$m1 -> $m2"
{ [ -n "$m1" ] && [ -n "$m2" ]; } || fail "no nubo_vcpu_exits_total{reason=\"io_out\"} in /metrics"
[ "$m2" -gt "$m1" ] || fail "io_out exits did not grow ($m1 -> $m2)"

api PUT /vm/shutdown '{bad'
[ "$API_STATUS" = 400 ] || fail "malformed shutdown body: HTTP $API_STATUS, expected 400"
api_ok GET /vm
[ "$(json state)" = running ] || fail "state '$(json state)' after a malformed request, expected running"
c=$(last_counter)
wait_line "^COUNTER $((c + 3)) " 10

api GET /no/such/path
[ "$API_STATUS" = 404 ] || fail "unknown path: HTTP $API_STATUS, expected 404"

# Two clients at once.
for k in 1 2; do
    (
        i=0
        while [ $i -lt 10 ]; do
            # (capture whole answers: the client aborts if its stdout closes early)
            for path in /vm /metrics; do
                out=$("$NUBO_VMM" api "$SOCK" GET "$path" 2>&1) || true
                printf '%s\n' "$out" | sed -n 1p >>"$WORK/client$k.txt"
            done
            i=$((i + 1))
        done
    ) &
done
wait_clients_end=$(awk -v t="$(now)" 'BEGIN { print t + 60 }')
while [ "$(cat "$WORK/client1.txt" "$WORK/client2.txt" 2>/dev/null | wc -l)" -lt 40 ]; do
    awk -v t="$(now)" -v e="$wait_clients_end" 'BEGIN { exit !(t > e) }' && fail "the concurrent clients did not finish within 60 s"
    usleep 50000
done
echo "concurrent clients: $(sort "$WORK/client1.txt" "$WORK/client2.txt" | uniq -c | tr '\n' ' ')"
[ "$(cat "$WORK/client1.txt" "$WORK/client2.txt" | grep -cvx 200 || true)" = 0 ] ||
    fail "a concurrent client got a non-200 answer"
api_ok GET /vm
[ "$(json state)" = running ] || fail "state '$(json state)' after the concurrent clients"

api_ok PUT /vm/stop
wait_exit 30
[ -n "$VMM_RC" ] || fail "the VMM did not exit within 30 s of PUT /vm/stop"
[ "$VMM_RC" = 0 ] || fail "VMM exit status $VMM_RC after stop, expected 0"
