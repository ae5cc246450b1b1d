#!/bin/sh
# Device I/O benchmark inside the testbed's L1: nubo-vmm and QEMU+KVM boot the
# same kernel + initramfs into the bench rootfs (guest/bench-build.sh, vda,
# read-only) with a raw test disk (vdb, a file in L1's tmpfs) and a TAP. The
# guest runs fio on vdb and iperf3 against L1 (bench.sh in the image). L1's
# own fio on the same file through a loop device is the ceiling. ROUNDS
# alternating rounds with 1 vCPU and one queue (fio QD1 and QD32 random 4 KiB,
# 1 MiB sequential, iperf3 both ways), ROUNDS2 with 2 vCPUs and 2 queues
# (QD32 as two 16-deep jobs), and one nubo-vmm run measuring `GET /vm`
# while fio saturates the disk. One line per result:
#   BENCH vmm=<l1|nubo|qemu> cfg=<1q|2q> round=<n> fio=<job> iops=<n> bw_kib=<n>
#   BENCH vmm=<nubo|qemu> cfg=1q round=<n> net=<g2h|h2g> mbps=<n>
#   BENCH vmm=<nubo|qemu> cfg=<cfg> round=<n> irq=<job> irqs=<n> ios=<n>
#   BENCH vmm=nubo api=GET_/vm API-LATENCY n=… ok=… p50_ms=… p99_ms=… max_ms=…
# Needs, next to this script (bench/io.py stages them): bench-rootfs.ext4 and
# loop.ko (L1 has no loop module of its own).
# testbed-needs: qemu
# testbed-timeout: 1500
. "$TESTBED_LIB"
need_vmm
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not in L1"
DIR=$(cd "$(dirname "$0")" && pwd)
IMG=${BENCH_ROOTFS:-$DIR/bench-rootfs.ext4}
[ -f "$IMG" ] || skip "no $IMG (run guest/bench-build.sh; bench/io.py stages it)"
RUNTIME=${BENCH_RUNTIME:-5} NETTIME=${BENCH_NETTIME:-5} DISK_MB=${BENCH_DISK_MB:-1024}
ROUNDS=${BENCH_ROUNDS:-5} ROUNDS2=${BENCH_ROUNDS2:-5}
# One testbed session of several (bench/io.py stages bench-params next to
# this script, so that an L1 crash costs one session, not the whole run):
# ROUND0 (number of this session's first round), ROUNDS/ROUNDS2 (how many
# rounds this session still runs), L1_CEILING=0 / API_LATENCY=0 to skip them.
# ENGINE_ROUNDS (bench/io.py --engines): rounds of QD32 random 4 KiB with
# nubo-vmm on io_uring and on its thread pool, QEMU on aio=threads and on
# aio=io_uring (cfg=eng-<engine>).
ROUND0=1 L1_CEILING=1 API_LATENCY=1 ENGINE_ROUNDS=0
# shellcheck disable=SC1091
[ ! -f "$DIR/bench-params" ] || . "$DIR/bench-params"
HOST_IP=192.168.127.1 GUEST_IP=192.168.127.2
J1=randread-4k-qd1,randwrite-4k-qd1,randread-4k-qd32,randwrite-4k-qd32,seqread-1m,seqwrite-1m
J2=randread-4k-qd32-j2,randwrite-4k-qd32-j2
BASE="console=ttyS0 quiet root=/dev/vda nubo.bench=1 nubo.bench_runtime=$RUNTIME nubo.bench_net_time=$NETTIME nubo.ip=$GUEST_IP/24 nubo.peer=$HOST_IP"
modprobe tun 2>/dev/null || true
[ -c /dev/net/tun ] || fail "/dev/net/tun missing in L1"
modprobe loop 2>/dev/null || insmod "$DIR/loop.ko" 2>/dev/null || true
[ -e /dev/loop-control ] || [ -b /dev/loop0 ] || fail "no loop device support in L1"

info "test disk: ${DISK_MB} MiB in $(df -h . | awk 'NR == 2 { print $1 }')"
dd if=/dev/zero of=disk.img bs=1M count="$DISK_MB" 2>/dev/null || fail "cannot create the test disk"

