#!/bin/sh
# PCI hot-plug of a virtio-net NIC on a TAP passed as a descriptor
# (SCM_RIGHTS, `nubo-vmm api --fd-tap`): the guest gets the NIC
# (HOTPLUG_NET_VISIBLE_MS), pings L1 over it and L1 pings the guest; then
# remove-device answers 204 after the guest's eject and the TAP, whose last
# descriptor the VMM held, is gone.
# testbed-timeout: 180
API_CPUS=1
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
api_scenario_init
modprobe tun 2>/dev/null
[ -c /dev/net/tun ] || fail "/dev/net/tun missing in L1"
HOST_IP=192.168.128.1 GUEST_IP=192.168.128.2 TAP=nubohp0
start_vmm "quiet nubo.dhcp=0 nubo.then=hotplug nubo.ip=$GUEST_IP/24 nubo.peer=$HOST_IP"
wait_line NUBO-GUEST-READY "$READY_TIMEOUT"

t0=$(now)
api_ok PUT /vm/add-net '{"id":"hp-nic","mac":[82,84,0,18,52,120]}' --fd-tap "$TAP"
t1=$(now)
[ "$API_STATUS" = 200 ] || fail "add-net answered $API_STATUS, expected 200"
printf '%s' "$API_BODY" | grep -q '"kind":"net"' || fail "the answer is not a NIC"
ip addr add "$HOST_IP/24" dev "$TAP" && ip link set "$TAP" up || fail "cannot configure $TAP"
wait_line "NUBO-HP-NET-ADD .*mac=52:54:00:12:34:78" 10
t2=$(now)
echo "HOTPLUG_NET_VISIBLE_MS=$(ms_between "$t0" "$t2")"
echo "HOTPLUG_NET_AFTER_ANSWER_MS=$(ms_between "$t1" "$t2")"
# "ok" or "fa(il)": the whole word, as the console file grows byte by byte.
wait_line "NUBO-HP-NET-PING [a-z][a-z]" 20
grep -q "NUBO-HP-NET-PING ok" "$CON" || fail "the guest could not ping $HOST_IP"
ping -c 3 -W 2 "$GUEST_IP" >/dev/null || fail "L1 could not ping the guest"
echo "PING_BOTH_WAYS=ok"
api_ok GET /vm
printf '%s' "$API_BODY" | grep -q "\"id\":\"hp-nic\",\"kind\":\"net\"" || fail "GET /vm does not list hp-nic"

api PUT /vm/remove-device '{"id":"hp-nic"}'
[ "$API_STATUS" = 204 ] || fail "remove-device answered $API_STATUS, expected 204"
wait_line "NUBO-HP-NET-GONE" 5
ip link show "$TAP" >/dev/null 2>&1 && fail "the TAP outlived its removal"
echo "TAP_CLOSED=ok"
api_ok PUT /vm/stop
wait_exit 30
[ "$VMM_RC" = 0 ] || fail "VMM exit status '$VMM_RC' after stop"
echo "HOTPLUG_NET_OK"
