#!/bin/sh
# QEMU+KVM boots the L2 guest with root=/dev/vda on a copy of rootfs.ext4:
# validates the initramfs -> switch_root -> rootfs init path of the guest.
# testbed-needs: qemu
# testbed-timeout: 120
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not available"
[ -c /dev/kvm ] || fail "/dev/kvm missing"

cp "$L2_ROOTFS" "$WORK/rootfs.ext4"
boot_guest qemu qemu-system-x86_64 -enable-kvm -cpu host -M q35 \
    -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp 1 -nographic -no-reboot \
    -nic none -drive "file=$WORK/rootfs.ext4,format=raw,if=virtio" \
    -kernel "$L2_BZIMAGE" -initrd "$L2_INITRD" \
    -append "console=ttyS0 quiet root=/dev/vda nubo.then=poweroff"
report_boot
expect_rc 0
expect_ready 1 400000 524288 root=vda
