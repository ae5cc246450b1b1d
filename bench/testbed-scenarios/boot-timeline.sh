#!/bin/sh
# Where a Linux boot's time goes (issue #13), nubo-vmm and QEMU microvm side
# by side in the same L1: L1's KVM tracepoints (kvm_entry/exit/pio/msr/mmio)
# as a timeline on the `boot` trace clock (the clock of /proc/uptime), from a
# trace_marker written just before the VMM starts to the readiness line.
# Per boot:
#   PHASE <tag> start_to_entry_ms=  VMM process start -> first KVM_RUN entry
#         entry_to_kvmclock_ms=     first entry -> the guest's first kvmclock
#                                   MSR write (the kernel's clock starts there)
#         entry_to_zero_ms=         first entry -> ready time minus the
#                                   guest's uptime (10 ms resolution)
#         last_lf_ms=               VMM start -> the guest's last line feed to
#                                   COM1 before L1 saw the readiness line
#         kvmclock_to_ready_ms=     the kernel's part, up to the readiness line
#   WIN <tag> <phase> wall_ms= guest_ms= exits= exit_ms=   where the time went
#   EXIT <tag> <phase> <ms> <n> <reason/port/msr>  exit handling by kind (top 25)
# plus the guest's initcalls over 1 ms and its clock/TSC lines (quiet boot,
# initcall_debug into the log, dumped after the readiness line), and
# nubo-vmm's own setup steps (NUBO_LOG=vmm=debug), and the nested page
# faults (NPFSUM: count, ms, the slow ones' guest addresses).
#   BOOT_TIMELINE_RUNS="nubo-vmlinux qemu-vmlinux ..."   BOOT_TIMELINE_ROUNDS=N
# testbed-needs: qemu
# testbed-timeout: 1500
. "$TESTBED_LIB"
need_vmm
CMDLINE="console=ttyS0 quiet initcall_debug printk.time=1 log_buf_len=4M nubo.dmesg=1 nubo.then=poweroff nubo.ignore_power=1 ${BOOT_TIMELINE_EXTRA:-}"
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs nodev $T 2>/dev/null || true
[ -w $T/trace_marker ] || skip "no tracefs in L1"
echo 0 >$T/tracing_on
echo boot >$T/trace_clock
echo 0 >$T/options/overwrite   # keep the first events when the buffer fills
echo 24576 >$T/buffer_size_kb
for ev in kvm_entry kvm_exit kvm_pio kvm_msr kvm_mmio kvm_userspace_exit kvm_page_fault; do
    echo 1 >$T/events/kvm/$ev/enable
done

summarize() { # TAG LAUNCH READY UPTIME
    awk -v tag="$1" -v R="$3" -v UP="$4" '
    function phase(t) { return (K == "" || t < K) ? "early" : (t < R ? "kernel" : "post") }
    {
        if (match($0, / [0-9]+\.[0-9]+: /) == 0) next
        ts = substr($0, RSTART + 1, RLENGTH - 3) + 0
    }
    /tracing_mark_write: LAUNCH/ { L = ts; next }
    L == "" { next }
    / kvm_exit: / {
        if (E == "") next
        if (le != "") gms[phase(ts)] += ts - le
        match($0, /reason [A-Za-z_0-9]+/); key = substr($0, RSTART + 7, RLENGTH - 7)
        tx = ts; next
    }
    / kvm_pio: / {
        match($0, /pio_[a-z]+ at 0x[0-9a-f]+/); s = substr($0, RSTART, RLENGTH)
        split(s, a, " "); key = "io " a[3] (a[1] == "pio_write" ? " w" : " r")
        # The last line feed the guest wrote to COM1 before tracing stopped
        # (at the readiness line): when the guest printed that line.
        if (a[1] == "pio_write" && a[3] == "0x3f8" && $0 ~ /val 0xa( |$)/) NL = ts
        next
    }
    / kvm_msr: / {
        match($0, /msr_[a-z]+ [0-9a-f]+/); s = substr($0, RSTART, RLENGTH)
        split(s, a, " "); key = "msr " a[2] (a[1] == "msr_write" ? " w" : " r")
        if (K == "" && a[1] == "msr_write" && (a[2] == "4b564d01" || a[2] == "11")) K = ts
        next
    }
    / kvm_mmio: / {
        match($0, /gpa 0x[0-9a-f]+/); key = "mmio " substr($0, RSTART + 4, RLENGTH - 4); next
    }
    / kvm_page_fault: / { match($0, /address 0x[0-9a-f]+/); gpa = substr($0, RSTART + 8, RLENGTH - 8); next }
    / kvm_userspace_exit: / { if (key !~ / user$/) key = key " user"; next }
    / kvm_entry: / {
        if (E == "") E = ts
        if (tx != "" && key == "npf" && gpa != "") printf "NPF %s %s %.1f %s\n", tag, phase(tx), (ts - tx) * 1000, gpa > N
        if (tx != "") { p = phase(tx); n[p, key]++; ms[p, key] += ts - tx; ex[p]++; exms[p] += ts - tx; keys[p, key] = 1 }
        tx = ""; gpa = ""; le = ts; next
    }
    END {
        if (L == "" || E == "") { print "PHASE " tag " no-trace"; exit }
        Z = R - UP
        printf "PHASE %s start_to_entry_ms=%.1f entry_to_kvmclock_ms=%s entry_to_zero_ms=%.0f kvmclock_to_ready_ms=%s ready_ms=%.0f uptime=%s last_lf_ms=%s\n",
            tag, (E - L) * 1000, (K == "" ? "?" : sprintf("%.1f", (K - E) * 1000)), (Z - E) * 1000,
            (K == "" ? "?" : sprintf("%.0f", (R - K) * 1000)), (R - L) * 1000, UP,
            (NL == "" ? "?" : sprintf("%.0f", (NL - L) * 1000))
        wall["early"] = (K == "" ? R : K) - E; wall["kernel"] = (K == "" ? 0 : R - K)
        for (p in wall)
            printf "WIN %s %s wall_ms=%.0f guest_ms=%.0f exits=%d exit_ms=%.0f\n", tag, p, wall[p] * 1000, gms[p] * 1000, ex[p], exms[p] * 1000
        for (pk in keys) { split(pk, a, SUBSEP); if (a[1] != "post") printf "EXIT %s %s %.1f %d %s\n", tag, a[1], ms[pk] * 1000, n[pk], a[2] > X }
    }' X="$WORK/exits" N="$WORK/npf" "$T/trace"
    sort -k4,4gr "$WORK/exits" | awk '{ c[$3]++; if (c[$3] <= 25) print }'
    # The nested page faults one by one (address, ms), and how many pages.
    awk '{ n[$3]++; ms[$3] += $4; if ($4 >= 2) big[$3] = big[$3] " " $5 "/" $4 }
         END { for (p in n) printf "NPFSUM %s %s n=%d ms=%.0f slow(>=2ms gpa/ms):%s\n", $2, p, n[p], ms[p], big[p] }' "$WORK/npf" 2>/dev/null || true
    rm -f "$WORK/exits" "$WORK/npf"
}