# fio and iperf3 for L1 itself come from the bench image.
T=$WORK/tools
mkdir -p "$T"
mount -o loop,ro "$IMG" "$T" || fail "cannot loop-mount $IMG"
mount -t tmpfs tmpfs "$T/tmp" && mount -o bind /dev "$T/dev" && mount -t proc proc "$T/proc" ||
    fail "cannot prepare the chroot"
cleanup() {
    [ -z "${IPERF:-}" ] || kill "$IPERF" 2>/dev/null
    [ -z "${VMPID:-}" ] || kill "$VMPID" 2>/dev/null
    sleep 1
    umount "$T/proc" "$T/dev" "$T/tmp" "$T" 2>/dev/null
    [ -z "${LOOPDEV:-}" ] || losetup -d "$LOOPDEV" 2>/dev/null
}
trap cleanup EXIT
chroot "$T" fio --version || fail "fio does not run in L1"

# --- L1 ceiling: same fio jobs on the same file through a loop device.
[ "$L1_CEILING" = 1 ] && {
LOOPDEV=$(losetup -f) && losetup "$LOOPDEV" disk.img || fail "losetup failed"
for job in "randread-4k-qd1 randread 4k 1" "randwrite-4k-qd1 randwrite 4k 1" \
           "randread-4k-qd32 randread 4k 32" "randwrite-4k-qd32 randwrite 4k 32" \
           "seqread-1m read 1M 8" "seqwrite-1m write 1M 8"; do
    set -- $job
    line=$(chroot "$T" fio --name="$1" --filename="$LOOPDEV" --rw="$2" --bs="$3" --iodepth="$4" \
               --ioengine=libaio --direct=1 --size=100% --runtime="$RUNTIME" --time_based \
               --ramp_time=1 --group_reporting --output-format=terse --terse-version=3 2>&1 | tail -n1) || true
    case "$2" in
        *read) bw=$(echo "$line" | cut -d';' -f7) iops=$(echo "$line" | cut -d';' -f8) ;;
        *)     bw=$(echo "$line" | cut -d';' -f48) iops=$(echo "$line" | cut -d';' -f49) ;;
    esac
    echo "BENCH vmm=l1 cfg=1q round=1 fio=$1 iops=$iops bw_kib=$bw"
done
losetup -d "$LOOPDEV"; LOOPDEV=
}

chroot "$T" iperf3 -s >iperf-server.log 2>&1 &
IPERF=$!

# run_vm NAME TAP CMD...: boot in the background, configure the TAP in L1 when
# it appears, wait for the guest to power off, report its BENCH_* lines.
run_vm() {
    name=$1 tap=$2 label=$3; shift 3
    info "run: $*"
    "$@" >"$name.out" 2>"$name.err" </dev/null &
    VMPID=$!
    i=0
    until ip link show "$tap" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -ge 600 ] || ! kill -0 $VMPID 2>/dev/null; then
            cat "$name.out" "$name.err"; fail "$name: no TAP $tap"
        fi
        usleep 50000
    done
    ip addr add "$HOST_IP/24" dev "$tap" && ip link set "$tap" up || fail "cannot configure $tap"
    i=0
    while kill -0 $VMPID 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 6000 ] || { kill $VMPID; info "$name: killed after 600 s"; break; }
        usleep 100000
    done
    rc=0; wait $VMPID || rc=$?
    VMPID=
    tr -d '\r' <"$name.out" >"$name.txt"
    sed 's/^/  | /' "$name.txt"
    [ ! -s "$name.err" ] || { echo "--- stderr ($name)"; cat "$name.err"; }
    info "$name: rc=$rc"
    sed -n "s/^BENCH_FIO name=\([^ ]*\) /BENCH vmm=$name $label fio=\1 /p; s/^BENCH_NET dir=\([^ ]*\) /BENCH vmm=$name $label net=\1 /p; s/^BENCH_IRQ name=\([^ ]*\) /BENCH vmm=$name $label irq=\1 /p" "$name.txt"
    grep -q '^BENCH_FIO ' "$name.txt"
}

