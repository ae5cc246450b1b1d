#!/usr/bin/env bash
# Build the I/O benchmark root filesystem for the testbed's L2 guest.
#
#   guest/bench-build.sh      # -> guest/out/bench/rootfs.ext4 (cached)
#
# The image is the normal rootfs (busybox, guest/init.sh as /sbin/init,
# /etc/nubo-rootfs) plus fio and iperf3 from Debian 12 packages with exactly
# the shared libraries they load (resolved by the loader in a chroot), a
# /bench.sh, and an /init wrapper: with `nubo.bench=1` on the kernel command
# line it runs /bench.sh and powers off, otherwise it execs guest/init.sh.
# The initramfs of guest/build.sh switch_roots into it (root=/dev/vda).
#
# /bench.sh (see below) prints:
#   BENCH_FIO name=<job> iops=<n> bw_kib=<n>
#   BENCH_IRQ name=<job> irqs=<n> ios=<n>   (interrupts of vdb's queues, requests done)
#   BENCH_NET dir=g2h|h2g mbps=<n>
#
# Needs: guest/build.sh outputs, apt-get/apt-cache/dpkg, mkfs.ext4, chroot (root).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GOUT=${NUBO_GUEST_OUT:-$HERE/out}
OUT=$GOUT/bench
mkdir -p "$OUT"
log() { echo "guest/bench-build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

"$HERE/build.sh" >/dev/null
STAMP="fio=$(apt-cache show --no-all-versions fio | awk '/^Version:/ {print $2; exit}')
iperf3=$(apt-cache show --no-all-versions iperf3 | awk '/^Version:/ {print $2; exit}')
build=$(sha256sum "$HERE/bench-build.sh" | cut -d' ' -f1)
init=$(sha256sum "$HERE/init.sh" | cut -d' ' -f1)
busybox=$(sha256sum "$GOUT/busybox" | cut -d' ' -f1)"
if [ -z "${NUBO_GUEST_FORCE:-}" ] && [ -s "$OUT/rootfs.ext4" ] && [ -f "$OUT/.stamp" ] &&
   [ "$(cat "$OUT/.stamp")" = "$STAMP" ]; then
    log "up to date"; echo "$OUT/rootfs.ext4"; exit 0
fi
rm -f "$OUT/.stamp"

# --- packages: fio, iperf3 and the closure of their library dependencies
# (only lib*/libc6-like packages are followed: fio's python3 and iperf3's
# debconf/adduser are for scripts and maintainer hooks, not the binaries).
declare -A seen=()
queue=(fio iperf3 libiperf0)
pkgs=()
while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}; queue=("${queue[@]:1}")
    [ -z "${seen[$p]:-}" ] || continue
    seen[$p]=1
    pkgs+=("$p")
    for d in $(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                 --no-replaces --no-enhances "$p" 2>/dev/null |
               awk '$1 ~ /^(\|)?(Pre)?Depends:$/ && $2 !~ /^</ { print $2 }'); do
        case "$d" in lib*|zlib1g|gcc-*-base) queue+=("$d") ;; esac
    done
done
log "${#pkgs[@]} packages"
DEBS=$OUT/.debs
mkdir -p "$DEBS"
missing=()
for p in "${pkgs[@]}"; do
    ls "$DEBS/${p}_"*.deb >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "downloading ${#missing[@]} packages"
    (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "${missing[@]}" >&2)
fi

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
X=$WORK/extract
mkdir -p "$X"
for p in "${pkgs[@]}"; do dpkg -x "$(ls "$DEBS/${p}_"*.deb | head -n1)" "$X"; done
# Debian 12 is merged-/usr: make /lib, /lib64, /bin point into /usr as well.
for d in lib lib64 bin sbin; do
    if [ -d "$X/$d" ] && [ ! -L "$X/$d" ]; then
        mkdir -p "$X/usr/$d"; cp -a "$X/$d/." "$X/usr/$d/"; rm -rf "${X:?}/$d"
    fi
    mkdir -p "$X/usr/$d"; ln -sfn "usr/$d" "$X/$d"
done
LOADER=/lib64/ld-linux-x86-64.so.2
[ -e "$X$LOADER" ] || die "no $LOADER in the extracted packages"
for b in fio iperf3; do
    chroot "$X" "/usr/bin/$b" --version >&2 || die "$b does not run in the extracted tree"
done

# --- the image: normal rootfs + fio/iperf3 + the libraries they load.
R=$WORK/rootfs
mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,tmp,root,mnt,lib/nubo-modules,usr/bin,usr/sbin,usr/lib}
cp "$GOUT/busybox" "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"
done
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"
touch "$R/etc/nubo-rootfs"
install -m 0755 "$HERE/init.sh" "$R/nubo-init"
ln -sf ../nubo-init "$R/sbin/init"
mkdir -p "$R/lib/x86_64-linux-gnu" "$R/lib64"
cp "$X/usr/bin/fio" "$X/usr/bin/iperf3" "$R/usr/bin/"
for b in fio iperf3; do
    for lib in $(chroot "$X" $LOADER --list "/usr/bin/$b" |
                 awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        mkdir -p "$R$(dirname "$lib")"
        [ -e "$R$lib" ] || cp -L "$X$lib" "$R$lib"
    done
done
for b in fio iperf3; do
    chroot "$R" "/usr/bin/$b" --version >&2 || die "$b does not run in the image tree"
done

cat >"$R/init" <<'INIT'
#!/bin/sh
# Bench wrapper: nubo.bench=1 -> /bench.sh then power off; else guest/init.sh.
case " $(cat /proc/cmdline 2>/dev/null) " in
    *" nubo.bench=1 "*) ;;
    *) exec /nubo-init ;;
