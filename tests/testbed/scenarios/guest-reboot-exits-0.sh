#!/bin/sh
# A guest-initiated reboot ends the VM with exit status 0 (like poweroff).
# testbed-timeout: 120
# shellcheck source=../lib.sh
. "$TESTBED_LIB"
vmm_boot "$L2_BZIMAGE" 1 reboot
