#!/bin/sh
# PCI hot-plug of a virtio-blk disk (ACPI: GED interrupt, PCNT notify,
# acpiphp in the stock Debian kernel, _EJ0 eject):
#  1. hot-add a raw image passed as a descriptor (SCM_RIGHTS) with id
#     hp-disk-1: the guest sees it with that serial (HOTPLUG_DISK_VISIBLE_MS:
#     from starting `nubo-vmm api` to the console line; ..._AFTER_ANSWER_MS:
#     from its answer), writes a pattern and syncs;
#  2. remove-device answers 204 only after the guest ejected it; the pattern
#     is in the image on L1; GET /vm no longer lists it;
#  3. re-add the image by path as hp-disk-2: the guest reads the pattern back;
#  4. duplicate id -> 400, unknown id -> 404; resize-disk grows it and the
#     guest sees the new size;
#  5. PUT /vm/reboot: the hot-added disk is there again in the next boot;
#     remove it, stop.
# testbed-timeout: 240
API_CPUS=1
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
api_scenario_init
dd if=/dev/zero of="$WORK/hp.img" bs=1M count=8 2>/dev/null
start_vmm "quiet nubo.dhcp=0 nubo.then=hotplug"
wait_line NUBO-GUEST-READY "$READY_TIMEOUT"

info "1: hot-add with the image passed as a descriptor"
t0=$(now)
api_ok PUT /vm/add-disk "{\"path\":\"$WORK/hp.img\",\"read_only\":false,\"id\":\"hp-disk-1\",\"format\":\"raw\"}" \
    --fd-file "$WORK/hp.img"
t1=$(now)
[ "$API_STATUS" = 200 ] || fail "add-disk answered $API_STATUS, expected 200"
slot=$(json slot)
[ -n "$slot" ] || fail "no slot in the answer"
printf '%s' "$API_BODY" | grep -q '"bdf":"0000:00:' || fail "no bdf in the answer"
wait_line "NUBO-HP-DISK-ADD .*serial=hp-disk-1 " 10
t2=$(now)
echo "HOTPLUG_DISK_VISIBLE_MS=$(ms_between "$t0" "$t2")"
echo "HOTPLUG_DISK_AFTER_ANSWER_MS=$(ms_between "$t1" "$t2")"
# The whole line: the console file grows byte by byte.
wait_line 'NUBO-HP-DISK-WROTE name=vd[a-z]* pattern=NUBO-PATTERN-vd[a-z]*-[0-9a-f]\{8\}' 10
pattern=$(tr -d '\r' <"$CON" | sed -n 's/.*NUBO-HP-DISK-WROTE name=[^ ]* pattern=\([^ ]*\).*/\1/p' | head -n1)
[ -n "$pattern" ] || fail "the guest wrote no pattern"
api_ok GET /vm
printf '%s' "$API_BODY" | grep -q '"id":"hp-disk-1","kind":"disk"' || fail "GET /vm does not list hp-disk-1"

info "2: remove-device completes after the guest's eject"
t0=$(now)
api PUT /vm/remove-device '{"id":"hp-disk-1"}'
[ "$API_STATUS" = 204 ] || fail "remove-device answered $API_STATUS, expected 204"
echo "HOTPLUG_REMOVE_MS=$(ms_between "$t0" "$(now)")"
wait_line "NUBO-HP-DISK-GONE" 5
on_disk=$(dd if="$WORK/hp.img" bs=512 skip=8 count=1 2>/dev/null | head -n1)
[ "$on_disk" = "$pattern" ] || fail "hp.img holds '$on_disk', not '$pattern'"
echo "PATTERN_IN_IMAGE=ok"
api_ok GET /vm
printf '%s' "$API_BODY" | grep -q 'hp-disk-1' && fail "GET /vm still lists hp-disk-1"
grep -q "device removed" "$WORK/vmm.err" || fail "the VMM did not log the removal"

info "3: re-add by path; the guest reads the pattern back"
api_ok PUT /vm/add-disk "{\"path\":\"$WORK/hp.img\",\"read_only\":false,\"id\":\"hp-disk-2\",\"format\":\"raw\"}"
wait_line "NUBO-HP-DISK-READ .*pattern=$pattern" 10
echo "READBACK=ok"

info "4: errors and resize"
api PUT /vm/add-disk "{\"path\":\"$WORK/hp.img\",\"read_only\":true,\"id\":\"hp-disk-2\",\"format\":\"raw\"}"
[ "$API_STATUS" = 400 ] || fail "a duplicate id answered $API_STATUS, expected 400"
api PUT /vm/add-disk "{\"path\":\"$WORK/missing.img\",\"read_only\":true,\"id\":\"hp-x\",\"format\":\"raw\"}"
[ "$API_STATUS" = 400 ] || fail "a missing image answered $API_STATUS, expected 400"
api PUT /vm/remove-device '{"id":"nope"}'
[ "$API_STATUS" = 404 ] || fail "an unknown id answered $API_STATUS, expected 404"
api_ok PUT /vm/resize-disk '{"id":"hp-disk-2","size":16777216}'
wait_line "NUBO-HP-DISK-SIZE .*sectors=32768" 10
[ "$(stat -c %s "$WORK/hp.img")" = 16777216 ] || fail "hp.img did not grow"
echo "RESIZE=ok"

info "5: the hot-added disk stays across a reboot"
api_ok PUT /vm/reboot
wait_line NUBO-GUEST-READY "$READY_TIMEOUT" 2
wait_line "NUBO-HP-DISK-ADD .*serial=hp-disk-2 " 20 2
echo "SURVIVES_REBOOT=ok"
api PUT /vm/remove-device '{"id":"hp-disk-2","timeout_ms":20000}'
[ "$API_STATUS" = 204 ] || fail "remove-device after the reboot answered $API_STATUS"
api_ok PUT /vm/stop
wait_exit 30
[ "$VMM_RC" = 0 ] || fail "VMM exit status '$VMM_RC' after stop"
echo "HOTPLUG_DISK_OK"
