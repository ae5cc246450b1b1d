#!/bin/sh
# nubo-volwatch (installed as /bin/nubo-volwatch; init.sh starts it in the
# background with `nubo.vols=1`): reports the guest's virtio-blk disks other
# than vda as they appear, grow and go, and exercises each new one with a
# test record, so host-side tests can follow a volume across servers without
# logging in. Console lines (SERIAL = /sys/block/vdX/serial):
#   NUBO-VOL SERIAL dev=vdX size=BYTES                 a disk appeared
#   NUBO-VOL SERIAL found gen=N md5=GOT expect=WANT    it holds record N
#   NUBO-VOL SERIAL blank                              it holds none
#   NUBO-VOL SERIAL wrote gen=N md5=MD5                record N written, synced
#   NUBO-VOL SERIAL size=BYTES                         its size changed
#   NUBO-VOL SERIAL gone                               it was unplugged
# A record: 1 MiB of random data at offset 1 MiB, and in sector 0 the line
# "NUBOVOL N MD5" (N = generation, MD5 of the data). A disk with record N
# gets record N+1, so every attach leaves a trace the next one can check.
# With `nubo.vols=ro`, disks are only read, never written.
mode=$1
mkdir -p /run/vols
while :; do
    for b in /sys/block/vd*; do
        [ -e "$b" ] || continue
        n=${b##*/}
        [ "$n" = vda ] && continue
        size=$(( $(cat "$b/size" 2>/dev/null || echo 0) * 512 ))
        state=/run/vols/$n
        if [ ! -e "$state" ]; then
            serial=$(cat "$b/serial" 2>/dev/null)
            [ -n "$serial" ] || serial=$n
            echo "$serial $size" >"$state"
            echo "NUBO-VOL $serial dev=$n size=$size"
            head=$(dd if="/dev/$n" bs=512 count=1 iflag=direct 2>/dev/null | head -n 1 | tr -d '\0')
            gen=0
            case "$head" in
                "NUBOVOL "*)
                    set -- $head
                    gen=$2 want=$3
                    got=$(dd if="/dev/$n" bs=1M skip=1 count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
                    echo "NUBO-VOL $serial found gen=$gen md5=$got expect=$want" ;;
                *) echo "NUBO-VOL $serial blank" ;;
            esac
            if [ "$mode" != ro ]; then
                gen=$((gen + 1))
                dd if=/dev/urandom of=/run/vols/data bs=1M count=1 2>/dev/null
                md5=$(md5sum </run/vols/data | cut -d' ' -f1)
                if dd if=/run/vols/data of="/dev/$n" bs=1M seek=1 conv=fsync 2>/dev/null &&
                    printf 'NUBOVOL %s %s\n' "$gen" "$md5" |
                    dd of="/dev/$n" bs=512 count=1 conv=sync,fsync 2>/dev/null; then
                    sync
                    echo "NUBO-VOL $serial wrote gen=$gen md5=$md5"
                else
                    echo "NUBO-VOL $serial write-failed"
                fi
            fi
        else
            read -r serial old <"$state"
            if [ "$size" != "$old" ]; then
                echo "$serial $size" >"$state"
                echo "NUBO-VOL $serial size=$size"
            fi
        fi
    done
    for state in /run/vols/vd*; do
        [ -e "$state" ] || continue
        n=${state##*/}
        if [ ! -e "/sys/block/$n" ]; then
            read -r serial _ <"$state"
            rm -f "$state"
            echo "NUBO-VOL $serial gone"
        fi
    done
    usleep 200000
done
