#!/usr/bin/env bash
# Runs the whole Serval test suite: formatting, lints, and every test tier that runs here
# (unit, datastore conformance against sqlite and a real etcd, privileged network tests, and the
# lab conformance suite once per dataplane: iptables, then eBPF).
# Installs missing packages first. Run as root (the network tests need it).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

export CARGO_TERM_COLOR=never
# A one-shot build gains nothing from incremental caches, which were 4 GB of the 11 GB a
# clean run used to leave in target/ (CI once ran out of disk linking the test binaries).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee target/test-output.txt
echo "== conformance suite again with the eBPF dataplane (issue 5: same tables, no SERVAL- rules)"
SERVAL_CONFORMANCE_DATAPLANE=bpf cargo test -p serval-conformance --locked 2>&1 | tee -a target/test-output.txt