one() { # TAG KERNEL CMD...
    tag=$1 kernel=$2; shift 2
    echo >$T/trace
    rm -f "$WORK/$tag.out"
    # Stop tracing at the readiness line: the kernel-log dump after it is not the boot.
    ( i=0; while ! grep -q NUBO-GUEST-READY "$WORK/$tag.out" 2>/dev/null && [ $i -lt 1200 ]; do
          usleep 20000; i=$((i + 1)); done
      echo 0 >$T/tracing_on ) &
    echo 1 >$T/tracing_on
    echo "LAUNCH $tag" >$T/trace_marker
    boot_guest "$tag" "$@" >/dev/null
    wait
    echo 0 >$T/tracing_on
    [ -n "$BOOT_MS" ] || { echo "BENCH-FAIL vmm=$tag rc=$BOOT_RC"; return 0; }
    echo "BENCH vmm=$tag boot_ms=$BOOT_MS uptime=$GUEST_UPTIME rc=$BOOT_RC"
    summarize "$tag" "" "$(cat "$BOOT_OUT.t")" "$GUEST_UPTIME"
    tr -d '\r' <"$BOOT_OUT" | sed -n 's/^DMESG .*initcall \([a-zA-Z0-9_.]*\)+.* returned .* after \([0-9]*\) usecs.*/\1 \2/p' |
        awk -v t="$tag" '$2 >= 1000 { print "INITCALL " t " " $1 " " $2 }'
    tr -d '\r' <"$BOOT_OUT" | grep -E '^DMESG' | grep -iE 'clocksource|tsc|kvm-clock|calibrat|lpj|apic|timer|hpet|pit|8250|serial|Run /init|Freeing unused|Memory:|pci|acpi: (Core|Interpreter|Enabled)|Booting paravirt' |
        grep -v 'initcall' | head -60 | sed "s/^DMESG/KLOG $tag/"
    grep -E 'ready|loaded|started' "$BOOT_ERR" 2>/dev/null | sed "s/^/VMMLOG $tag /" || true
}
nubo() { # TAG KERNEL
    NUBO_LOG=vmm=debug one "$1" "$2" "$NUBO_VMM" run --kernel "$2" --initrd "$L2_INITRD" \
        --cmdline "$CMDLINE" --cpus 1 --memory 512M
}
qemu() { # TAG KERNEL
    one "$1" "$2" qemu-system-x86_64 -enable-kvm -cpu host -M microvm,rtc=on \
        -L "${QEMU_DATA:-/usr/share/qemu}" -m 512M -smp 1 -nographic -no-reboot \
        -kernel "$2" -initrd "$L2_INITRD" -append "$CMDLINE"
}
r=0
while [ $r -lt "${BOOT_TIMELINE_ROUNDS:-2}" ]; do
    r=$((r + 1))
    for what in ${BOOT_TIMELINE_RUNS:-nubo-vmlinux qemu-vmlinux nubo-bzimage qemu-bzimage}; do
        case $what in
            nubo-vmlinux) nubo "$what" "$L2_VMLINUX" ;;
            nubo-bzimage) nubo "$what" "$L2_BZIMAGE" ;;
            qemu-bzimage) qemu "$what" "$L2_BZIMAGE" ;;
            qemu-vmlinux) qemu "$what" "$L2_VMLINUX" ;;
        esac
    done
done
for ev in kvm_entry kvm_exit kvm_pio kvm_msr kvm_mmio kvm_userspace_exit kvm_page_fault; do
    echo 0 >$T/events/kvm/$ev/enable
done
echo 1408 >$T/buffer_size_kb
