#!/bin/sh
# Control API: pause/resume. The guest prints "COUNTER n uptime" every 0.1 s
# (nubo.then=counter). While paused no COUNTER lines appear; after resume
# they continue within 1 s with n+1 (no gap). The guest's uptime across the
# pause is reported (GUEST_DELTA_MS vs PAUSE_MS); it must not go backwards or
# jump by more than 10 s. Then PUT /vm/stop -> exit status 0.
# testbed-timeout: 180
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
api_scenario_init

counter_uptime() { # counter_uptime N: the uptime field of "COUNTER N ..."
    tr -d '\r' <"$CON" | awk -v n="$1" '$1 == "COUNTER" && $2 == n { print $3; exit }'
}

# Two vCPUs: pausing must stop (and resuming restart) every vCPU thread.
API_CPUS=2
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
