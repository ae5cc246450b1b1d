#!/bin/sh
# Test-only networking around the nubo daemon in the testbed's L1 (serve
# mode), set up before the daemon starts. Never run on a real host: it
# creates links in the namespace it runs in.
#
#   underlay  ul0 (L1, 192.168.100.1/24)  <->  ul1 (namespace host2, 192.168.100.2/24)
#             the VXLAN underlay between the daemon's host and a simulated
#             second host (the daemon runs with --vxlan-local-ip 192.168.100.1
#             --vxlan-peer 192.168.100.2)
#   trunk     trunk0 (L1: physnet1)  <->  trunk1 (namespace switch)
#             a trunk for provider VLANs (--physical-interface-mappings
#             physnet1:trunk0 --network-vlan-ranges physnet1:100:199); frames
#             leave it tagged and are captured on trunk1
#
#   net-fixture.sh up | down
#
# The daemon's external network (--external-network 203.0.113.0/24) is the
# daemon's own doing; tests add an "outside" host to it themselves.
set -u
# busybox sh would run its own `ip` applet: use iproute2's.
ip() { /usr/sbin/ip "$@"; }
case "${1:-up}" in
up)
    set -e
    ip netns add host2
    ip link add ul0 type veth peer name ul1
    ip link set ul1 netns host2
    ip addr add 192.168.100.1/24 dev ul0
    ip link set ul0 up
    ip -n host2 addr add 192.168.100.2/24 dev ul1
    ip -n host2 link set ul1 up
    ip -n host2 link set lo up
    ip netns add switch
    ip link add trunk0 type veth peer name trunk1
    ip link set trunk1 netns switch
    ip link set trunk0 up
    ip -n switch link set trunk1 up
    ip -n switch link set lo up
    echo "net-fixture: underlay ul0/host2, trunk0/switch ready"
    ;;
down)
    ip netns del host2 2>/dev/null
    ip netns del switch 2>/dev/null
    ip link del ul0 2>/dev/null
    ip link del trunk0 2>/dev/null
    true
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
