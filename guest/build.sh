#!/usr/bin/env bash
# Build the Nubo test-guest artifacts from Debian packages (cached).
#
#   guest/build.sh            # outputs in guest/out (or $NUBO_GUEST_OUT)
#   NUBO_GUEST_FORCE=1 guest/build.sh   # rebuild even if up to date
#
# Outputs:
#   bzImage            Debian cloud kernel (LZ4-compressed bzImage)
#   vmlinux            ELF extracted from the bzImage (has a PVH entry note)
#   initramfs.cpio.gz  busybox + virtio/evdev/button modules + guest/init.sh as /init
#                      + the acpid power-button handler (/etc/acpi/PWRF/00000080)
#                      + guest/udhcpc.script as /etc/udhcpc/default.script
#   rootfs.ext4        same content as an ext4 image (for root=/dev/vda)
#   KERNEL_VERSION     e.g. 6.1.0-57-cloud-amd64
#   modules/lib/modules/$KVER   full module tree with modules.dep (for the testbed)
#   busybox            the static busybox binary (for the testbed)
#
# Needs: apt-get, dpkg, lz4, cpio, gzip, mkfs.ext4 (e2fsprogs), readelf.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${NUBO_GUEST_OUT:-$HERE/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

log() { echo "guest/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in apt-get apt-cache dpkg lz4 cpio gzip mkfs.ext4 readelf; do
    command -v "$tool" >/dev/null || die "missing tool '$tool' (apt-get install lz4 cpio e2fsprogs binutils)"
done

# ---------------------------------------------------------------- inputs ---
# The versioned kernel package behind the linux-image-cloud-amd64 metapackage.
kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
KPKG=$(kernel_pkg)
if [ -z "$KPKG" ]; then
    log "apt-cache knows no linux-image-cloud-amd64; running apt-get update"
    apt-get update -qq
    KPKG=$(kernel_pkg)
    [ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64"
fi
pkg_version() { apt-cache show --no-all-versions "$1" | awk '/^Version:/ { print $2; exit }'; }
KPKG_VER=$(pkg_version "$KPKG")
BB_VER=$(pkg_version busybox-static)

# Everything that influences the outputs goes into the stamp.
STAMP="kernel=$KPKG=$KPKG_VER busybox=$BB_VER
build=$(sha256sum "$HERE/build.sh" | cut -d' ' -f1)
init=$(sha256sum "$HERE/init.sh" | cut -d' ' -f1)
udhcpc=$(sha256sum "$HERE/udhcpc.script" | cut -d' ' -f1)
volwatch=$(sha256sum "$HERE/volwatch.sh" | cut -d' ' -f1)"

OUTPUTS=(bzImage vmlinux initramfs.cpio.gz rootfs.ext4 KERNEL_VERSION busybox)
print_outputs() {
    local kver; kver=$(cat "$OUT/KERNEL_VERSION")
    for f in "${OUTPUTS[@]}"; do echo "$OUT/$f"; done
    echo "$OUT/modules/lib/modules/$kver"
}

up_to_date() {
    [ -z "${NUBO_GUEST_FORCE:-}" ] || return 1
    [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] || return 1
    for f in "${OUTPUTS[@]}"; do [ -s "$OUT/$f" ] || return 1; done
    [ -f "$OUT/modules/lib/modules/$(cat "$OUT/KERNEL_VERSION")/modules.dep" ]
}
if up_to_date; then
    log "up to date ($KPKG $KPKG_VER)"
    print_outputs
    exit 0
fi
rm -f "$OUT/.stamp"

# -------------------------------------------------------------- download ---
# .debs are kept in $OUT/.debs so a rebuild after editing init.sh is offline.
DEBS=$OUT/.debs
mkdir -p "$DEBS"
fetch() { # fetch PKG VERSION - download unless already cached
    local pkg=$1 ver=$2
    if ! ls "$DEBS/${pkg}_"*"${ver#*:}_amd64.deb" >/dev/null 2>&1; then
        log "downloading $pkg $ver"
        (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2)
    fi
    ls "$DEBS/${pkg}_"*"${ver#*:}_amd64.deb" | head -n1
}
KDEB=$(fetch "$KPKG" "$KPKG_VER")
BBDEB=$(fetch busybox-static "$BB_VER")

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg -x "$KDEB" "$WORK/kernel"
dpkg -x "$BBDEB" "$WORK/busybox"

KVER=$(ls "$WORK/kernel/lib/modules")
[ "$(echo "$KVER" | wc -w)" = 1 ] || die "expected one module dir, got: $KVER"
log "kernel $KVER"

# ---------------------------------------------------------------- kernel ---
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$OUT/bzImage.tmp"

# extract_vmlinux BZIMAGE OUT: like the kernel's scripts/extract-vmlinux,
# try every compressed-stream magic offset until one decompresses to an ELF.
# The decompressors complain about trailing bytes after the stream (exit 1);
# that is expected, so only the ELF check decides.
extract_vmlinux() {
    local img=$1 out=$2 magic cmd off
    for spec in '\x02\x21\x4c\x18|lz4 -dc' \
                '\x1f\x8b\x08|gzip -dc' \
                '\xfd\x37\x7a\x58\x5a\x00|xz -dc' \
                '\x28\xb5\x2f\xfd|zstd -dc'; do
        magic=${spec%%|*} cmd=${spec#*|}
        command -v "${cmd%% *}" >/dev/null || continue
        for off in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1); do
            tail -c "+$((off + 1))" "$img" | $cmd >"$out" 2>/dev/null || true
            if readelf -h "$out" >/dev/null 2>&1; then
                log "vmlinux: ${cmd%% *} stream at offset $off"
                return 0
            fi
        done
    done
    return 1
}
extract_vmlinux "$OUT/bzImage.tmp" "$OUT/vmlinux.tmp" || die "no ELF found inside bzImage"
# The VMM boots vmlinux via PVH: require XEN_ELFNOTE_PHYS32_ENTRY (type 18).
readelf -n "$OUT/vmlinux.tmp" | grep -q 'Xen.*(0x00000012)' ||
    die "vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY (PVH) note"

# --------------------------------------------------------------- modules ---
MODROOT=$OUT/modules
rm -rf "$MODROOT"
mkdir -p "$MODROOT/lib"
cp -a "$WORK/kernel/lib/modules" "$MODROOT/lib/"
# Debian ships .ko uncompressed in bookworm; decompress if that ever changes
# (busybox insmod cannot load .ko.xz/.ko.zst).
find "$MODROOT" -name '*.ko.xz' -exec xz -d {} +
find "$MODROOT" -name '*.ko.zst' -exec zstd -q -d --rm {} +
# The .deb has no modules.dep (Debian runs depmod at install time).
"$WORK/busybox/bin/busybox" depmod -b "$MODROOT" "$KVER"

# ------------------------------------------------------ guest filesystem ---
# stage_root DIR: busybox + applet links + modules + init
GUEST_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev
               virtio_pci virtio_blk failover net_failover virtio_net evdev button"
stage_root() {
    local root=$1 m f
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,lib/nubo-modules,usr/bin,usr/sbin}
    cp "$WORK/busybox/bin/busybox" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    for m in $GUEST_MODULES; do
        f=$(find "$MODROOT/lib/modules/$KVER" -name "$m.ko" | head -n1)
        if [ -n "$f" ]; then cp "$f" "$root/lib/nubo-modules/"; else log "module $m: not found (built in?)"; fi
    done
    install -m 0755 "$HERE/init.sh" "$root/init"
    # DHCP (init.sh runs udhcpc on every eth*): the event script, and
    # resolv.conf on the tmpfs /run since the rootfs may be mounted read-only.
    mkdir -p "$root/etc/udhcpc"
    install -m 0755 "$HERE/udhcpc.script" "$root/etc/udhcpc/default.script"
    # Volume tests (init.sh starts it with nubo.vols=1).
    install -m 0755 "$HERE/volwatch.sh" "$root/bin/nubo-volwatch"
    ln -sf ../run/resolv.conf "$root/etc/resolv.conf"
    # The kernel opens /dev/console before devtmpfs is mounted.
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
    # busybox acpid (started by init.sh): KEY_POWER from /dev/input/event*
    # maps to "button/power PWRF ..." -> action PWRF/00000080, which acpid
    # runs relative to its config dir /etc/acpi.
    echo "PWRF PWRF/00000080" >"$root/etc/acpid.conf"
    mkdir -p "$root/etc/acpi/PWRF"
    printf '#!/bin/sh\necho NUBO-GUEST-POWER-BUTTON\nsync\npoweroff -f\n' >"$root/etc/acpi/PWRF/00000080"
    chmod 0755 "$root/etc/acpi/PWRF/00000080"
}

# L2 initramfs
stage_root "$WORK/initramfs"
(cd "$WORK/initramfs" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc --owner=0:0 --reproducible | gzip -9 -n) >"$OUT/initramfs.cpio.gz.tmp"

# Root filesystem image (no mount needed: mkfs.ext4 -d populates it).
stage_root "$WORK/rootfs"
touch "$WORK/rootfs/etc/nubo-rootfs"
ln -sf ../init "$WORK/rootfs/sbin/init"
rm -f "$OUT/rootfs.ext4.tmp"
mkfs.ext4 -q -F -L nubo-root -E root_owner=0:0 -d "$WORK/rootfs" "$OUT/rootfs.ext4.tmp" 32M >&2

cp "$WORK/busybox/bin/busybox" "$OUT/busybox.tmp"
echo "$KVER" >"$OUT/KERNEL_VERSION"
for f in bzImage vmlinux initramfs.cpio.gz rootfs.ext4 busybox; do
    mv -f "$OUT/$f.tmp" "$OUT/$f"
done
echo "$STAMP" >"$OUT/.stamp"
log "built ($KPKG $KPKG_VER)"
print_outputs
