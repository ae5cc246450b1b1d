#!/usr/bin/env bash
# The main job: builds nubo and nubo-vmm, fetches and builds the guest
# (Debian's cloud kernel and a busybox root filesystem), starts the `nubo`
# daemon, and through its OpenStack API (the real `openstack` CLI) creates a
# flavor, uploads the guest image and boots a server. It ends with the server
# ACTIVE and its readiness line on the console, and prints how to reach the
# API (`source .../admin-openrc`).
#
# On a host with hardware KVM (kvm_intel or kvm_amd) the daemon and its guests
# run right here (state in target/quickstart/state, API on 127.0.0.1:8774).
# On a host whose /dev/kvm cannot boot Linux (PVM, or no KVM) the daemon runs
# inside the testbed VM (QEMU/TCG with nested SVM) and its API is forwarded to
# 127.0.0.1:8774; that VM keeps running in the background after this script.
#
# In the testbed, the daemon also has networking (VXLAN tenant networks and
# an external network `public`, 203.0.113.0/24, whose gateway is the testbed
# VM itself): the demo server then gets a tenant network, a router to
# `public`, a security group rule for HTTP and a floating IP, and the script
# prints how to reach it from inside the testbed VM. On a host with hardware
# KVM the daemon gets no networking flags (they would touch this host's own
# network): the server boots without a NIC.
#
# Environment: NUBO_API_PORT (8774), NUBO_CTL_PORT (8775, testbed control),
# NUBO_ADMIN_PASSWORD (else generated).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$PWD
OUT=$ROOT/target/quickstart
API_PORT=${NUBO_API_PORT:-8774}
IN_TESTBED=
CTL_PORT=${NUBO_CTL_PORT:-8775}
mkdir -p "$OUT"

log() { echo "quickstart: $*" >&2; }

scripts/deps.sh
cargo build --release -p vmm --bin nubo-vmm -p orchestrator --bin nubo
guest/build.sh >/dev/null
OSC_BIN=$(scripts/osc-venv.sh)
export PATH="$OSC_BIN:$PATH"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; then
    log "hardware KVM: running the nubo daemon on this host"
    STATE=$OUT/state
    if ! port_busy "$API_PORT"; then
        NUBO_BIN=$ROOT/target/release/nubo NUBO_VMM_BIN=$ROOT/target/release/nubo-vmm \
        NUBO_STATE_DIR=$STATE NUBO_LISTEN=127.0.0.1:$API_PORT \
        NUBO_PUBLIC_URL=http://127.0.0.1:$API_PORT \
        NUBO_DEFAULT_KERNEL=$ROOT/guest/out/bzImage NUBO_DEFAULT_INITRD=$ROOT/guest/out/initramfs.cpio.gz \
        NUBO_LOG_FILE=$OUT/nubo.log NUBO_PID_FILE=$OUT/nubo.pid \
            sh tests/testbed/ctl/nubo-start.sh
    else
        log "something already listens on 127.0.0.1:$API_PORT; using it"
    fi
    for _ in $(seq 1 100); do [ -s "$STATE/admin-openrc" ] && break; sleep 0.1; done
    cp "$STATE/admin-openrc" "$OUT/admin-openrc"
    STOP="kill \$(cat $OUT/nubo.pid)   # guests keep running; a restarted daemon adopts them"
