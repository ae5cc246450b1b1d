#!/bin/sh
# Control API robustness: GET /metrics counts vCPU exits (io_out grows while
# the guest prints), a malformed body gets 400 and leaves the guest running,
# an unknown path gets 404, two concurrent clients get only 200s.
# testbed-timeout: 180
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
api_scenario_init

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
