# shellcheck shell=dash disable=SC2034  # (busybox ash; variables are for the sourcing scenario)
# Helpers for testbed scenarios; scenarios start with `. "$TESTBED_LIB"`.
# POSIX/busybox sh. Sourced, so no shebang.
#
# Environment provided by runner.sh:
#   L2_BZIMAGE L2_VMLINUX L2_INITRD L2_ROOTFS NUBO_VMM   guest artifacts / VMM
#   TESTBED_WORK   an empty scratch directory for this scenario (also the cwd)
#
# Timing: /proc/uptime (10 ms resolution; busybox `date` has no %N).

set -euo pipefail

CR=$(printf '\r')
BOOT_TIMEOUT=${BOOT_TIMEOUT:-60}   # seconds per VMM/QEMU invocation
WORK=${TESTBED_WORK:-$(mktemp -d)}

# A failed scenario whose guest triple-faulted exits 75: runner.sh runs it
# once more. Under the testbed's QEMU/TCG nested SVM, L2 guests now and then
# triple-fault in early boot whichever VMM runs them (QEMU+KVM in L1 does it
# too); no scenario makes a Linux guest triple-fault on purpose.
fail() {
    echo "FAIL: $*"
    if guest_triple_faulted; then
        echo "TESTBED-NESTED-FAULT the guest triple-faulted (nested QEMU/TCG SVM fault, not an expected reset)"
        exit 75
    fi
    exit 1
}
guest_triple_faulted() {
    for f in "$WORK/vmm.err" ${BOOT_ERR:+"$BOOT_ERR"}; do
        [ -f "$f" ] && grep -q 'guest triple-faulted' "$f" && return 0
    done
    return 1
}
skip() { echo "SKIP: $*"; exit 77; }   # runner.sh reports status=skip
info() { echo "# $*"; }

need_vmm() {
    [ -x "$NUBO_VMM" ] || fail "nubo-vmm not found at '$NUBO_VMM' (build: cargo build --release -p vmm)"
}

# Milliseconds between two /proc/uptime readings.
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d\n", (b - a) * 1000 + 0.5 }'; }

# boot_guest TAG CMD [ARGS...]
#   Runs CMD (a VMM invocation) under `timeout $BOOT_TIMEOUT`, stdin from
#   /dev/null, echoing its console (stdout) line by line as it arrives, and
#   timestamping the first NUBO-GUEST-READY line. stderr goes to a file and is
#   shown afterwards. Sets:
#     BOOT_RC        exit status of CMD (124 or 143 after the timeout)
#     BOOT_TIMED_OUT 1 if CMD hit the timeout, else empty
#     READY          the readiness line ("" if none)
#     BOOT_MS        ms from launching CMD to the readiness line ("" if none)
#     WALL_MS        ms from launching CMD to its exit
#     GUEST_UPTIME   uptime= field of the readiness line
#     BOOT_OUT BOOT_ERR   files holding stdout / stderr
boot_guest() {
    tag=$1; shift
    BOOT_OUT=$WORK/$tag.out BOOT_ERR=$WORK/$tag.err
    rm -f "$BOOT_OUT" "$BOOT_ERR" "$BOOT_OUT.rc" "$BOOT_OUT.t"
    info "run: $*"
    read -r t0 _ </proc/uptime
    # The while loop runs in a subshell, so results travel through files.
    { set +e; timeout "$BOOT_TIMEOUT" "$@" </dev/null 2>"$BOOT_ERR"; echo "__NUBO_RC=$?"; } |
        while IFS= read -r line || [ -n "$line" ]; do
            read -r t _ </proc/uptime
            line=${line%"$CR"}
            case "$line" in
                __NUBO_RC=*) echo "${line#__NUBO_RC=}" >"$BOOT_OUT.rc"; continue ;;
                *NUBO-GUEST-READY*) [ -e "$BOOT_OUT.t" ] || echo "$t" >"$BOOT_OUT.t" ;;
            esac
            printf '%s\n' "$line" >>"$BOOT_OUT"
            printf '%s\n' "$line"
        done
    read -r t1 _ </proc/uptime
    BOOT_RC=$(cat "$BOOT_OUT.rc" 2>/dev/null || echo 255)
    WALL_MS=$(ms_between "$t0" "$t1")
    if [ -s "$BOOT_ERR" ]; then
        echo "--- stderr ($tag) ---"; cat "$BOOT_ERR"; echo "--- end stderr ---"
    fi
    READY=$(grep -m1 -o 'NUBO-GUEST-READY.*' "$BOOT_OUT" 2>/dev/null || true)
    BOOT_MS='' GUEST_UPTIME=''
    if [ -n "$READY" ]; then
        BOOT_MS=$(ms_between "$t0" "$(cat "$BOOT_OUT.t")")
        GUEST_UPTIME=$(field uptime)
    fi
    # busybox timeout execs CMD, so a CMD that exits cleanly on SIGTERM (QEMU
    # does) reports 0 after being killed: judge the timeout by wall time.
    BOOT_TIMED_OUT=
    if [ "$WALL_MS" -ge $((BOOT_TIMEOUT * 1000 - 50)) ]; then
        BOOT_TIMED_OUT=1
        info "killed after the ${BOOT_TIMEOUT}s timeout (exit status $BOOT_RC)"
        [ "$BOOT_RC" != 0 ] || BOOT_RC=124
    fi
    info "rc=$BOOT_RC wall_ms=$WALL_MS"
    return 0
}

