#!/bin/sh
# Volume I/O benchmark inside the testbed's L1 (issue #12): one nubo-vmm guest
# per disk kind boots the bench rootfs (vda, read-only) with the disk under
# test as vdb, and runs fio on it (bench.sh in the image):
#   boot   a qcow2 overlay on a raw base, the shape of a server's boot disk
#   file   a standalone sparse qcow2, the shape of a `file` driver volume
#   lvm    a thin LV on a loop device, the shape of an `lvm` driver volume
#   raw    a raw file: the ceiling of the file-backed ones
# All 512 MiB (BENCH_DISK), files in L1's tmpfs, made afresh for every run. One line per result:
#   BENCH disk=<boot|file|lvm|raw> run=<n> fio=<job> iops=<n> bw_kib=<n>
# RUNS rounds, the kinds interleaved in each, so drift hits them alike.
# Needs bench-rootfs.ext4 and loop.ko next to it (bench/volume_io.py stages them).
# testbed-timeout: 1500
. "$TESTBED_LIB"
need_vmm
DIR=$(cd "$(dirname "$0")" && pwd)
IMG=${BENCH_ROOTFS:-$DIR/bench-rootfs.ext4}
[ -f "$IMG" ] || skip "no $IMG (bench/volume_io.py stages it)"
RUNTIME=${BENCH_RUNTIME:-5} RUNS=${BENCH_RUNS:-3}
CMDLINE="console=ttyS0 quiet root=/dev/vda nubo.bench=1 nubo.bench_runtime=$RUNTIME"
modprobe loop 2>/dev/null || insmod "$DIR/loop.ko" 2>/dev/null || true
for m in dm_mod dm_bufio dm_persistent_data dm_bio_prison dm_thin_pool; do modprobe $m 2>/dev/null; done
command -v qemu-img >/dev/null || fail "no qemu-img in L1"

SIZE=${BENCH_DISK:-512M}
# Each run gets a fresh disk (fio writes all of it: one at a time fits L1's tmpfs).
make_disk() { # make_disk NAME -> the --disk spec on stdout
    case "$1" in
        boot) qemu-img create -q -f raw base.raw "$SIZE" &&
              qemu-img create -q -f qcow2 -F raw -b "$PWD/base.raw" boot.qcow2 &&
              echo "path=boot.qcow2,format=qcow2" ;;
        file) qemu-img create -q -f qcow2 file.qcow2 "$SIZE" && echo "path=file.qcow2,format=qcow2" ;;
        raw)  qemu-img create -q -f raw raw.img "$SIZE" && echo "path=raw.img" ;;
        lvm)  lvm lvcreate -q -T benchvg/pool -V "$SIZE" -n vol >/dev/null && echo "path=/dev/benchvg/vol" ;;
    esac
}
drop_disk() {
    rm -f base.raw boot.qcow2 file.qcow2 raw.img
    [ "$1" != lvm ] || lvm lvremove -q -f benchvg/vol >/dev/null
}
LVM=
cleanup() {
    [ -z "$LVM" ] || { lvm vgremove -f -y benchvg >/dev/null 2>&1; lvm pvremove -y "$LOOPDEV" >/dev/null 2>&1; }
    [ -z "${LOOPDEV:-}" ] || losetup -d "$LOOPDEV" 2>/dev/null
}
trap cleanup EXIT
if command -v lvm >/dev/null; then
    truncate -s 768M pv.img && LOOPDEV=$(losetup -f) && losetup "$LOOPDEV" pv.img &&
        lvm pvcreate -q -y "$LOOPDEV" >/dev/null && lvm vgcreate -q benchvg "$LOOPDEV" >/dev/null &&
        lvm lvcreate -q -T -l 95%FREE benchvg/pool >/dev/null && LVM=1 ||
        info "no lvm volume: $(lvm version 2>&1 | head -n 1)"
else
    info "no lvm in L1: the lvm row is skipped"
fi

run_disk() { # run_disk NAME
    name=$1
    spec=$(make_disk "$name") || fail "cannot make the $name disk"
    "$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" --cmdline "$CMDLINE" \
        --cpus 1 --memory 512M --disk "path=$IMG,readonly=on" --disk "$spec" \
        >"$name.out" 2>"$name.err" </dev/null &
    pid=$!
    i=0
    while kill -0 $pid 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 3000 ] || { kill $pid; info "$name: killed after 300 s"; break; }
        usleep 100000
    done
    wait $pid || info "$name: nubo-vmm exited with $? ($(tail -n 3 "$name.err" | tr '\n' ' '))"
    tr -d '\r' <"$name.out" | sed -n "s/^BENCH_FIO name=\([^ ]*\) /BENCH disk=$name run=$run fio=\1 /p"
    tr -d '\r' <"$name.out" | grep -q '^BENCH_FIO ' || { tail -n 20 "$name.out" "$name.err"; info "$name: no results"; }
    drop_disk "$name"
}
run=1
while [ $run -le "$RUNS" ]; do
    run_disk boot
    run_disk file
    [ -z "$LVM" ] || run_disk lvm
    run_disk raw
    run=$((run + 1))
done
