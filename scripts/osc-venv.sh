#!/usr/bin/env bash
# Creates (or updates) a Python virtualenv with the OpenStack command-line
# client at target/osc-venv, pinned, and prints its bin directory.
#
#   scripts/osc-venv.sh            -> /path/to/target/osc-venv/bin
#
# Idempotent: a stamp file records the pinned set; when it matches and
# `openstack --version` runs, nothing is installed (well under a second).
#
# Environment:
#   NUBO_OSC_VENV   venv directory (default target/osc-venv)
#   PYTHON          interpreter to create it with (default python3)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${NUBO_OSC_VENV:-$ROOT/target/osc-venv}
PY=${PYTHON:-python3}
PINS=(
    python-openstackclient==10.5.0
    openstacksdk==4.22.0
    keystoneauth1==5.18.1
    osc-lib==4.7.0
    cliff==4.17.0
)
STAMP=$VENV/.nubo-pins
want="${PINS[*]}"

log() { echo "osc-venv: $*" >&2; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] &&
    "$VENV/bin/openstack" --version >/dev/null 2>&1; then
    echo "$VENV/bin"
    exit 0
fi

command -v "$PY" >/dev/null || { log "error: $PY not found (apt-get install python3 python3-venv)"; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || {
        log "error: '$PY -m venv' failed (Debian: apt-get install python3-venv)"
        exit 1
    }
fi
log "installing ${PINS[*]}"
rm -f "$STAMP"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
"$VENV/bin/openstack" --version >&2
echo "$want" >"$STAMP"
echo "$VENV/bin"
