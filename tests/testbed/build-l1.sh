#!/usr/bin/env bash
# Build the initramfs of the testbed's L1 VM.
#
#   tests/testbed/build-l1.sh [OUTPUT]   (default target/testbed/l1-initramfs.cpio)
#
# Contents: static busybox, kvm/kvm-amd (+deps, + the net modules of the nubo
# agent: VLAN, VXLAN, bridge, nftables with bridge conntrack and NAT) from the
# Debian cloud kernel, nubo-vmm with its shared libraries, kvmhold, the L2 guest
# artifacts (guest/build.sh), runner.sh + lib.sh + scenarios/, l1-init.sh as
# /init. Optionally qemu-system-x86_64 with libraries and firmware.
#
# Environment:
#   NUBO_VMM            VMM binary (default target/release/nubo-vmm); if it is
#                       missing, L1 is built without it (nubo scenarios fail)
#   NUBO_BIN            orchestrator daemon (default target/release/nubo); put
#                       into L1 as /testbed/bin/nubo when present (serve mode)
#   TESTBED_WITH_QEMU=1 include qemu-system-x86_64 (for qemu-* scenarios)
#   NUBO_GUEST_OUT      guest artifact dir (default guest/out)
#   NUBO_EXTRA_BINS     space-separated executables (e.g. a cargo test binary)
#                       put into L1 as /testbed/bin/NAME with their libraries
#
# The cpio is left uncompressed: unpacking is much faster than decompressing
# gzip under TCG, and QEMU just loads the file into L1 memory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUTFILE=${1:-$ROOT/target/testbed/l1-initramfs.cpio}
GUEST=${NUBO_GUEST_OUT:-$ROOT/guest/out}
VMM=${NUBO_VMM:-$ROOT/target/release/nubo-vmm}
NUBO=${NUBO_BIN:-$ROOT/target/release/nubo}
WITH_QEMU=${TESTBED_WITH_QEMU:-0}

log() { echo "build-l1.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "${NUBO_GUEST_BUILT:-}" = 1 ] || "$ROOT/guest/build.sh" >/dev/null
KVER=$(cat "$GUEST/KERNEL_VERSION")
MODSRC=$GUEST/modules/lib/modules/$KVER

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/nubo-l1.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,lib64} \
         "$STAGE"/testbed/{bin,l2}

