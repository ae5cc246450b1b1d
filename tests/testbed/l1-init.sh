#!/bin/sh
# /init of the testbed's L1 VM (busybox sh, PID 1).
#
# Loads kvm + kvm-amd (npt=1), reports `TESTBED-KVM ok|missing`, runs the
# scenarios named by `testbed.scenarios=a,b,glob*` on the kernel command line
# (default: all) via runner.sh, then powers L1 off.
#
# No `set -e` here on purpose: if PID 1 exits the kernel panics, and we always
# want to reach `poweroff -f` so QEMU exits promptly.
set -u
PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
exec </dev/null >/dev/console 2>&1

param() { # param NAME DEFAULT - value of NAME= on the kernel command line
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1"=*) echo "${w#*=}"; return ;; esac
    done
    echo "$2"
}

read -r up _ </proc/uptime
echo "TESTBED-L1-INIT uptime=$up"

# kvm-amd under QEMU TCG (emulated SVM); kvm-intel for completeness.
modprobe kvm
modprobe kvm-amd npt=1 2>/dev/null || modprobe kvm-intel 2>/dev/null
if [ -c /dev/kvm ]; then
    echo "TESTBED-KVM ok"
else
    echo "TESTBED-KVM missing"
    dmesg | tail -n 20
fi
ip link set lo up 2>/dev/null

. /testbed/env.sh     # L2_* and NUBO_VMM paths inside L1
export L2_BZIMAGE L2_VMLINUX L2_INITRD L2_ROOTFS NUBO_VMM QEMU_DATA
export TESTBED_LIB=/testbed/lib.sh TESTBED_IN_L1=1 HOME=/root TMPDIR=/tmp

selected=$(param testbed.scenarios '*' | tr ',' ' ')
# Keep the glob from expanding against / : runner.sh expands it itself.
set -f
sh /testbed/runner.sh /testbed/scenarios $selected
set +f

sync
poweroff -f
while :; do sleep 3600; done
