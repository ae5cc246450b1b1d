#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, direct KVM tests with
# tiny guests, and the testbed scenarios that boot Debian's kernel with
# nubo-vmm. With CI=true a test that cannot run (no KVM, no QEMU) fails
# instead of skipping.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
guest/build.sh >/dev/null
# One build for both binaries (shared dependencies are built once, with one
# feature set).
cargo build --release -p vmm --bin nubo-vmm -p orchestrator --bin nubo
scripts/osc-venv.sh >/dev/null   # the OpenStack CLI for tests/tests/openstack_cli.rs
cargo test --workspace --no-fail-fast