# field NAME: value of NAME=... in the readiness line
field() { printf '%s\n' "$READY" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1; }

# Print the standard boot metrics (call after boot_guest).
report_boot() {
    [ -z "$BOOT_MS" ] || echo "BOOT_MS=$BOOT_MS"
    [ -z "$GUEST_UPTIME" ] || echo "GUEST_UPTIME=$GUEST_UPTIME"
    echo "WALL_MS=$WALL_MS"
}

expect_rc() {
    [ "$BOOT_RC" = "$1" ] || fail "expected exit status $1, got $BOOT_RC"
}

# expect_ready CPUS [MIN_KB MAX_KB [EXTRA_FIELD]]
expect_ready() {
    [ -n "$READY" ] || fail "no NUBO-GUEST-READY line from the guest"
    cpus=$(field cpus) mem=$(field memtotal_kb)
    [ "$cpus" = "$1" ] || fail "guest saw cpus=$cpus, expected $1"
    if [ $# -ge 3 ]; then
        [ "$mem" -ge "$2" ] && [ "$mem" -le "$3" ] ||
            fail "guest memtotal_kb=$mem not in [$2, $3]"
    fi
    if [ $# -ge 4 ]; then
        case " $READY " in *" $4 "*) ;; *) fail "readiness line lacks '$4'" ;; esac
    fi
}

# vmm_boot KERNEL CPUS [THEN]: the standard nubo-vmm boot check with 512M.
vmm_boot() {
    need_vmm
    boot_guest vmm env NUBO_LOG="${NUBO_LOG:-info}" "$NUBO_VMM" run --kernel "$1" --initrd "$L2_INITRD" \
        --cmdline "console=ttyS0 quiet nubo.then=${3:-poweroff}" \
        --cpus "$2" --memory 512M
    report_boot
    expect_rc 0
    expect_ready "$2" 400000 524288
}

