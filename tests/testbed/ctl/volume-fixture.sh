#!/bin/sh
# Test-only volume group for the lvm volume driver in the testbed's L1: a
# sparse file on L1's state tmpfs, a loop device on it, a PV and the VG
# `nubo-vg` (the driver makes its thin pool itself). Never run on a real
# host: it creates loop devices and a VG.
#
#   volume-fixture.sh up | down | status
#
# Idempotent: `up` with the VG already there only prints it; `down` removes
# the VG (and every LV in it), the PV, the loop device and the file.
#
# Environment: NUBO_VG (default nubo-vg), NUBO_VG_FILE (default
# /var/lib/nubo/.nubo-vg.img when /var/lib/nubo is a tmpfs, L1's state tmpfs
# in serve mode, else /tmp/nubo-vg.img), NUBO_VG_SIZE (default 4G).
set -u
VG=${NUBO_VG:-nubo-vg}
if [ -n "${NUBO_VG_FILE:-}" ]; then
    FILE=$NUBO_VG_FILE
elif [ -d /var/lib/nubo ] && grep -q ' /var/lib/nubo tmpfs' /proc/mounts; then
    FILE=/var/lib/nubo/.nubo-vg.img
else
    FILE=/tmp/nubo-vg.img
fi
SIZE=${NUBO_VG_SIZE:-4G}
export LVM_SUPPRESS_FD_WARNINGS=1

loopdev() { # the loop device backed by $FILE, if any
    losetup -a 2>/dev/null | awk -v f="$FILE" 'index($0, f) { sub(":", "", $1); print $1; exit }'
}

up() {
    if lvm vgs "$VG" >/dev/null 2>&1; then
        echo "volume-fixture: $VG exists"
        lvm vgs "$VG"
        return 0
    fi
    set -e
    [ -e "$FILE" ] || truncate -s "$SIZE" "$FILE"
    dev=$(loopdev)
    if [ -z "$dev" ]; then
        dev=$(losetup -f)
        losetup "$dev" "$FILE"
    fi
    lvm pvcreate -y "$dev"
    lvm vgcreate "$VG" "$dev"
    set +e
    echo "volume-fixture: $VG on $dev ($FILE, $SIZE)"
    lvm vgs "$VG"
}

down() {
    if lvm vgs "$VG" >/dev/null 2>&1; then
        lvm vgchange -an "$VG" >/dev/null 2>&1
        lvm vgremove -f "$VG" || echo "volume-fixture: warning: vgremove $VG failed"
    fi
    dev=$(loopdev)
    if [ -n "$dev" ]; then
        lvm pvremove -y "$dev" >/dev/null 2>&1
        losetup -d "$dev" || echo "volume-fixture: warning: losetup -d $dev failed"
    fi
    rm -f "$FILE"
    echo "volume-fixture: $VG removed"
}

case "${1:-up}" in
up) up ;;
down) down ;;
status)
    lvm vgs "$VG" && lvm lvs "$VG"
    ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
