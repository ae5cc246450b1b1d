#!/bin/sh
# Nubo test-guest init (busybox sh). One source, installed as /init in both
# the L2 initramfs and rootfs.ext4 (where /sbin/init links to it too).
#
#  * mounts proc/sys/dev, loads the virtio modules shipped in /lib/nubo-modules
#  * in the initramfs with `root=/dev/vda` on the command line: waits for
#    /dev/vda, mounts it and switch_roots into the rootfs copy of this script
#  * otherwise prints exactly one readiness line on the console:
#      NUBO-GUEST-READY cpus=N memtotal_kb=N uptime=S.SS [root=vda]
#  * then does what `nubo.then=` says: poweroff (default) | reboot | halt |
#    blkcheck (report and exercise virtio-blk disks, then power off) |
#    blkload (concurrent direct I/O on the data disks, see below) |
#    netcheck (configure eth0, ping the host, receive a TCP stream) |
#    net (stay up; probes, see below) | shell | counter (prints "COUNTER n uptime" every 0.1 s, n = 1, 2, ...) |
#    hotplug (report disks and NICs as they come and go, see below)
#  * just before the readiness line, starts busybox acpid so an ACPI power
#    button press (PNP0C0C, button.ko -> /dev/input/event*) runs
#    /etc/acpi/PWRF/00000080 (from guest/build.sh): it prints
#    NUBO-GUEST-POWER-BUTTON and powers off. `nubo.ignore_power=1` skips
#    acpid, so the button is ignored.
#  * also before the readiness line, in the background so boot is not
#    serialized: DHCP on EVERY eth* NIC (busybox udhcpc with
#    /etc/udhcpc/default.script = guest/udhcpc.script: MTU from option 26,
#    address, routes from option 121 `staticroutes` or option 3, DNS into
#    /etc/resolv.conf -> /run/resolv.conf, hostname from option 12). Eight
#    DISCOVERs a second apart (~8 s) before a NIC is reported failed; udhcpc
#    keeps retrying and renewing afterwards. ONE console line per NIC, on
#    its first outcome:
#      NUBO-NET <ifname> mac=<mac> ip=<addr>/<prefix> gw=<gw|none> mtu=<mtu>
#      NUBO-NET <ifname> mac=<mac> dhcp=failed
#    No DHCP with `nubo.dhcp=0` or `nubo.then=netcheck` (which configures
#    eth0 statically from nubo.ip). udhcpc needs AF_PACKET: built into the
#    Debian cloud kernel (CONFIG_PACKET=y, see modules.builtin).
#  * with `nubo.vols=1` (or `ro`): /bin/nubo-volwatch in the background,
#    which reports every disk but vda as it comes, grows and goes, and
#    leaves a checksummed record on each (see guest/volwatch.sh).
#  * and busybox httpd on port 80 serving /run/www/index.html: the guest's
#    hostname and a newline (the DHCP hostname once a lease arrives), so
#    tests can check TCP reachability (security groups, floating IPs)
#    without logging in.
#  * with `nubo.dmesg=1`, after the readiness line: NUBO-CLOCKSOURCE <name>
#    and the kernel log as DMESG lines (initcalls under 100 us left out).
#
# Deliberately no `set -e`: PID 1 must never exit (that panics the kernel).

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

mnt() { # mnt TYPE DIR [OPTS] - mount unless already mounted
    grep -q " $2 " /proc/mounts 2>/dev/null && return 0  # (busybox has no mountpoint)
    mkdir -p "$2"
    mount -t "$1" ${3:+-o "$3"} "$1" "$2" 2>/dev/null
}
mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
# The kernel opened /dev/console for us; re-open in case it was missing.
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

CMDLINE=$(cat /proc/cmdline)
param() { # param NAME DEFAULT - value of NAME= on the kernel command line
    for w in $CMDLINE; do
        case "$w" in "$1"=*) echo "${w#*=}"; return ;; esac
    done
    echo "$2"
}

# In the rootfs this marker exists; in the initramfs it does not.
IN_ROOTFS=
[ -e /etc/nubo-rootfs ] && IN_ROOTFS=1

# Modules in dependency order; missing files (built in / not shipped) are fine.
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev \
         virtio_pci virtio_blk failover net_failover virtio_net evdev button; do
    [ -f "/lib/nubo-modules/$m.ko" ] && insmod "/lib/nubo-modules/$m.ko" 2>/dev/null
done

