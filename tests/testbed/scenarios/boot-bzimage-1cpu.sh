#!/bin/sh
# nubo-vmm boots the L2 guest (bzimage kernel, initramfs) with 1 vCPU(s) and 512M;
# the guest prints its readiness line and powers off -> exit status 0.
# testbed-timeout: 120
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
vmm_boot "$L2_BZIMAGE" 1 poweroff
