#!/bin/sh
# virtio-blk: the root filesystem on /dev/vda (a raw ext4 image, read-write),
# a raw data disk that the guest writes a pattern to (checked in the image
# from L1 afterwards), and a read-only disk that refuses writes. Each disk
# shows its serial in /sys/block/vdX/serial. The data disk has two queues on
# the thread-pool engine (#13).
# testbed-timeout: 180
. "$TESTBED_LIB"
need_vmm
cp "$L2_ROOTFS" root.img
dd if=/dev/zero of=data.img bs=1M count=8 2>/dev/null
dd if=/dev/zero of=ro.img bs=1M count=4 2>/dev/null
ro_sum=$(md5sum ro.img | cut -d' ' -f1)
boot_guest vmm "$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" \
    --cmdline "console=ttyS0 quiet root=/dev/vda rw nubo.then=blkcheck" \
    --cpus 2 --memory 512M \
    --disk path=root.img,id=nubo-root \
    --disk path=data.img,id=nubo-data,queues=2,engine=threads \
    --disk path=ro.img,id=nubo-ro,readonly=on
report_boot
expect_rc 0
expect_ready 2 400000 524288 root=vda
grep -q "NUBO-BLK name=vda serial=nubo-root ro=0" "$BOOT_OUT" || fail "vda is not the root disk with its serial"
grep -q "NUBO-BLK name=vdb serial=nubo-data ro=0 sectors=16384 queues=2" "$BOOT_OUT" || fail "vdb missing or wrong (two queues)"
grep -q "NUBO-BLK name=vdc serial=nubo-ro ro=1" "$BOOT_OUT" || fail "vdc is not read-only"
grep -q "NUBO-BLK-RO-WRITE name=vdc refused" "$BOOT_OUT" || fail "the read-only disk took a write"
grep -q "NUBO-BLK-ROOTWRITE ok written-by-guest" "$BOOT_OUT" || fail "writing to the root fs failed"
pattern=$(sed -n 's/.*NUBO-BLK-WROTE name=vdb pattern=\([^ ]*\).*/\1/p' "$BOOT_OUT" | tr -d '\r')
[ -n "$pattern" ] || fail "the guest wrote no pattern"
grep -q "NUBO-BLK-READBACK name=vdb pattern=$pattern" "$BOOT_OUT" || fail "the guest read back something else"
on_disk=$(dd if=data.img bs=512 skip=8 count=1 2>/dev/null | head -n1)
[ "$on_disk" = "$pattern" ] || fail "data.img holds '$on_disk', not '$pattern'"
echo "PATTERN_IN_IMAGE=ok"
command -v debugfs >/dev/null || fail "debugfs missing in L1 (build-l1.sh copies it from the host)"
[ "$(debugfs -R 'cat /nubo-written' root.img 2>/dev/null)" = written-by-guest ] ||
    fail "the file the guest wrote and synced is not in root.img"
echo "GUEST_FILE_IN_IMAGE=ok"
[ "$(md5sum ro.img | cut -d' ' -f1)" = "$ro_sum" ] || fail "the read-only image changed"