esac
PATH=/bin:/sbin:/usr/bin:/usr/sbin; export PATH
grep -q " /proc " /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q " /sys " /proc/mounts || mount -t sysfs sysfs /sys
grep -q " /dev " /proc/mounts || mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /tmp
sh /bench.sh
echo "BENCH_DONE"
sync; poweroff -f
while :; do sleep 3600; done
INIT
chmod 0755 "$R/init"

cat >"$R/bench.sh" <<'BENCH'
#!/bin/sh
# fio on /dev/vdb, then iperf3 against nubo.peer over eth0 (nubo.ip).
param() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}"; return ;; esac; done; echo "$2"; }
RUNTIME=$(param nubo.bench_runtime 10)
DEV=/dev/vdb
read -r up _ </proc/uptime
echo "BENCH_GUEST_START uptime=$up cpus=$(nproc)"
# nubo.bench_jobs=a,b,...: which fio jobs (default: the four classic ones);
# nubo.bench_net=0 skips iperf3.
JOBS=$(param nubo.bench_jobs randread-4k-qd32,randwrite-4k-qd32,seqread-1m,seqwrite-1m)
# Per job also the interrupts of $DEV's queues (all vCPUs) and the requests it
# completed, to compare interrupts per request between VMMs:
#   BENCH_IRQ name=<job> irqs=<n> ios=<n>
VD=$(basename "$(readlink /sys/block/vdb/device 2>/dev/null)")
irqs() { awk -v d="$VD-" 'index($NF, d) == 1 { for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) s += $i } END { print s + 0 }' /proc/interrupts; }
ios() { awk '{ print $1 + $5 }' /sys/block/vdb/stat; }
if [ -b $DEV ]; then
    for name in $(echo "$JOBS" | tr ',' ' '); do
        # name -> rw bs iodepth numjobs
        case "$name" in
            randread-4k-qd1) set -- randread 4k 1 1 ;;
            randwrite-4k-qd1) set -- randwrite 4k 1 1 ;;
            randread-4k-qd32) set -- randread 4k 32 1 ;;
            randwrite-4k-qd32) set -- randwrite 4k 32 1 ;;
            # two submitters (one per vCPU, so one per blk-mq hardware queue), 16 deep each
            randread-4k-qd32-j2) set -- randread 4k 16 2 ;;
            randwrite-4k-qd32-j2) set -- randwrite 4k 16 2 ;;
            seqread-1m) set -- read 1M 8 1 ;;
            seqwrite-1m) set -- write 1M 8 1 ;;
            *) echo "BENCH_FIO_ERROR name=$name unknown job"; continue ;;
        esac
        i0=$(irqs) n0=$(ios)
        # terse v3: field 7/8 = read bw KiB/s, iops; 48/49 = write bw KiB/s, iops
        line=$(fio --name="$name" --filename=$DEV --rw="$1" --bs="$2" --iodepth="$3" --numjobs="$4" \
                   --ioengine=libaio --direct=1 --size=100% --runtime="$RUNTIME" --time_based \
                   --ramp_time=1 --group_reporting --output-format=terse --terse-version=3 2>&1 | tail -n1)
        case "$1" in
            *read) bw=$(echo "$line" | cut -d';' -f7) iops=$(echo "$line" | cut -d';' -f8) ;;
            *)     bw=$(echo "$line" | cut -d';' -f48) iops=$(echo "$line" | cut -d';' -f49) ;;
        esac
        case "$iops" in ''|*[!0-9]*) echo "BENCH_FIO_ERROR name=$name out=$line"; continue ;; esac
        echo "BENCH_FIO name=$name iops=$iops bw_kib=$bw"
        echo "BENCH_IRQ name=$name irqs=$(($(irqs) - i0)) ios=$(($(ios) - n0))"
    done
else
    echo "BENCH_FIO_ERROR no $DEV"
fi
[ "$(param nubo.bench_net 1)" = 1 ] || exit 0
ip=$(param nubo.ip "") peer=$(param nubo.peer "")
if [ -n "$ip" ] && [ -d /sys/class/net/eth0 ]; then
    ip addr add "$ip" dev eth0 && ip link set eth0 up
    ip link set lo up
    i=0
    until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 20 ] || { echo "BENCH_NET_ERROR cannot ping $peer"; break; }
    done
    for dir in g2h h2g; do
        flag=; [ $dir = h2g ] && flag=-R
        # -f m: Mbits/s; the receiver's summary line is the one to report.
        out=$(iperf3 -c "$peer" -t "$(param nubo.bench_net_time 5)" -f m $flag 2>&1)
        mbps=$(echo "$out" | awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") v = $(i - 1) } END { print v }')
        if [ -n "$mbps" ]; then echo "BENCH_NET dir=$dir mbps=$mbps"
        else echo "BENCH_NET_ERROR dir=$dir"; echo "$out" | tail -n 5; fi
    done
fi
BENCH
chmod 0755 "$R/bench.sh"

rm -f "$OUT/rootfs.ext4.tmp"
size=$(( $(du -sm "$R" | cut -f1) + 32 ))
mkfs.ext4 -q -F -L nubo-bench -E root_owner=0:0 -d "$R" "$OUT/rootfs.ext4.tmp" "${size}M" >&2
mv -f "$OUT/rootfs.ext4.tmp" "$OUT/rootfs.ext4"
echo "$STAMP" >"$OUT/.stamp"
log "built $OUT/rootfs.ext4 (${size} MiB)"
echo "$OUT/rootfs.ext4"