ROOT=$(param root "")
if [ -z "$IN_ROOTFS" ] && [ "$ROOT" = /dev/vda ]; then
    # Bounded wait for the block device (~5 s in 0.05 s steps).
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
    if [ ! -b /dev/vda ]; then
        echo "NUBO-GUEST-ERROR /dev/vda did not appear"
    else
        RWMODE=ro
        case " $CMDLINE " in *" rw "*) RWMODE=rw ;; esac
        mkdir -p /newroot
        if mount -t ext4 -o "$RWMODE" /dev/vda /newroot; then
            # Hand our mounts over (the rootfs init re-mounts if needed).
            for d in dev proc sys; do
                mkdir -p "/newroot/$d"
                mount --move "/$d" "/newroot/$d" 2>/dev/null || umount "/$d" 2>/dev/null
            done
            exec switch_root /newroot /init
        fi
        echo "NUBO-GUEST-ERROR cannot mount /dev/vda"
    fi
    # Fall through: report readiness from the initramfs so the host sees why.
fi

# Online CPUs: parse ranges like "0-3,5" from sysfs, fall back to nproc.
count_cpus() {
    online=$(cat /sys/devices/system/cpu/online 2>/dev/null) || { nproc; return; }
    n=0
    for r in $(echo "$online" | tr ',' ' '); do
        case "$r" in
            *-*) n=$((n + ${r#*-} - ${r%-*} + 1)) ;;
            *) n=$((n + 1)) ;;
        esac
    done
    echo "$n"
}
# Power button -> acpid. acpid opens /dev/input/event* once at startup and
# writes its pid file after that, so wait (bounded, ~1 s) for the pid file:
# a button press right after the readiness line must not be lost.
start_acpid() {
    if [ ! -c /dev/input/event0 ]; then
        echo "NUBO-GUEST-NOTE no /dev/input/event0: the power button is not handled"
        return
    fi
    rm -f /dev/.acpid.pid
    acpid -d -c /etc/acpi -a /etc/acpid.conf -p /dev/.acpid.pid </dev/null &
    i=0
    while [ ! -s /dev/.acpid.pid ] && [ $i -lt 100 ]; do usleep 10000; i=$((i + 1)); done
}
[ "$(param nubo.ignore_power 0)" = 1 ] || start_acpid

# Writable even on a read-only rootfs: DHCP state, resolv.conf, www. (Not
# in the initramfs before switch_root: this is the final init.)
mnt tmpfs /run
# DHCP on every eth* NIC, one background udhcpc each (see the header).
start_dhcp() {
    [ "$(param nubo.dhcp 1)" = 0 ] && return
    [ "$(param nubo.then poweroff)" = netcheck ] && return
    for d in /sys/class/net/eth*; do
        [ -e "$d" ] || continue
        ifname=${d##*/}
        ip link set dev "$ifname" up
        # -t 8 -T 1: eight DISCOVERs 1 s apart, then `leasefail` (reported
        # once); -A 10: retry every 10 s after that. No -q: it stays to renew.
        udhcpc -i "$ifname" -f -t 8 -T 1 -A 10 -O mtu -O staticroutes \
            -s /etc/udhcpc/default.script </dev/null >/dev/null 2>&1 &
    done
}
start_dhcp

# Volume tests: report and exercise hot-plugged disks (guest/volwatch.sh).
case "$(param nubo.vols 0)" in
    1) nubo-volwatch rw </dev/null & ;;
    ro) nubo-volwatch ro </dev/null & ;;
esac

# The page tests fetch on port 80 (udhcpc.script rewrites it with the DHCP
# hostname).
mkdir -p /run/www
[ -s /run/www/index.html ] ||
    echo "$(hostname) mac=$(cat /sys/class/net/eth0/address 2>/dev/null)" >/run/www/index.html
httpd -p 80 -h /run/www </dev/null >/dev/null 2>&1 ||
    echo "NUBO-GUEST-NOTE httpd did not start"

MEMKB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
read -r UPTIME _ </proc/uptime
echo "NUBO-GUEST-READY cpus=$(count_cpus) memtotal_kb=$MEMKB uptime=$UPTIME${IN_ROOTFS:+ root=vda}"
# Boot-time tracing (bench/testbed-scenarios/boot-trace.sh): the clocksource
# and the kernel log without the short initcalls, after the timed part.
if [ "$(param nubo.dmesg 0)" = 1 ]; then
    echo "NUBO-CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
    dmesg | grep -v -e ' calling  ' -e 'returned -\{0,1\}[0-9]* after [0-9]\{1,2\} usecs' | sed 's/^/DMESG /'
fi