# nubo_run CPUS QUEUES JOBS NET LABEL [extra nubo-vmm args]
# (QUEUES goes into --disk as is: "1,engine=threads" also picks the engine)
nubo_run() {
    cpus=$1 queues=$2 jobs=$3 net=$4 label=$5; shift 5
    run_vm nubo nubotap0 "$label" "$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" \
        --cmdline "$BASE nubo.bench_jobs=$jobs nubo.bench_net=$net" --cpus "$cpus" --memory 512M \
        --disk "path=$IMG,readonly=on" --disk "path=disk.img,queues=$queues" \
        --net tap=nubotap0,mac=52:54:00:12:34:56 "$@" || info "nubo: no fio results ($label)"
}
# qemu_run CPUS QUEUES JOBS NET LABEL
QEMU_MACHINE=microvm,rtc=on,pcie=on
qemu_run() {
    cpus=$1 queues=$2 jobs=$3 net=$4 label=$5
    run_vm qemu qtap0 "$label" qemu-system-x86_64 -enable-kvm -cpu host -M "$QEMU_MACHINE" \
        -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp "$cpus" -nographic -no-reboot \
        -kernel "$L2_BZIMAGE" -initrd "$L2_INITRD" -append "$BASE nubo.bench_jobs=$jobs nubo.bench_net=$net" \
        -drive "file=$IMG,format=raw,if=none,id=d0,readonly=on" -device virtio-blk-pci,drive=d0 \
        -drive file=disk.img,format=raw,if=none,id=d1,aio="${QEMU_AIO:-threads}" \
        -device virtio-blk-pci,drive=d1,num-queues="$queues" \
        -netdev tap,id=n0,ifname=qtap0,script=no,downscript=no,vhost=off \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:57
}
r=$ROUND0
while [ $r -lt $((ROUND0 + ROUNDS)) ]; do
    nubo_run 1 1 "$J1" 1 "cfg=1q round=$r"
    if ! qemu_run 1 1 "$J1" 1 "cfg=1q round=$r" && [ $r = 1 ]; then
        info "microvm+pcie gave no results; using q35"
        QEMU_MACHINE=q35
        qemu_run 1 1 "$J1" 1 "cfg=1q round=$r" || info "qemu: no fio results"
    fi
    r=$((r + 1))
done
echo "BENCH_QEMU_MACHINE $QEMU_MACHINE"
r=$ROUND0
while [ $r -lt $((ROUND0 + ROUNDS2)) ]; do
    nubo_run 2 2 "$J2" 0 "cfg=2q round=$r"
    qemu_run 2 2 "$J2" 0 "cfg=2q round=$r"
    r=$((r + 1))
done

r=$ROUND0
while [ $r -lt $((ROUND0 + ENGINE_ROUNDS)) ]; do
    q32=randread-4k-qd32,randwrite-4k-qd32
    nubo_run 1 1,engine=io_uring "$q32" 0 "cfg=eng-io_uring round=$r"
    QEMU_AIO=threads qemu_run 1 1 "$q32" 0 "cfg=eng-threads round=$r"
    nubo_run 1 1,engine=threads "$q32" 0 "cfg=eng-threads round=$r"
    QEMU_AIO=io_uring qemu_run 1 1 "$q32" 0 "cfg=eng-io_uring round=$r"
    r=$((r + 1))
done
echo "BENCH-SESSION-END ROUND0=$ROUND0 ROUNDS=$ROUNDS ROUNDS2=$ROUNDS2"
[ "$API_LATENCY" = 1 ] || exit 0
# GET /vm while fio keeps the disk busy (QD32 random reads then writes).
SOCK=$WORK/api.sock
(
    i=0
    until grep -q BENCH_GUEST_START nubo.out 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 1200 ] || exit 0; usleep 100000
    done
    sleep 2
    n=$(( (2 * RUNTIME - 2) * 1000 / 25 ))
    "$NUBO_VMM" api "$SOCK" GET /vm --repeat "$n" --interval-ms 20 >api-latency.txt 2>&1
) &
LAT=$!
nubo_run 1 1 randread-4k-qd32,randwrite-4k-qd32 0 "cfg=lat round=1" --api-socket "$SOCK"
wait $LAT
sed -n 's/^API-LATENCY /BENCH vmm=nubo api=GET_\/vm API-LATENCY /p' api-latency.txt
grep -q API-LATENCY api-latency.txt || { cat api-latency.txt; info "no API latency measured"; }
grep -q '^BENCH_FIO ' nubo.txt || fail "nubo-vmm produced no fio results"
