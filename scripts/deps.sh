#!/usr/bin/env bash
# Installs what building, booting and testing Nubo needs on Debian 12, once.
# Idempotent and quick when everything is there. Needs root (or sudo) only
# when something is missing.
set -euo pipefail

# Debian packages, each with the command that shows it is installed.
declare -A NEED=(
    [qemu-system-x86]=/usr/bin/qemu-system-x86_64   # the testbed's L1 VM and the QEMU baselines
    [qemu-utils]=/usr/bin/qemu-img                  # image checks in tests
    [busybox-static]=/bin/busybox                   # guest and L1 userland
    [e2fsprogs]=/sbin/mkfs.ext4                     # the guest's ext4 root image
    [cpio]=/usr/bin/cpio                            # initramfs archives
    [lz4]=/usr/bin/lz4                              # extracting vmlinux from the bzImage
    [time]=/usr/bin/time                            # peak RSS in benchmarks
    [python3]=/usr/bin/python3                      # benchmark drivers
    [binutils]=/usr/bin/readelf                     # checking the extracted vmlinux
    [nftables]=/usr/sbin/nft                        # port filters and router NAT (netstack::nft), also in L1
    [tcpdump]=/usr/bin/tcpdump                      # network tests, also in L1
    [iproute2]=/usr/sbin/ip                         # network tests (ip netns, vlan, vxlan), also in L1
    [lvm2]=/sbin/lvm                                # the lvm volume driver, copied into L1 (this host has no dm-thin)
)
missing=()
for pkg in "${!NEED[@]}"; do
    [ -e "${NEED[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || {
    echo "deps: cargo not found: install Rust (stable) with rustup first" >&2
    exit 1
}