case "$(param nubo.then poweroff)" in
    reboot) sync; reboot -f ;;
    halt)   while :; do sleep 3600; done ;;
    counter)
        n=0
        while :; do
            n=$((n + 1))
            read -r up _ </proc/uptime
            echo "COUNTER $n $up"
            usleep 100000
        done ;;
    blkcheck)
        # Disk checks for the testbed: what each virtio-blk disk looks like,
        # a pattern written through the first writable non-root disk, and a
        # write that a read-only disk must refuse.
        for b in /sys/block/vd*; do
            [ -e "$b" ] || continue
            n=${b##*/}
            echo "NUBO-BLK name=$n serial=$(cat "$b/serial" 2>/dev/null) ro=$(cat "$b/ro") sectors=$(cat "$b/size") queues=$(ls -d "$b"/mq/* | wc -l)"
            [ "$n" = vda ] && [ -n "$IN_ROOTFS" ] && continue
            if [ "$(cat "$b/ro")" = 1 ]; then
                if echo x | dd of="/dev/$n" bs=512 count=1 conv=fsync 2>/dev/null; then
                    echo "NUBO-BLK-RO-WRITE name=$n accepted"
                else
                    echo "NUBO-BLK-RO-WRITE name=$n refused"
                fi
            else
                pat="NUBO-PATTERN-$n-$(cat /proc/sys/kernel/random/uuid 2>/dev/null | cut -c1-8)"
                printf '%s\n' "$pat" | dd of="/dev/$n" bs=512 seek=8 count=1 conv=sync,fsync 2>/dev/null &&
                    echo "NUBO-BLK-WROTE name=$n pattern=$pat"
                back=$(dd if="/dev/$n" bs=512 skip=8 count=1 iflag=direct 2>/dev/null | head -n1)
                echo "NUBO-BLK-READBACK name=$n pattern=$back"
            fi
        done
        if [ -n "$IN_ROOTFS" ] && echo "written-by-guest" >/nubo-written 2>/dev/null && sync; then
            echo "NUBO-BLK-ROOTWRITE ok $(cat /nubo-written)"
        fi
        sync; poweroff -f ;;
    blkload)
        # Concurrent direct I/O on every disk (but the root) for nubo.load_secs
        # (default 8) seconds: per disk, nubo.load_workers (default 4)
        # writers each rewriting its own 1 MiB region (at k MiB) with a
        # random pattern in 4 KiB direct writes, and as many readers reading
        # 4 KiB blocks of 1 MiB regions from 4 MiB on.
        #   NUBO-BLKLOAD-DISK name=vdX queues=N    (blk-mq hardware queues)
        #   NUBO-BLKLOAD-RUNNING                   (all workers started)
        #   NUBO-BLKLOAD-REGION name=vdX k=K want=MD5 got=MD5   (read back)
        #   NUBO-BLKLOAD-DONE writes=N reads=N errors=N
        secs=$(param nubo.load_secs 8)
        regions=$(seq 0 $(($(param nubo.load_workers 4) - 1)))
        rm -f /tmp/stop /tmp/load-*
        pids=
        for b in /sys/block/vd*; do
            n=${b##*/}
            [ "$n" = vda ] && [ -n "$IN_ROOTFS" ] && continue
            echo "NUBO-BLKLOAD-DISK name=$n queues=$(ls -d "$b"/mq/* | wc -l)"
            for k in $regions; do
                dd if=/dev/urandom of="/tmp/p-$n-$k" bs=1M count=1 2>/dev/null
                (
                    w=0 e=0
                    while [ ! -e /tmp/stop ]; do
                        if dd if="/tmp/p-$n-$k" of="/dev/$n" bs=4k seek=$((k * 256)) oflag=direct conv=notrunc 2>/dev/null; then
                            w=$((w + 1))
                        else
                            e=$((e + 1))
                        fi
                    done
                    echo "w $w $e" >"/tmp/load-w-$n-$k"
                ) &
                pids="$pids $!"
                (
                    r=0 e=0
                    while [ ! -e /tmp/stop ]; do
                        if dd if="/dev/$n" of=/dev/null bs=4k skip=$((1024 + k * 256)) count=256 iflag=direct 2>/dev/null; then
                            r=$((r + 1))
                        else
                            e=$((e + 1))
                        fi
                    done
                    echo "r $r $e" >"/tmp/load-r-$n-$k"
                ) &
                pids="$pids $!"
            done
        done
        echo "NUBO-BLKLOAD-RUNNING"
        sleep "$secs"
        touch /tmp/stop
        # (only the workers: acpid, httpd and udhcpc are children too)
        for p in $pids; do wait "$p"; done
        for b in /sys/block/vd*; do
            n=${b##*/}
            [ "$n" = vda ] && [ -n "$IN_ROOTFS" ] && continue
            for k in $regions; do
                want=$(md5sum <"/tmp/p-$n-$k" | cut -d' ' -f1)
                got=$(dd if="/dev/$n" bs=4k skip=$((k * 256)) count=256 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
                echo "NUBO-BLKLOAD-REGION name=$n k=$k want=$want got=$got"
            done
        done
        cat /tmp/load-* | awk '$1 == "w" { w += $2 } $1 == "r" { r += $2 } { e += $3 }
            END { printf "NUBO-BLKLOAD-DONE writes=%d reads=%d errors=%d\n", w, r, e }'
        sync; poweroff -f ;;
    netcheck)
        # Network checks for the testbed: eth0 gets nubo.ip (e.g.
        # 192.168.127.2/24), pings nubo.peer, then receives one TCP stream
        # on port 5000 and reports its size and md5, then powers off.
        ip=$(param nubo.ip "") peer=$(param nubo.peer "")
        ip addr add "$ip" dev eth0 && ip link set eth0 up && echo "NUBO-NET-UP $ip"
        if ping -c 3 -W 2 "$peer" >/dev/null 2>&1; then echo "NUBO-NET-PING ok"; else echo "NUBO-NET-PING fail"; fi
        echo "NUBO-NET-LISTEN 5000"
        nc -l -p 5000 >/tmp/recv
        echo "NUBO-NET-RECV bytes=$(wc -c </tmp/recv) md5=$(md5sum </tmp/recv | cut -d' ' -f1)"
        sync; poweroff -f ;;
    net)
        # Stay up as a networked guest (DHCP and httpd run already). With
        # nubo.probe=IP:PORT[,IP:PORT...], fetch http://IP:PORT/ every
        # second and print, whenever a target's state changes:
        #   NUBO-PROBE IP:PORT ok <first line of the answer> | NUBO-PROBE IP:PORT fail
        # With nubo.spoof=SRC,DST, also ping DST every second from SRC, an
        # address that is not ours (anti-spoofing must drop it).
        # Benchmarks (bench/net.py): nubo.ip=A.B.C.D/N configures eth0
        # statically (with nubo.dhcp=0); nubo.sink=PORT discards every TCP
        # stream sent to PORT; nubo.send=IP:PORT:MIB:N sends N streams of
        # MIB MiB of zeros to IP:PORT, one after the other, printing
        #   NUBO-SEND IP:PORT mib=MIB secs=S.SS   (after each)
        static_ip=$(param nubo.ip "")
        if [ -n "$static_ip" ]; then
            ip link set eth0 up && ip addr add "$static_ip" dev eth0
        fi
        sink=$(param nubo.sink "")
        if [ -n "$sink" ]; then
            # One `cat` per connection, for as many as come (-ll -e).
            printf '#!/bin/sh\nexec cat >/dev/null\n' >/run/nubo-sink
            chmod +x /run/nubo-sink
            nc -ll -p "$sink" -e /run/nubo-sink </dev/null >/dev/null 2>&1 &
        fi
        send=$(param nubo.send "")
        if [ -n "$send" ]; then
            (
                IFS=: read -r sip sport smib sn <<EOS
$send
EOS
                while ! ip -4 addr show dev eth0 | grep -q inet; do sleep 1; done
                # Wait for the sink to listen.
                until echo | nc -w 2 "$sip" "$sport" 2>/dev/null; do sleep 1; done
                i=0
                while [ "$i" -lt "${sn:-1}" ]; do
                    read -r t0 _ </proc/uptime
                    dd if=/dev/zero bs=1M count="$smib" 2>/dev/null | nc "$sip" "$sport"
                    read -r t1 _ </proc/uptime
                    echo "NUBO-SEND $sip:$sport mib=$smib secs=$(echo "$t1 $t0" | awk '{printf "%.2f", $1 - $2}')"
                    i=$((i + 1))
                done
            ) &
        fi
        probes=$(param nubo.probe "" | tr , ' ')
        spoof=$(param nubo.spoof "")
        if [ -n "$spoof" ]; then
            src=${spoof%%,*} dst=${spoof#*,}
            (
                while ! ip -4 addr show dev eth0 | grep -q inet; do sleep 1; done
                ip addr add "$src/32" dev eth0
                while :; do ping -c 1 -W 1 -I "$src" "$dst" >/dev/null 2>&1; sleep 1; done
            ) &
        fi
        if [ -n "$probes" ]; then
            mkdir -p /run/probe
            while :; do
                for t in $probes; do
                    a=$(timeout 3 wget -q -O - "http://$t/" 2>/dev/null | head -n 1)
                    if [ -n "$a" ]; then now="ok $a"; else now=fail; fi
                    f=/run/probe/$(echo "$t" | tr .: __)
                    if [ "$(cat "$f" 2>/dev/null)" != "$now" ]; then
                        echo "$now" >"$f"
                        echo "NUBO-PROBE $t $now"
                    fi
                done
                sleep 1
            done
        fi
        while :; do sleep 3600; done ;;
    hotplug)
        # PCI hot-plug checks for the testbed: every 50 ms, report what
        # appeared, changed or went (U = uptime):
        #   NUBO-HP-DISK-ADD name=vdX serial=S sectors=N uptime=U, then
        #     NUBO-HP-DISK-READ name=vdX pattern=P if sector 8 holds a
        #     pattern already, else NUBO-HP-DISK-WROTE name=vdX pattern=P
        #     (written and synced)
        #   NUBO-HP-DISK-SIZE name=vdX sectors=N
        #   NUBO-HP-DISK-GONE name=vdX uptime=U
        #   NUBO-HP-NET-ADD name=ethN mac=M uptime=U, then with nubo.ip and
        #     nubo.peer: NUBO-HP-NET-PING ok|fail (the NIC gets nubo.ip)
        #   NUBO-HP-NET-GONE name=ethN
        hip=$(param nubo.ip "") hpeer=$(param nubo.peer "")
        mkdir -p /run/hp/blk /run/hp/net
        while :; do
            for b in /sys/block/vd*; do
                [ -e "$b" ] || continue
                n=${b##*/} s=$(cat "$b/size")
                if [ ! -e "/run/hp/blk/$n" ]; then
                    echo "$s" >"/run/hp/blk/$n"
                    read -r up _ </proc/uptime
                    echo "NUBO-HP-DISK-ADD name=$n serial=$(cat "$b/serial" 2>/dev/null) sectors=$s uptime=$up"
                    back=$(dd if="/dev/$n" bs=512 skip=8 count=1 iflag=direct 2>/dev/null | head -n1)
                    case "$back" in
                        NUBO-PATTERN-*) echo "NUBO-HP-DISK-READ name=$n pattern=$back" ;;
                        *)
                            pat="NUBO-PATTERN-$n-$(cut -c1-8 /proc/sys/kernel/random/uuid)"
                            printf '%s\n' "$pat" | dd of="/dev/$n" bs=512 seek=8 count=1 conv=sync,fsync 2>/dev/null &&
                                sync && echo "NUBO-HP-DISK-WROTE name=$n pattern=$pat" ;;
                    esac
                elif [ "$(cat "/run/hp/blk/$n")" != "$s" ]; then
                    echo "$s" >"/run/hp/blk/$n"
                    echo "NUBO-HP-DISK-SIZE name=$n sectors=$s"
                fi
            done
            for f in /run/hp/blk/*; do
                [ -e "$f" ] || continue
                n=${f##*/}
                [ -e "/sys/block/$n" ] && continue
                rm -f "$f"
                read -r up _ </proc/uptime
                echo "NUBO-HP-DISK-GONE name=$n uptime=$up"
            done
            for d in /sys/class/net/eth*; do
                [ -e "$d" ] || continue
                n=${d##*/}
                [ -e "/run/hp/net/$n" ] && continue
                : >"/run/hp/net/$n"
                read -r up _ </proc/uptime
                echo "NUBO-HP-NET-ADD name=$n mac=$(cat "$d/address") uptime=$up"
                if [ -n "$hip" ]; then
                    ip addr add "$hip" dev "$n"; ip link set "$n" up
                    if ping -c 3 -W 2 "$hpeer" >/dev/null 2>&1; then
                        echo "NUBO-HP-NET-PING ok"
                    else
                        echo "NUBO-HP-NET-PING fail"
                    fi
                fi
            done
            for f in /run/hp/net/*; do
                [ -e "$f" ] || continue
                n=${f##*/}
                [ -e "/sys/class/net/$n" ] && continue
                rm -f "$f"
                echo "NUBO-HP-NET-GONE name=$n"
            done
            usleep 50000
        done ;;
    shell)  while :; do setsid cttyhack sh || sh; done ;;
    *)      sync; poweroff -f ;;
esac
# reboot/poweroff -f do not return; if they somehow do, never exit PID 1.
while :; do sleep 3600; done
