#!/bin/sh
# Control API: a guest that ignores the power button (nubo.ignore_power=1:
# no acpid) is stopped by the VMM after PUT /vm/shutdown's timeout_s; the
# state is shutting-down meanwhile and the VMM exits 0 after >= 2 s, < 6 s.
# testbed-timeout: 180
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
api_scenario_init

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
