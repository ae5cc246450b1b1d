#!/bin/sh
# Bad input makes nubo-vmm exit non-zero within a few seconds, with a one-line
# error on stderr that contains "error" - and never a Rust panic.
# testbed-timeout: 120
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
need_vmm

head -c 4096 /dev/urandom >"$WORK/garbage-kernel"
BOOT_TIMEOUT=10
failures=0

# check TAG ARGS...: run `nubo-vmm run ARGS...` and judge the result.
check() {
    tag=$1; shift
    boot_guest "$tag" "$NUBO_VMM" run "$@"
    problem=
    if [ -n "$BOOT_TIMED_OUT" ]; then problem="did not exit within ${BOOT_TIMEOUT}s"
    elif [ "$BOOT_RC" = 0 ]; then problem="exited 0"
    elif [ "$WALL_MS" -gt 5000 ]; then problem="took ${WALL_MS} ms to fail"
    elif grep -q panicked "$BOOT_ERR" "$BOOT_OUT" 2>/dev/null; then problem="panicked"
    elif ! grep -qi error "$BOOT_ERR"; then problem="no 'error' on stderr"
    fi
    lines=$(grep -c . "$BOOT_ERR" || true)
    if [ -z "$problem" ]; then
        echo "ok: $tag (rc=$BOOT_RC, ${WALL_MS} ms, stderr lines=$lines)"
    else
        echo "NOT OK: $tag: $problem"
        failures=$((failures + 1))
    fi
}

ARGS="--cmdline console=ttyS0 --cpus 1"
check missing-kernel     --kernel "$WORK/does-not-exist" --initrd "$L2_INITRD" $ARGS --memory 512M
check garbage-kernel     --kernel "$WORK/garbage-kernel" --initrd "$L2_INITRD" $ARGS --memory 512M
check missing-initrd     --kernel "$L2_BZIMAGE" --initrd "$WORK/no-such-initrd" $ARGS --memory 512M
check zero-memory        --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" $ARGS --memory 0
check huge-memory        --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" $ARGS --memory 100000G

echo "ERROR_CASE_FAILURES=$failures"
[ "$failures" = 0 ] || fail "$failures error case(s) misbehaved"
