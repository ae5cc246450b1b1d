#!/bin/sh
# Control API: PUT /vm/shutdown presses the ACPI power button; the guest's
# acpid (guest/init.sh) powers off and the VMM exits 0 within 5 s.
# Also checks that the kernel's button driver bound the VMM's PNP0C0C button.
# testbed-timeout: 180
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
api_scenario_init

# Not quiet: the kernel's "input: Power Button" line shows the driver bound.
start_vmm "nubo.then=halt"
wait_line NUBO-GUEST-READY "$READY_TIMEOUT"
tr -d '\r' <"$CON" | grep -i 'Power Button' || fail "no 'Power Button' input device in the kernel log"
api_ok GET /vm
[ "$(json state)" = running ] || fail "state '$(json state)', expected running"

t0=$(now)
api_ok PUT /vm/shutdown
wait_exit 30
t1=$(now)
SHUTDOWN_MS=$(ms_between "$t0" "$t1")
echo "SHUTDOWN_MS=$SHUTDOWN_MS"
[ -n "$VMM_RC" ] || fail "the VMM did not exit within 30 s of PUT /vm/shutdown"
grep -q NUBO-GUEST-POWER-BUTTON "$CON" || fail "the guest's acpid handler did not run"
[ "$VMM_RC" = 0 ] || fail "VMM exit status $VMM_RC, expected 0"
[ "$SHUTDOWN_MS" -lt 5000 ] || fail "shutdown took ${SHUTDOWN_MS} ms (limit 5000)"
