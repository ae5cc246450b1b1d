#!/usr/bin/env bash
# Builds nubo-vmm, fetches and builds the guest (Debian's cloud kernel and a
# busybox initramfs), and boots it with 2 vCPUs and 512 MiB.
#
# On a host with hardware KVM (kvm_intel or kvm_amd) the guest boots right
# here; its console is this terminal. NUBO_THEN=shell gives an interactive
# shell (poweroff -f to leave); the default powers off after the readiness line.
# On a host whose /dev/kvm cannot boot Linux (PVM, or no KVM at all) the same
# guest boots inside the testbed VM (QEMU/TCG with nested SVM) instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

scripts/deps.sh
cargo build --release -p vmm --bin nubo-vmm
guest/build.sh >/dev/null

if [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; then
    echo "quickstart: booting the guest on this host's KVM (console below)" >&2
    exec target/release/nubo-vmm run \
        --kernel guest/out/bzImage --initrd guest/out/initramfs.cpio.gz \
        --cmdline "console=ttyS0 quiet nubo.then=${NUBO_THEN:-poweroff}" \
        --cpus 2 --memory 512M
fi

kind=none
[ -e /dev/kvm ] && kind=$(ls /sys/module | grep -m1 '^kvm_' || echo unknown)
echo "quickstart: this host's /dev/kvm ($kind) cannot boot a stock Linux kernel;" >&2
echo "quickstart: booting the guest with nubo-vmm inside the testbed VM instead (takes ~30 s)" >&2
exec tests/testbed/run.sh boot-bzimage-2cpu
