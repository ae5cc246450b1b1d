#!/bin/sh
# Boot time A/B inside the testbed's L1 (issue #13): a nubo-vmm build from
# before a change (/testbed/bin/nubo-vmm-before, put into L1 with
# NUBO_EXTRA_BINS=path/to/nubo-vmm-before) against the current one and QEMU
# microvm, alternating (the two builds in a flipping order), quiet cmdline as
# in boot-vs-qemu.sh. Per boot: the
# same BENCH line as boot-vs-qemu.sh plus L1's count of nested page faults
# (SVM exit 0x400) and of all exits, from L1's kvm_exit tracepoint.
#   tests/testbed/run.sh boot-ab   (TESTBED_SCENARIO_DIR=bench/testbed-scenarios)
# testbed-needs: qemu
# testbed-timeout: 1500
. "$TESTBED_LIB"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not in L1"
BEFORE=/testbed/bin/nubo-vmm-before
RUNS=${BOOT_AB_RUNS:-5}
CMDLINE="console=ttyS0 quiet nubo.then=poweroff nubo.ignore_power=1"
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T 2>/dev/null || true
SPEC='hist:keys=exit_reason:vals=hitcount'
one() { # NAME KERNEL CMD...
    name=$1 kernel=$2; shift 2
    echo "$SPEC" >$T/events/kvm/kvm_exit/trigger 2>/dev/null || true
    boot_guest "$name" "$@" >/dev/null
    h=$T/events/kvm/kvm_exit/hist
    npf=$(awk '/exit_reason: +1024 }/ { print $NF }' $h 2>/dev/null)
    all=$(awk '/Hits:/ { print $2 }' $h 2>/dev/null)
    echo "!$SPEC" >$T/events/kvm/kvm_exit/trigger 2>/dev/null || true
    [ "$BOOT_RC" = 0 ] && [ -n "$BOOT_MS" ] || { echo "BENCH-FAIL vmm=$name rc=$BOOT_RC"; return 0; }
    echo "BENCH vmm=$name kernel=$(basename "$kernel") boot_ms=$BOOT_MS uptime=$GUEST_UPTIME npf_exits=${npf:-?} exits=${all:-?}"
}
nubo() { # NAME BINARY KERNEL
    one "$1" "$3" "$2" run --kernel "$3" --initrd "$L2_INITRD" --cmdline "$CMDLINE" --cpus 1 --memory 512M
}
qemu() { # KERNEL
    one qemu "$1" qemu-system-x86_64 -enable-kvm -cpu host -M microvm,rtc=on \
        -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp 1 -nographic -no-reboot \
        -kernel "$1" -initrd "$L2_INITRD" -append "$CMDLINE"
}
# Both builds of one kernel, in an order that flips every round: the boot
# right after QEMU's ran measurably differently from the one after it (the
# bzImage guest's uptime 3.2-3.6 s against 1.8-2.0 s, whichever build went
# first), so a fixed order would credit that to the build.
pair() { # KERNEL ROUND
    if [ $(($2 % 2)) = 1 ]; then
        [ -x $BEFORE ] && nubo nubo-before $BEFORE "$1"
        nubo nubo "$NUBO_VMM" "$1"
    else
        nubo nubo "$NUBO_VMM" "$1"
        [ -x $BEFORE ] && nubo nubo-before $BEFORE "$1"
    fi
    return 0
}
i=0
while [ $i -lt $RUNS ]; do
    i=$((i + 1))
    pair "$L2_VMLINUX" $i
    [ "${BOOT_AB_QEMU:-1}" = 0 ] || qemu "$L2_BZIMAGE"
    pair "$L2_BZIMAGE" $i
    [ "${BOOT_AB_QEMU:-1}" = 0 ] || qemu "$L2_VMLINUX"
done