# --- busybox: static, all applets as links in /bin.
cp "$GUEST/busybox" "$STAGE/bin/busybox"
for applet in $("$STAGE/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$STAGE/bin/$applet"
done
mknod -m 600 "$STAGE/dev/console" c 5 1
mknod -m 666 "$STAGE/dev/null" c 1 3
echo "root:x:0:0:root:/root:/bin/sh" >"$STAGE/etc/passwd"

# --- kernel modules: the listed ones plus their modules.dep closure.
# virtio_pci + virtio_net: the NIC of serve mode (serve.sh); nothing loads them otherwise.
L1_MODULES="kvm kvm-amd kvm-intel tun veth bridge vhost_net virtio_pci virtio_net"
# Networking of the nubo agent (VLAN segments, VXLAN, bridges, nftables port
# filters with bridge-family conntrack, router NAT): l1-init.sh loads these
# at boot (L1_NET_MODULES, written to /testbed/net-modules). Optional: a
# module missing from this kernel is a warning, not an error. Not
# br_netfilter: port filters are bridge-family tables, and br_netfilter would
# also send bridged frames through the ip family's hooks (the host's NAT).
L1_NET_MODULES="tun 8021q bridge vxlan veth nf_tables nft_ct nf_conntrack_bridge
    nft_meta_bridge nft_nat nft_masq nft_chain_nat nf_nat nft_reject nft_reject_bridge
    nft_fib_ipv4 nft_redir"
declare -A copied=()
copy_module() { # copy_module RELPATH (as in modules.dep) and, recursively, its deps
    local rel=$1 dep
    [ -z "${copied[$rel]:-}" ] || return 0
    copied[$rel]=1
    mkdir -p "$STAGE/lib/modules/$KVER/$(dirname "$rel")"
    cp "$MODSRC/$rel" "$STAGE/lib/modules/$KVER/$rel"
    for dep in $(awk -v m="$rel:" '$1 == m { $1 = ""; print }' "$MODSRC/modules.dep"); do
        copy_module "$dep"
    done
}
for m in $L1_MODULES; do
    rel=$(awk -F: -v m="/$m.ko" 'substr($1, length($1) - length(m) + 1) == m { print $1; exit }' "$MODSRC/modules.dep")
    [ -n "$rel" ] || die "module $m not in $MODSRC/modules.dep"
    copy_module "$rel"
done
net_loaded=()
for m in $L1_NET_MODULES; do
    rel=$(awk -F: -v m="/$m.ko" 'substr($1, length($1) - length(m) + 1) == m { print $1; exit }' "$MODSRC/modules.dep")
    if [ -z "$rel" ]; then
        if grep -q "/$m.ko\$" "$MODSRC/modules.builtin" 2>/dev/null; then
            log "net module $m is built in"
        else
            log "warning: net module $m not in $MODSRC/modules.dep; L1 goes without it"
        fi
        continue
    fi
    copy_module "$rel"
    net_loaded+=("$m")
done
echo "${net_loaded[*]}" >"$STAGE/testbed/net-modules"
# The lvm volume driver's device mapper (thin pools, thin snapshots) and loop
# devices for its test volume group (ctl/volume-fixture.sh): l1-init.sh loads
# them (/testbed/storage-modules). Optional like the net modules.
L1_STORAGE_MODULES="loop dm-mod dm-bufio dm-bio-prison dm-persistent-data dm-thin-pool dm-snapshot"
storage_loaded=()
for m in $L1_STORAGE_MODULES; do
    rel=$(awk -F: -v m="/$m.ko" 'substr($1, length($1) - length(m) + 1) == m { print $1; exit }' "$MODSRC/modules.dep")
    if [ -z "$rel" ]; then
        grep -q "/$m.ko\$" "$MODSRC/modules.builtin" 2>/dev/null ||
            log "warning: storage module $m not in $MODSRC/modules.dep; L1 goes without it"
        continue
    fi
    copy_module "$rel"
    storage_loaded+=("$m")
done
echo "${storage_loaded[*]}" >"$STAGE/testbed/storage-modules"
cp "$MODSRC"/modules.builtin "$MODSRC"/modules.order "$STAGE/lib/modules/$KVER/"
"$STAGE/bin/busybox" depmod -b "$STAGE" "$KVER"
log "modules: ${!copied[*]}"

# --- dynamic executables: copy the binary and every library ldd lists
# (including the loader) to the same absolute path inside L1.
copy_libs() { # copy_libs BINARY
    local lib
    # "libfoo.so => /path (0x..)" lines, plus the loader line "/lib64/ld-linux... (0x..)"
    for lib in $(ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        if [ ! -e "$STAGE$lib" ]; then
            mkdir -p "$STAGE$(dirname "$lib")"
            cp -L "$lib" "$STAGE$lib"
        fi
    done
}

if [ -x "$VMM" ]; then
    cp "$VMM" "$STAGE/testbed/bin/nubo-vmm"
    copy_libs "$VMM"
    log "nubo-vmm: $VMM"
else
    log "warning: no nubo-vmm at $VMM; nubo-vmm scenarios will fail"
fi

if [ -x "$NUBO" ]; then
    cp "$NUBO" "$STAGE/testbed/bin/nubo"
    copy_libs "$NUBO"
    log "nubo: $NUBO"
fi

if [ "$WITH_QEMU" = 1 ]; then
    QEMU=$(command -v qemu-system-x86_64) || die "TESTBED_WITH_QEMU=1 but qemu-system-x86_64 is not installed"
    cp "$QEMU" "$STAGE/usr/bin/"
    copy_libs "$QEMU"
    # Firmware/option ROMs for microvm and q35 (Debian spreads them over
    # /usr/share/qemu and /usr/share/seabios via symlinks; -L finds them).
    mkdir -p "$STAGE/usr/share/qemu"
    for f in bios-256k.bin bios-microvm.bin qboot.rom linuxboot.bin linuxboot_dma.bin \
             pvh.bin kvmvapic.bin multiboot.bin multiboot_dma.bin vgabios-stdvga.bin \
             efi-virtio.rom; do
        for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
            if [ -e "$d/$f" ]; then cp -L "$d/$f" "$STAGE/usr/share/qemu/"; break; fi
        done
    done
    log "qemu: $QEMU"
fi

# Image and filesystem checkers for the disk scenarios (optional: a scenario
# that needs one skips its check when it is missing); nft (the agent's port
# filters and router NAT, netstack::nft) and tcpdump (network tests), from
# scripts/deps.sh.
for tool in qemu-img debugfs nft tcpdump; do
    if path=$(command -v "$tool"); then
        mkdir -p "$STAGE/usr/bin"
        cp "$path" "$STAGE/usr/bin/"
        copy_libs "$path"
    fi
done

# lvm2 (the lvm volume driver runs `lvm <command>`), with the usual command
# names as links, and an lvm.conf for L1: no udev (devtmpfs only, LVM makes its
# own /dev nodes), no dmeventd, no thin_check (thin-provisioning-tools is not
# in L1), no metadata backups.
if path=$(command -v lvm); then
    mkdir -p "$STAGE/sbin" "$STAGE/etc/lvm"
    cp "$path" "$STAGE/sbin/lvm"
    copy_libs "$path"
    for c in lvs vgs pvs lvcreate lvremove lvextend lvchange vgcreate vgremove vgchange pvcreate pvremove; do
        ln -sf lvm "$STAGE/sbin/$c"
    done
    cat >"$STAGE/etc/lvm/lvm.conf" <<'LVMCONF'
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    multipath_component_detection = 0
    md_component_detection = 0
    fw_raid_component_detection = 0
    scan_lvs = 0
}
global {
    use_lvmlockd = 0
    thin_check_executable = ""
    thin_repair_executable = ""
    thin_dump_executable = ""
    event_activation = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 1
    monitoring = 0
}
backup {
    backup = 0
    archive = 0
}
LVMCONF
    log "lvm: $path"
else
    log "warning: no lvm2 (scripts/deps.sh): L1 goes without the lvm volume driver's tools"
fi

for bin in ${NUBO_EXTRA_BINS:-}; do
    [ -x "$bin" ] || die "NUBO_EXTRA_BINS: $bin is not an executable"
    cp "$bin" "$STAGE/testbed/bin/"
    copy_libs "$bin"
    log "extra: $bin"
done

# iproute2's ip (netns, vlan, vxlan, veth, bridge: busybox's ip has none of
# them) and bridge (FDB), for the network tests, in /usr/sbin; busybox's
# applet links go, so programs that search PATH (Command::new("ip")) get
# iproute2. But busybox sh runs its own applets before searching PATH:
# scripts in L1 must call /usr/sbin/ip (or define `ip() { /usr/sbin/ip "$@"; }`).
for tool in ip bridge; do
    if path=$(command -v "$tool") && [ "$(readlink -f "$path")" != "$(readlink -f /bin/busybox)" ]; then
        rm -f "$STAGE/bin/$tool"
        mkdir -p "$STAGE/usr/sbin"
        cp "$path" "$STAGE/usr/sbin/"
        copy_libs "$path"
    else
        log "warning: no iproute2 $tool: L1 keeps busybox's (no netns, vlan or vxlan)"
    fi
done

# kvmhold (kvmhold.c): keeps one KVM VM open in L1 so that VMs coming and
# going do not make L1's KVM live-patch its kernel (static keys), which
# wedges L1 now and then under QEMU/TCG. Static, so no libraries.
if command -v cc >/dev/null &&
    cc -static -O2 -o "$STAGE/testbed/bin/kvmhold" "$HERE/kvmhold.c" 2>"$STAGE/kvmhold.err"; then
    log "kvmhold: built"
else
    log "warning: cannot build kvmhold (cc -static): $(head -n3 "$STAGE/kvmhold.err" 2>/dev/null)"
fi
rm -f "$STAGE/kvmhold.err"

# --- L2 artifacts, scenarios, runner.
cp "$GUEST"/{bzImage,vmlinux,initramfs.cpio.gz,rootfs.ext4} "$STAGE/testbed/l2/"
cp "$HERE/runner.sh" "$HERE/lib.sh" "$STAGE/testbed/"
cp -r "${TESTBED_SCENARIO_DIR:-$HERE/scenarios}" "$STAGE/testbed/scenarios"
cat >"$STAGE/testbed/env.sh" <<ENV
L2_BZIMAGE=/testbed/l2/bzImage
L2_VMLINUX=/testbed/l2/vmlinux
L2_INITRD=/testbed/l2/initramfs.cpio.gz
L2_ROOTFS=/testbed/l2/rootfs.ext4
NUBO_VMM=/testbed/bin/nubo-vmm
QEMU_DATA=/usr/share/qemu
ENV
install -m 0755 "$HERE/l1-init.sh" "$STAGE/init"
# Serve mode (serve.sh): the control CGI and the daemon start script.
mkdir -p "$STAGE/testbed/ctl/cgi-bin" "$STAGE/var/lib/nubo" "$STAGE/var/log"
install -m 0755 "$HERE/ctl/cgi-bin/exec" "$STAGE/testbed/ctl/cgi-bin/exec"
install -m 0755 "$HERE/ctl/nubo-start.sh" "$STAGE/testbed/nubo-start.sh"
install -m 0755 "$HERE/ctl/net-fixture.sh" "$STAGE/testbed/net-fixture.sh"
install -m 0755 "$HERE/ctl/volume-fixture.sh" "$STAGE/testbed/volume-fixture.sh"

mkdir -p "$(dirname "$OUTFILE")"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc --owner=0:0 --reproducible) >"$OUTFILE.tmp.$$"
mv -f "$OUTFILE.tmp.$$" "$OUTFILE"   # atomic: concurrent runs may share it
log "wrote $OUTFILE ($(du -h "$OUTFILE" | cut -f1))"
echo "$OUTFILE"
