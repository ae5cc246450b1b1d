#!/bin/sh
# virtio-net on a TAP in L1: the guest pings L1's end of the TAP, L1 pings
# the guest, and a 16 MiB TCP stream from L1 to the guest arrives intact
# (md5). Everything stays inside the L1 VM; the TAP goes away with the VMM.
# testbed-timeout: 240
. "$TESTBED_LIB"
need_vmm
modprobe tun 2>/dev/null
[ -c /dev/net/tun ] || fail "/dev/net/tun missing in L1"
HOST_IP=192.168.127.1 GUEST_IP=192.168.127.2 TAP=nubotap0
"$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" \
    --cmdline "console=ttyS0 nubo.then=netcheck nubo.ip=$GUEST_IP/24 nubo.peer=$HOST_IP" \
    --cpus 2 --memory 512M --net "tap=$TAP,mac=52:54:00:12:34:56" \
    >console.out 2>vmm.err </dev/null &
VMM=$!
trap 'kill $VMM 2>/dev/null' EXIT
i=0
until ip link show "$TAP" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "the VMM made no TAP"; usleep 50000
done
ip addr add "$HOST_IP/24" dev "$TAP" && ip link set "$TAP" up || fail "cannot configure $TAP"
i=0
until grep -q NUBO-NET-LISTEN console.out; do
    i=$((i + 1))
    [ $i -lt 1200 ] || { cat console.out vmm.err; fail "the guest never listened"; }
    kill -0 $VMM 2>/dev/null || { cat console.out vmm.err; fail "the VMM exited early"; }
    usleep 100000
done
cat console.out
grep -q "NUBO-NET-PING ok" console.out || fail "the guest could not ping $HOST_IP"
ping -c 3 -W 2 "$GUEST_IP" >/dev/null || fail "L1 could not ping the guest"
echo "HOST_PING=ok"
dd if=/dev/urandom of=payload bs=1M count=16 2>/dev/null
sent=$(md5sum <payload | cut -d' ' -f1)
read -r t0 _ </proc/uptime
nc "$GUEST_IP" 5000 <payload || fail "the TCP send failed"
read -r t1 _ </proc/uptime
echo "TCP_16MIB_MS=$(ms_between "$t0" "$t1")"
i=0
while kill -0 $VMM 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "the guest did not power off"; usleep 100000
done
wait $VMM; rc=$?
trap - EXIT
tr -d '\r' <console.out >console.txt
if ! grep "NUBO-NET-RECV" console.txt; then
    tail -n 30 console.txt; cat vmm.err
    fail "the guest reported no NUBO-NET-RECV (VMM exit status $rc)"
fi
grep -q "NUBO-NET-RECV bytes=16777216 md5=$sent" console.txt || fail "the guest received something else (sent md5 $sent)"
[ "$rc" = 0 ] || fail "the VMM exited $rc"
ip link show "$TAP" >/dev/null 2>&1 && fail "the TAP outlived the VMM"
echo "NET_OK"
