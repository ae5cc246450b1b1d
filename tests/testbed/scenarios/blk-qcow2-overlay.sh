#!/bin/sh
# virtio-blk on a qcow2 overlay: the guest boots with its root on an overlay
# over the raw rootfs image (made by `nubo-vmm overlay` in milliseconds) and
# writes to it; the writes land in the overlay and the base stays unchanged.
# testbed-timeout: 180
. "$TESTBED_LIB"
need_vmm
cp "$L2_ROOTFS" base.img
base_sum=$(md5sum base.img | cut -d' ' -f1)
"$NUBO_VMM" overlay --backing "$PWD/base.img" --backing-format raw overlay.qcow2 || fail "overlay creation failed"
before=$(wc -c <overlay.qcow2)
boot_guest vmm "$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" \
    --cmdline "console=ttyS0 quiet root=/dev/vda rw nubo.then=blkcheck" \
    --cpus 1 --memory 512M \
    --disk path=overlay.qcow2,format=qcow2,id=nubo-overlay
report_boot
expect_rc 0
expect_ready 1 400000 524288 root=vda
grep -q "NUBO-BLK name=vda serial=nubo-overlay ro=0" "$BOOT_OUT" || fail "vda is not the overlay"
grep -q "NUBO-BLK-ROOTWRITE ok written-by-guest" "$BOOT_OUT" || fail "writing to the root fs failed"
after=$(wc -c <overlay.qcow2)
echo "OVERLAY_BYTES_BEFORE=$before OVERLAY_BYTES_AFTER=$after"
[ "$after" -gt "$before" ] || fail "the overlay did not grow"
[ "$(md5sum base.img | cut -d' ' -f1)" = "$base_sum" ] || fail "the base image changed"
command -v qemu-img >/dev/null || fail "qemu-img missing in L1 (build-l1.sh copies it from the host)"
qemu-img check overlay.qcow2 || fail "qemu-img check found problems in the overlay the guest wrote"
echo "QEMU_IMG_CHECK=clean"
# Boot again from the same overlay: the guest's file is still there.
boot_guest vmm2 "$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" \
    --cmdline "console=ttyS0 quiet root=/dev/vda rw nubo.then=blkcheck" \
    --cpus 1 --memory 512M --disk path=overlay.qcow2,format=qcow2
expect_rc 0
expect_ready 1 400000 524288 root=vda
