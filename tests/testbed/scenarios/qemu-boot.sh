#!/bin/sh
# Baseline: QEMU+KVM boots the same L2 guest (2 vCPUs, 512M). Validates the
# testbed itself and gives the reference boot time for benchmarks.
# Needs qemu-system-x86_64 in L1 (run.sh adds it when this scenario is selected).
# testbed-needs: qemu
# testbed-timeout: 120
# microvm needs rtc=on: without a CMOS RTC the guest's rtc_cmos probe spins for
# ~5 s under nested virtualisation ("rtc_cmos: broken or not accessible").
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not available"
[ -c /dev/kvm ] || fail "/dev/kvm missing"

boot_guest qemu qemu-system-x86_64 -enable-kvm -cpu host -M "${QEMU_MACHINE:-microvm,rtc=on}" \
    -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp 2 -nographic -no-reboot \
    -kernel "$L2_BZIMAGE" -initrd "$L2_INITRD" \
    -append "console=ttyS0 quiet nubo.then=poweroff"
report_boot
expect_rc 0
expect_ready 2 400000 524288
