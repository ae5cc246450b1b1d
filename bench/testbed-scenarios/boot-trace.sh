#!/bin/sh
# Boot-time investigation (issue #13): one traced boot each of nubo-vmm
# (vmlinux/PVH and bzImage) and QEMU microvm (bzImage), kernel cmdline with
# initcall_debug and printk times, no `quiet`; nubo-vmm's exit counters from
# GET /metrics at the readiness line. Compare the consoles side by side.
# Extra kernel words: BOOT_TRACE_EXTRA (e.g. pci=off).
# testbed-needs: qemu
# testbed-timeout: 900
. "$TESTBED_LIB"
need_vmm
SOCK=$WORK/api.sock
CMDLINE="console=ttyS0 initcall_debug printk.time=1 log_buf_len=4M nubo.dmesg=1 nubo.then=poweroff nubo.ignore_power=1 ${BOOT_TRACE_EXTRA:-}"
# L1's KVM tracepoints as histograms: port I/O by port and direction, exits
# by reason, MMIO by address (any VMM; in-kernel devices such as the PIT too).
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T 2>/dev/null || true
HISTS="kvm_pio:hist:keys=port.hex,rw:vals=hitcount:sort=hitcount.descending:size=4096
kvm_exit:hist:keys=exit_reason:vals=hitcount:sort=hitcount.descending
kvm_mmio:hist:keys=phys.hex,type:vals=hitcount:sort=hitcount.descending:size=4096
kvm_msr:hist:keys=ecx.hex,write:vals=hitcount:sort=hitcount.descending"
hist() { # on|off|dump TAG
    echo "$HISTS" | while IFS=: read -r ev spec; do
        f=$T/events/kvm/$ev/trigger
        [ -w "$f" ] || { echo "no $f"; continue; }
        case $1 in
            on) echo "$spec" >"$f" 2>/dev/null || echo "hist trigger on $ev refused" ;;
            off) echo "!$spec" >"$f" 2>/dev/null || true ;;
            dump) grep -v '^#' "$T/events/kvm/$ev/hist" | grep . | head -40 | sed "s/^/HIST $2 $ev /" ;;
        esac
    done
}
nubo() { # TAG KERNEL [VMM ARGS...]
    tag=$1 kernel=$2; shift 2
    echo "=== TRACE-BEGIN $tag"
    rm -f "$SOCK"
    # The metrics poller: the last answer before the VM powers off.
    (
        while [ ! -S "$SOCK" ]; do usleep 20000; done
        while "$NUBO_VMM" api "$SOCK" GET /metrics >"$WORK/$tag.m.tmp" 2>/dev/null; do
            mv "$WORK/$tag.m.tmp" "$WORK/$tag.metrics"
            grep -q NUBO-GUEST-READY "$WORK/$tag.out" 2>/dev/null && break
            usleep 200000
        done
    ) &
    boot_guest "$tag" "$NUBO_VMM" run --kernel "$kernel" --initrd "$L2_INITRD" \
        --cmdline "$CMDLINE" --cpus 1 --memory 512M --api-socket "$SOCK" "$@"
    wait
    echo "TRACE $tag boot_ms=$BOOT_MS uptime=$GUEST_UPTIME rc=$BOOT_RC"
    grep nubo_vcpu_exits_total "$WORK/$tag.metrics" 2>/dev/null | grep -v '^#' | sed "s/^/EXITS $tag /"
}
qemu() { # TAG KERNEL [QEMU ARGS...]
    tag=$1 kernel=$2; shift 2
    echo "=== TRACE-BEGIN $tag"
    boot_guest "$tag" qemu-system-x86_64 -enable-kvm -cpu host -M microvm,rtc=on \
        -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp 1 -nographic -no-reboot \
        -kernel "$kernel" -initrd "$L2_INITRD" -append "$CMDLINE" "$@"
    echo "TRACE $tag boot_ms=$BOOT_MS uptime=$GUEST_UPTIME rc=$BOOT_RC"
}
for what in ${BOOT_TRACE_RUNS:-nubo-vmlinux qemu-bzimage nubo-bzimage qemu-vmlinux}; do
    hist on
    rm -f "$WORK/$what.out"
    # The histograms at the readiness line (before the DMESG dump).
    ( i=0; while ! grep -q NUBO-GUEST-READY "$WORK/$what.out" 2>/dev/null && [ $i -lt 3000 ]; do
          usleep 50000; i=$((i + 1)); done
      hist dump "$what" >"$WORK/$what.hist" ) &
    case $what in
        nubo-vmlinux) nubo "$what" "$L2_VMLINUX" ;;
        nubo-bzimage) nubo "$what" "$L2_BZIMAGE" ;;
        qemu-bzimage) qemu "$what" "$L2_BZIMAGE" ;;
        qemu-vmlinux) qemu "$what" "$L2_VMLINUX" ;;
    esac
    wait
    cat "$WORK/$what.hist"
    hist off
done
