#!/bin/sh
# /init of the testbed's L1 VM (busybox sh, PID 1).
#
# Loads kvm + kvm-amd (npt=1), reports `TESTBED-KVM ok|missing`, runs the
# scenarios named by `testbed.scenarios=a,b,glob*` on the kernel command line
# (default: all) via runner.sh, then powers L1 off.
#
# With `testbed.serve=1` (serve.sh) it runs no scenarios: it brings up eth0
# (QEMU user networking, restrict=on), serves the control CGI on :8775, starts
# the nubo daemon on :8774 (when /testbed/bin/nubo exists) after the test
# networks (net-fixture.sh) and the volume group nubo-vg (volume-fixture.sh), prints
# `TESTBED-SERVE ready` and stays up until `poweroff -f` comes through the
# control CGI or `testbed.serve_timeout=` seconds (default 3600) pass.
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
# When run.sh's watchdog finds L1 stuck it sends an NMI: L1 then panics with
# every CPU's backtrace on the console. Lockups print all CPUs too.
for kv in kernel.unknown_nmi_panic=1 kernel.panic_all_cpu_backtrace=1 \
          kernel.softlockup_all_cpu_backtrace=1 kernel.sysrq=1; do
    k=${kv%=*}
    [ ! -w "/proc/sys/$(echo "$k" | tr . /)" ] || echo "${kv#*=}" >"/proc/sys/$(echo "$k" | tr . /)"
done

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

# The nubo agent's networking modules (build-l1.sh: VLAN, VXLAN, bridge,
# nftables, bridge conntrack, NAT), in both modes, before the daemon starts.
# A module that fails to load is logged; the scenarios or tests needing it fail.
if [ -r /testbed/net-modules ]; then
    failed=''
    for m in $(cat /testbed/net-modules); do
        modprobe "$m" 2>/dev/null || failed="$failed $m"
    done
    if [ -n "$failed" ]; then echo "TESTBED-NETMOD failed:$failed"; else echo "TESTBED-NETMOD ok"; fi
fi

# The lvm volume driver's modules (build-l1.sh: loop, device mapper, thin
# pools), in both modes; LVM's lock and run dirs.
if [ -r /testbed/storage-modules ]; then
    failed=''
    for m in $(cat /testbed/storage-modules); do
        modprobe "$m" 2>/dev/null || failed="$failed $m"
    done
    mkdir -p /run/lock/lvm /run/lvm
    if [ -n "$failed" ]; then echo "TESTBED-STORAGEMOD failed:$failed"; else echo "TESTBED-STORAGEMOD ok"; fi
fi

# One KVM VM held open while L1 runs (kvmhold.c says why); testbed.kvmhold=0
# (run.sh: TESTBED_KVMHOLD=0) leaves it out.
if [ "$(param testbed.kvmhold 1)" = 1 ] && [ -x /testbed/bin/kvmhold ] && [ -c /dev/kvm ]; then
    /testbed/bin/kvmhold &
    echo $! >/run/kvmhold.pid
fi

. /testbed/env.sh     # L2_* and NUBO_VMM paths inside L1
export L2_BZIMAGE L2_VMLINUX L2_INITRD L2_ROOTFS NUBO_VMM QEMU_DATA
export TESTBED_LIB=/testbed/lib.sh TESTBED_IN_L1=1 HOME=/root TMPDIR=/tmp

serve_mode() {
    modprobe virtio_pci 2>/dev/null   # may be built in
    modprobe virtio_net
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    ip route add default via 10.0.2.2 2>/dev/null
    ip -o -4 addr show dev eth0 || echo "TESTBED-SERVE error: no eth0"
    mkdir -p /var/lib/nubo /var/log
    mount -t tmpfs -o size="$(param testbed.state_size 8g)",mode=0700 tmpfs /var/lib/nubo
    export NUBO_STATE_DIR=/var/lib/nubo NUBO_LOG_FILE=/var/log/nubo.log \
        NUBO_PID_FILE=/run/nubo.pid NUBO_START=/testbed/nubo-start.sh
    httpd -f -p 8775 -h /testbed/ctl &
    # The underlay, trunk and second "host" the daemon's networks use
    # (nubo-start.sh's L1 flags name them).
    [ -x /testbed/net-fixture.sh ] && /testbed/net-fixture.sh up
    # The volume group of the lvm volume driver (a loop device on this
    # tmpfs); testbed.volumes=0 leaves it out.
    if [ "$(param testbed.volumes 1)" = 1 ] && [ -x /testbed/volume-fixture.sh ] && command -v lvm >/dev/null; then
        /testbed/volume-fixture.sh up >/var/log/volume-fixture.log 2>&1 &&
            echo "TESTBED-VOLUMES ok" || echo "TESTBED-VOLUMES failed (see /var/log/volume-fixture.log)"
    fi
    if [ -x /testbed/bin/nubo ]; then
        /testbed/nubo-start.sh
    else
        echo "TESTBED-SERVE no nubo binary in L1: nothing listens on 8774"
    fi
    echo "TESTBED-SERVE ready"
    # PID 1 stays in this loop: running `sleep` makes the shell reap every
    # orphan (a killed daemon, VMMs whose daemon died) so none lingers as a zombie.
    limit=$(param testbed.serve_timeout 3600)
    read -r up _ </proc/uptime
    end=$((${up%.*} + limit))
    while :; do
        read -r up _ </proc/uptime
        [ "${up%.*}" -lt "$end" ] || break
        sleep 1
    done
    echo "TESTBED-SERVE timeout after ${limit}s: powering off"
    sync
    poweroff -f
}
if [ "$(param testbed.serve 0)" = 1 ]; then
    serve_mode
    while :; do sleep 3600; done
fi

selected=$(param testbed.scenarios '*' | tr ',' ' ')
TESTBED_RECYCLE_AFTER=$(param testbed.recycle_after 0)
TESTBED_RECYCLE_MEM_MB=$(param testbed.recycle_mem_mb 0)
export TESTBED_RECYCLE_AFTER TESTBED_RECYCLE_MEM_MB
# Keep the glob from expanding against / : runner.sh expands it itself.
set -f
sh /testbed/runner.sh /testbed/scenarios $selected
set +f

sync
poweroff -f
while :; do sleep 3600; done
