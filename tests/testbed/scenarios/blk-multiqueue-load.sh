#!/bin/sh
# virtio-blk under load (#13): a data disk with two request queues and
# cache=none (io_uring with O_DIRECT; on a loop device, as L1's own files sit
# on tmpfs, which has no O_DIRECT) while the guest runs 2 direct writers and
# 2 direct readers at once. The guest sees two blk-mq queues, every region
# reads back as written (in the guest and in the device afterwards), no
# request fails, and the control socket answers GET /vm within 50 ms (p99)
# the whole time. (One disk only: with two such disks under load the nested
# emulation crashed L1 itself, "stack guard page was hit" in a vCPU thread,
# in about half the runs.) The thread-pool engine runs in blk-root-and-disks.
# testbed-timeout: 240
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
api_scenario_init
LOOP=
cleanup_load() {
    cleanup
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    rm -f "$WORK/direct.img"
}
trap cleanup_load EXIT

truncate -s 16M "$WORK/direct.img"
modprobe loop 2>/dev/null || true
LOOP=$(losetup -f) || fail "no free loop device"
losetup "$LOOP" "$WORK/direct.img" || fail "losetup $LOOP failed"

API_CPUS=2 start_vmm "quiet nubo.then=blkload nubo.load_secs=6 nubo.load_workers=2 nubo.dhcp=0" \
    --disk "path=$LOOP,id=nubo-direct,queues=2,cache=none"
wait_line NUBO-GUEST-READY "$READY_TIMEOUT"
wait_line NUBO-BLKLOAD-RUNNING 30
"$NUBO_VMM" api "$SOCK" GET /vm --repeat 150 --interval-ms 20 >"$WORK/latency.txt" 2>&1 ||
    { cat "$WORK/latency.txt"; fail "GET /vm failed under load"; }
lat=$(grep '^API-LATENCY' "$WORK/latency.txt")
echo "$lat"
wait_line NUBO-BLKLOAD-DONE 60
wait_exit 30
[ "$VMM_RC" = 0 ] || fail "VMM exit status '$VMM_RC' after the guest powered off, expected 0"

con() { tr -d '\r' <"$CON"; }
con | grep -E '^NUBO-BLKLOAD-(DISK|DONE)'
con | grep -q "^NUBO-BLKLOAD-DISK name=vda queues=2$" || fail "vda does not show two blk-mq queues"
done_line=$(con | grep '^NUBO-BLKLOAD-DONE')
case "$done_line" in *" errors=0") ;; *) fail "guest I/O errors: $done_line" ;; esac
writes=$(echo "$done_line" | sed -n 's/.* writes=\([0-9]*\).*/\1/p')
[ "${writes:-0}" -gt 0 ] || fail "no write completed under load"
# Every region: what the guest wrote = what it read back = what is on the device.
for k in 0 1; do
    line=$(con | grep "^NUBO-BLKLOAD-REGION name=vda k=$k ") || fail "no region $k"
    want=$(echo "$line" | sed -n 's/.* want=\([0-9a-f]*\).*/\1/p')
    got=$(echo "$line" | sed -n 's/.* got=\([0-9a-f]*\).*/\1/p')
    [ -n "$want" ] && [ "$want" = "$got" ] || fail "region $k read back wrong in the guest: $line"
    dev=$(dd if="$LOOP" bs=1M skip="$k" count=1 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$dev" = "$want" ] || fail "region $k: the device holds $dev, the guest wrote $want"
done
echo "REGIONS_VERIFIED=2"
ok=$(echo "$lat" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
p99=$(echo "$lat" | sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p')
[ "$ok" = 150 ] || fail "GET /vm under load: $lat"
awk -v p="$p99" 'BEGIN { exit !(p != "" && p <= 50) }' || fail "GET /vm p99 ${p99} ms under load, over 50 ms"
echo "API_P99_MS=$p99"
