#!/bin/sh
# Linux boot benchmark inside the testbed's L1: nubo-vmm and QEMU+KVM
# (microvm, the fastest QEMU machine) boot the same kernels (bzImage, and
# vmlinux through PVH) and initramfs,
# alternating, BENCH_RUNS times each. One line per boot:
#   BENCH vmm=<nubo|qemu> kernel=<bzImage|vmlinux> boot_ms=<VMM start -> readiness line> uptime=<guest uptime then>
# testbed-needs: qemu
# testbed-timeout: 1200
. "$TESTBED_LIB"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not in L1"
RUNS=7
# nubo.ignore_power: no acpid, whose start the guest init waits for (QEMU's
# microvm guest has no power button, so it would not wait): same guest work.
CMDLINE="console=ttyS0 quiet nubo.then=poweroff nubo.ignore_power=1"
one() {
    name=$1 kernel=$2; shift 2
    boot_guest "$name" "$@" >/dev/null
    # A failed boot (the nested emulation's early-boot resets) is counted, not fatal.
    [ "$BOOT_RC" = 0 ] && [ -n "$BOOT_MS" ] ||
        { echo "BENCH-FAIL vmm=$name kernel=$(basename "$kernel") rc=$BOOT_RC"; return 0; }
    echo "BENCH vmm=$name kernel=$(basename "$kernel") boot_ms=$BOOT_MS uptime=$GUEST_UPTIME"
}
i=0
while [ $i -lt "$RUNS" ]; do
    i=$((i + 1))
    one nubo "$L2_BZIMAGE" "$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" \
        --cmdline "$CMDLINE" --cpus 1 --memory 512M
    one qemu "$L2_BZIMAGE" qemu-system-x86_64 -enable-kvm -cpu host -M microvm,rtc=on \
        -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp 1 -nographic -no-reboot \
        -kernel "$L2_BZIMAGE" -initrd "$L2_INITRD" -append "$CMDLINE"
    one nubo "$L2_VMLINUX" "$NUBO_VMM" run --kernel "$L2_VMLINUX" --initrd "$L2_INITRD" \
        --cmdline "$CMDLINE" --cpus 1 --memory 512M
    # QEMU microvm boots the vmlinux ELF through its PVH note too.
    one qemu "$L2_VMLINUX" qemu-system-x86_64 -enable-kvm -cpu host -M microvm,rtc=on \
        -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp 1 -nographic -no-reboot \
        -kernel "$L2_VMLINUX" -initrd "$L2_INITRD" -append "$CMDLINE"
done
