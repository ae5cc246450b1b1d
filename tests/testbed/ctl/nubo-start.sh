#!/bin/sh
# Start the `nubo serve` daemon in the background, in its own session, with
# its output appended to a log file and its pid in a pid file. Used by the
# testbed's serve mode at L1 boot, by tests to restart the daemon after
# killing it, and (with the variables below set) in host mode.
#
# Environment (defaults are the L1 paths):
#   NUBO_BIN             /testbed/bin/nubo
#   NUBO_VMM_BIN         /testbed/bin/nubo-vmm
#   NUBO_STATE_DIR       /var/lib/nubo
#   NUBO_LISTEN          0.0.0.0:8774
#   NUBO_PUBLIC_URL      http://127.0.0.1:<testbed.apiport= from /proc/cmdline, else 8774>
#   NUBO_DEFAULT_KERNEL  /testbed/l2/bzImage
#   NUBO_DEFAULT_INITRD  /testbed/l2/initramfs.cpio.gz
#   NUBO_LOG_FILE        /var/log/nubo.log
#   NUBO_NET_ARGS        networking flags (in L1: net-fixture.sh's; elsewhere: none)
#   NUBO_VOLUME_ARGS     volume flags (default: the lvm backend on nubo-vg if it exists)
#   NUBO_PID_FILE        /run/nubo.pid
#   NUBO_ADMIN_PASSWORD  passed through when set
set -eu

param() { # param NAME DEFAULT - value of NAME= on the kernel command line
    for w in $(cat /proc/cmdline 2>/dev/null); do
        case "$w" in "$1"=*) echo "${w#*=}"; return ;; esac
    done
    echo "$2"
}

bin=${NUBO_BIN:-/testbed/bin/nubo}
vmm=${NUBO_VMM_BIN:-/testbed/bin/nubo-vmm}
state=${NUBO_STATE_DIR:-/var/lib/nubo}
listen=${NUBO_LISTEN:-0.0.0.0:8774}
public=${NUBO_PUBLIC_URL:-http://127.0.0.1:$(param testbed.apiport 8774)}
kernel=${NUBO_DEFAULT_KERNEL:-/testbed/l2/bzImage}
initrd=${NUBO_DEFAULT_INITRD:-/testbed/l2/initramfs.cpio.gz}
logf=${NUBO_LOG_FILE:-/var/log/nubo.log}
pidf=${NUBO_PID_FILE:-/run/nubo.pid}
# Networking as net-fixture.sh prepared L1: VXLAN over its underlay with a
# simulated second host, physnet1 on the trunk, and an external network
# with masquerade — in L1 only (testbed.serve=1 on the kernel command line):
# never on a real host, where the default is none.
l1_netargs="--vxlan-local-ip 192.168.100.1 --vxlan-peer 192.168.100.2 --physical-interface-mappings physnet1:trunk0 --network-vlan-ranges physnet1:100:199 --external-network 203.0.113.0/24"
if [ "$(param testbed.serve 0)" = 1 ]; then
    netargs=${NUBO_NET_ARGS-$l1_netargs}
else
    netargs=${NUBO_NET_ARGS-}
fi

# The lvm volume backend, where volume-fixture.sh made its volume group (L1).
volargs=${NUBO_VOLUME_ARGS-}
if [ -z "${NUBO_VOLUME_ARGS+x}" ] && command -v lvm >/dev/null 2>&1 && lvm vgs nubo-vg >/dev/null 2>&1; then
    volargs="--lvm-volume-group nubo-vg"
fi

[ -x "$bin" ] || { echo "nubo-start: no nubo binary at $bin" >&2; exit 1; }
if [ -s "$pidf" ]; then
    old=$(cat "$pidf")
    # A zombie (state Z) does not count: its parent just has not reaped it.
    if [ -d "/proc/$old" ] && ! grep -q '^State:.*Z' "/proc/$old/status" 2>/dev/null; then
        echo "nubo-start: nubo already running (pid $old)" >&2
        exit 1
    fi
fi
mkdir -p "$state" "$(dirname "$logf")" "$(dirname "$pidf")"
echo "=== nubo-start: $bin serve --state-dir $state --listen $listen --public-url $public $netargs $volargs" >>"$logf"
# Not a process-group leader (no job control here), so setsid execs in place
# and $! is the daemon's pid.
setsid "$bin" serve --state-dir "$state" --listen "$listen" --vmm "$vmm" \
    --default-kernel "$kernel" --default-initrd "$initrd" --public-url "$public" $netargs $volargs \
    </dev/null >>"$logf" 2>&1 &
echo $! >"$pidf"
echo "nubo-start: started nubo (pid $!), log $logf"
