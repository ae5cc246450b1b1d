#!/bin/sh
# PCI enumeration's share of a Linux boot under nubo-vmm (issue #13):
# alternating boots of the vmlinux (PVH) with the default PCI host bridge
# and no device, with `pci=off`, and with one virtio-blk disk; quiet, with
# initcall_debug into the kernel log, which the guest prints after the
# readiness line (nubo.dmesg=1). QEMU microvm (no PCI: no pcie=on) boots the
# same way for comparison. Per boot: the BENCH line and the initcalls over
# 100 us (INITCALL lines; compare the pci/acpi ones).
# testbed-needs: qemu
# testbed-timeout: 1500
. "$TESTBED_LIB"
need_vmm
RUNS=2
BASE="console=ttyS0 quiet initcall_debug log_buf_len=4M nubo.dmesg=1 nubo.then=poweroff nubo.ignore_power=1"
truncate -s 64M "$WORK/disk.img"
# L1's KVM tracepoints: PCI config port I/O (0xcf8-0xcff) and all exits.
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T 2>/dev/null || true
PIO='hist:keys=port.hex:vals=hitcount'
EXIT='hist:keys=exit_reason:vals=hitcount'
one() { # NAME EXTRA-CMDLINE [VMM ARGS...]
    name=$1 extra=$2; shift 2
    echo "$PIO" >$T/events/kvm/kvm_pio/trigger 2>/dev/null || true
    echo "$EXIT" >$T/events/kvm/kvm_exit/trigger 2>/dev/null || true
    if [ "$name" = qemu ]; then
        boot_guest "$name" qemu-system-x86_64 -enable-kvm -cpu host -M microvm,rtc=on \
            -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp 1 -nographic -no-reboot \
            -kernel "$L2_VMLINUX" -initrd "$L2_INITRD" -append "$BASE $extra" >/dev/null
    else
        boot_guest "$name" "$NUBO_VMM" run --kernel "$L2_VMLINUX" --initrd "$L2_INITRD" \
            --cmdline "$BASE $extra" --cpus 1 --memory 512M "$@" >/dev/null
    fi
    cfg=$(awk '/port: +cf[89a-f] / { n += $NF } END { print n + 0 }' $T/events/kvm/kvm_pio/hist 2>/dev/null)
    all=$(awk '/Hits:/ { print $2 }' $T/events/kvm/kvm_exit/hist 2>/dev/null)
    npf=$(awk '/exit_reason: +1024 }/ { print $NF }' $T/events/kvm/kvm_exit/hist 2>/dev/null)
    echo "!$PIO" >$T/events/kvm/kvm_pio/trigger 2>/dev/null || true
    echo "!$EXIT" >$T/events/kvm/kvm_exit/trigger 2>/dev/null || true
    # (rc is not checked: a poweroff in the middle of the DMESG dump can cut
    # the last line, and boot_guest then misses the exit status)
    [ -n "$BOOT_MS" ] || { echo "BENCH-FAIL vmm=$name rc=$BOOT_RC"; return 0; }
    echo "BENCH variant=$name boot_ms=$BOOT_MS uptime=$GUEST_UPTIME pci_cfg_pio=${cfg:-?} exits=${all:-?} npf=${npf:-?} (exits include the DMESG dump)"
    tr -d '\r' <"$BOOT_OUT" | sed -n 's/^DMESG .*initcall \([a-z0-9_]*\)+.* returned .* after \([0-9]*\) usecs.*/\1 \2/p' |
        sed "s/^/INITCALL $name /"
    tr -d '\r' <"$BOOT_OUT" | grep -E '^DMESG .*(virtio_blk|vda)' | head -3 || true
}
i=0
while [ $i -lt $RUNS ]; do
    i=$((i + 1))
    one pci-on ""
    one pci-off "pci=off"
    one disk "" --disk "path=$WORK/disk.img,id=d1"
    one qemu ""
done
