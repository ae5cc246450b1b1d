#!/bin/sh
# Control API and --on-reboot restart:
#  1. nubo.then=halt: PUT /vm/reboot -> the guest boots again in the same VMM
#     (a second NUBO-GUEST-READY), GET /vm says boot_count 2; PUT /vm/stop -> 0.
#  2. nubo.then=reboot: the guest reboots itself and comes back; after the
#     second readiness line PUT /vm/stop -> exit status 0.
# testbed-timeout: 300
#
# One vCPU: restarting a 2-vCPU guest inside the same VMM crashes L1's own
# kernel now and then under QEMU/TCG's emulated SVM (a recursive page fault
# in a vCPU thread, GS base lost after a VM exit: "stack guard page was hit",
# "corrupted stack end"); 2-vCPU boots are covered by boot-*-2cpu.
API_CPUS=1
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
api_scenario_init

stop_vmm() {
    api_ok PUT /vm/stop
    wait_exit 30
    [ -n "$VMM_RC" ] || fail "the VMM did not exit within 30 s of PUT /vm/stop"
    [ "$VMM_RC" = 0 ] || fail "VMM exit status $VMM_RC after stop, expected 0"
}

info "part 1: PUT /vm/reboot"
start_vmm "quiet nubo.then=halt" --on-reboot restart
wait_line NUBO-GUEST-READY "$READY_TIMEOUT"
api_ok GET /vm
[ "$(json boot_count)" = 1 ] || fail "boot_count '$(json boot_count)', expected 1"
t0=$(now)
api_ok PUT /vm/reboot
wait_line NUBO-GUEST-READY "$READY_TIMEOUT" 2
echo "REBOOT_MS=$(ms_between "$t0" "$(now)")"
api_ok GET /vm
[ "$(json boot_count)" = 2 ] || fail "boot_count '$(json boot_count)' after the reboot, expected 2"
[ "$(json state)" = running ] || fail "state '$(json state)' after the reboot, expected running"
vmm_exited && fail "the VMM exited on reboot despite --on-reboot restart"
stop_vmm
cp "$CON" "$WORK/console-part1.log"

info "part 2: the guest reboots itself"
start_vmm "quiet nubo.then=reboot" --on-reboot restart
wait_line NUBO-GUEST-READY "$READY_TIMEOUT" 2
api_ok GET /vm
n=$(json boot_count)
[ "$n" -ge 2 ] || fail "boot_count '$n' after the guest rebooted, expected >= 2"
stop_vmm
echo "BOOTS=$(grep -c NUBO-GUEST-READY "$CON")"