# --- Control API scenarios (api-*.sh): call api_scenario_init first. ---
# api_scenario_init: needs nubo-vmm, sets SOCK/CON, and shows the VMM's
# stderr and the console's tail (and kills the VMM) when the scenario ends.
api_scenario_init() {
    need_vmm
    SOCK=$WORK/api.sock CON=$WORK/console.log
    READY_TIMEOUT=${READY_TIMEOUT:-120}
    trap cleanup EXIT
}
# start_vmm "CMDLINE WORDS" [EXTRA VMM ARGS...]: the VMM runs in the
# background; its pid goes to vmm.pid, its exit status to vmm.rc.
# API_CPUS sets the guest's vCPUs (default 1: SMP is the boot-*-2cpu
# scenarios' subject, and api-pause-resume's).
start_vmm() {
    words=$1; shift
    rm -f "$WORK/vmm.pid" "$WORK/vmm.rc" "$SOCK"; : >"$CON"
    info "run: nubo-vmm run --cmdline 'console=ttyS0 $words' --cpus ${API_CPUS:-1} --memory 512M --api-socket $SOCK $*"
    (
        NUBO_LOG=${NUBO_LOG:-info} "$NUBO_VMM" run --kernel "$L2_BZIMAGE" --initrd "$L2_INITRD" \
            --cmdline "console=ttyS0 $words" --cpus "${API_CPUS:-1}" --memory 512M \
            --serial "file=$CON" --api-socket "$SOCK" "$@" \
            </dev/null >"$WORK/vmm.out" 2>"$WORK/vmm.err" &
        echo $! >"$WORK/vmm.pid"
        wait $! && rc=0 || rc=$?
        echo "$rc" >"$WORK/vmm.rc"
    ) &
    while [ ! -s "$WORK/vmm.pid" ]; do usleep 10000; done
}
vmm_exited() { [ -s "$WORK/vmm.rc" ]; }
cleanup() {
    if [ -s "$WORK/vmm.pid" ] && ! vmm_exited; then
        info "killing the VMM"
        kill -9 "$(cat "$WORK/vmm.pid")" 2>/dev/null || true
    fi
    if [ -s "$WORK/vmm.err" ]; then echo "--- VMM stderr ---"; cat "$WORK/vmm.err"; echo "--- end ---"; fi
    echo "--- console (last 15 lines) ---"; tail -n 15 "$CON" 2>/dev/null | tr -d '\r'; echo "--- end ---"
}
now() { read -r u _ </proc/uptime; echo "$u"; }
# wait_line PATTERN SECONDS [COUNT]: wait until COUNT (1) console lines match.
wait_line() {
    end=$(awk -v t="$(now)" -v s="$2" 'BEGIN { print t + s }')
    while [ "$(grep -c -- "$1" "$CON" 2>/dev/null || true)" -lt "${3:-1}" ]; do
        vmm_exited && fail "the VMM exited (status $(cat "$WORK/vmm.rc")) while waiting for '$1'"
        awk -v t="$(now)" -v e="$end" 'BEGIN { exit !(t > e) }' && fail "no '$1' (x${3:-1}) on the console within $2 s"
        usleep 50000
    done
}
# wait_exit SECONDS: wait for the VMM to exit; sets VMM_RC (empty on timeout).
wait_exit() {
    end=$(awk -v t="$(now)" -v s="$1" 'BEGIN { print t + s }')
    VMM_RC=
    while ! vmm_exited; do
        awk -v t="$(now)" -v e="$end" 'BEGIN { exit !(t > e) }' && return 0
        usleep 20000
    done
    VMM_RC=$(cat "$WORK/vmm.rc")
}
# api METHOD PATH [BODY]: sets API_STATUS and API_BODY (never fails).
api() {
    out=$("$NUBO_VMM" api "$SOCK" "$@" 2>&1) || true
    API_STATUS=$(printf '%s\n' "$out" | sed -n 1p)
    API_BODY=$(printf '%s\n' "$out" | sed -n '2,$p')
    echo "api $*: $API_STATUS $(printf '%s' "$API_BODY" | head -c 300)"
}
api_ok() { api "$@"; case "$API_STATUS" in 2??) ;; *) fail "$*: HTTP status '$API_STATUS'" ;; esac; }
json() { printf '%s\n' "$API_BODY" | sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" | head -n1; }
last_counter() { tr -d '\r' <"$CON" | sed -n 's/^COUNTER \([0-9][0-9]*\) .*/\1/p' | tail -n1; }