else
    kind=none
    [ -e /dev/kvm ] && kind=$(ls /sys/module | grep -m1 '^kvm_' || echo unknown)
    log "this host's /dev/kvm ($kind) cannot boot a stock Linux kernel: the daemon runs"
    log "inside the testbed VM, with its API forwarded to 127.0.0.1:$API_PORT (boot ~20 s)"
    if port_busy "$API_PORT"; then
        log "error: 127.0.0.1:$API_PORT is in use (an earlier quickstart? stop it first, see below)"
        log "  curl -s --data-binary 'poweroff -f' http://127.0.0.1:$CTL_PORT/cgi-bin/exec"
        exit 1
    fi
    TESTBED_OUT=$OUT/testbed TESTBED_API_PORT=$API_PORT TESTBED_CTL_PORT=$CTL_PORT \
    TESTBED_SERVE_TIMEOUT=${NUBO_TESTBED_TIMEOUT:-86400} \
        setsid tests/testbed/serve.sh >"$OUT/serve.out" 2>&1 </dev/null &
    for _ in $(seq 1 300); do
        grep -q 'TESTBED-SERVE \(ready\|failed\)' "$OUT/serve.out" 2>/dev/null && break
        sleep 1
    done
    grep -q 'TESTBED-SERVE ready' "$OUT/serve.out" || { cat "$OUT/serve.out" >&2; exit 1; }
    ctl() { curl -sf --data-binary "$1" "http://127.0.0.1:$CTL_PORT/cgi-bin/exec"; }
    for _ in $(seq 1 100); do
        ctl 'cat /var/lib/nubo/admin-openrc' | grep '^export' >"$OUT/admin-openrc.tmp" && break
        sleep 0.2
    done
    install -m 600 "$OUT/admin-openrc.tmp" "$OUT/admin-openrc"; rm -f "$OUT/admin-openrc.tmp"
    STOP="curl -s --data-binary 'poweroff -f' http://127.0.0.1:$CTL_PORT/cgi-bin/exec   # stops the testbed VM"
    IN_TESTBED=1
fi

# shellcheck disable=SC1091
source "$OUT/admin-openrc"
for _ in $(seq 1 50); do openstack token issue -f value -c id >/dev/null 2>&1 && break; sleep 0.2; done
openstack flavor show m1.small >/dev/null 2>&1 ||
    openstack flavor create --ram 256 --vcpus 1 --disk 1 m1.small >/dev/null
# The guest stays up (nubo.then=net): DHCP on its NICs, httpd on port 80.
CMDLINE="console=ttyS0 root=/dev/vda rw quiet nubo.then=net"
if ! openstack image show debian-busybox >/dev/null 2>&1; then
    log "uploading guest/out/rootfs.ext4 as image debian-busybox"
    openstack image create --file guest/out/rootfs.ext4 --disk-format raw --container-format bare \
        --property os_command_line="$CMDLINE" debian-busybox >/dev/null
else
    openstack image set --property os_command_line="$CMDLINE" debian-busybox
fi
name=demo-$(date +%H%M%S)
NETARGS=()
if [ -n "${IN_TESTBED:-}" ] && openstack network show public >/dev/null 2>&1; then
    log "creating the tenant network demo-net (10.0.0.0/24) with a router to public"
    openstack network show demo-net >/dev/null 2>&1 || openstack network create demo-net >/dev/null
    openstack subnet show demo-subnet >/dev/null 2>&1 ||
        openstack subnet create --network demo-net --subnet-range 10.0.0.0/24 demo-subnet >/dev/null
    if ! openstack router show demo-router >/dev/null 2>&1; then
        openstack router create demo-router >/dev/null
        openstack router add subnet demo-router demo-subnet
        openstack router set --external-gateway public demo-router
    fi
    for proto in "tcp --dst-port 80" icmp; do
        # shellcheck disable=SC2086
        openstack security group rule create --protocol $proto default >/dev/null 2>&1 || true
    done
    NETARGS=(--network demo-net)
fi
log "creating server $name"
openstack server create --image debian-busybox --flavor m1.small "${NETARGS[@]}" --wait "$name" \
    -c id -c name -c status -f table
for _ in $(seq 1 120); do
    openstack console log show "$name" 2>/dev/null | grep -q NUBO-GUEST-READY && break
    sleep 1
done
log "console of $name:"
openstack console log show "$name" | grep -E 'NUBO-GUEST' || log "warning: no readiness line yet"
REACH=
if [ ${#NETARGS[@]} -gt 0 ]; then
    fip=$(openstack floating ip create public -f value -c floating_ip_address)
    openstack server add floating ip "$name" "$fip"
    openstack console log show "$name" | grep -m1 NUBO-NET || true
    log "$name: floating IP $fip"
    REACH="
$name has the floating IP $fip on the external network public, whose
gateway is the testbed VM. From inside that VM:

    curl -s --data-binary 'wget -q -O - http://$fip/' http://127.0.0.1:$CTL_PORT/cgi-bin/exec
"
fi
cat <<MSG
$REACH
The API is at http://127.0.0.1:$API_PORT. To use it:

    source $OUT/admin-openrc
    export PATH=$OSC_BIN:\$PATH      # the pinned openstack CLI
    openstack server list

To stop: $STOP
MSG
