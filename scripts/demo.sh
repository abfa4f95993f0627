#!/usr/bin/env bash
# The first demo: installs what is missing, builds Serval, applies the example resources to a
# fresh datastore and lists them.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release --locked --bin serval
serval=./target/release/serval

dir=$(mktemp -d /tmp/serval-demo.XXXXXX)
export SERVAL_DATASTORE="sqlite://$dir/serval.db"
echo "== datastore: $SERVAL_DATASTORE"
$serval apply -f examples/
for kind in namespaces ippools pods services netpol tiers gnp networkpolicies felixconfigurations; do
  echo
  echo "== serval get $kind -A -o wide"
  $serval get "$kind" -A -o wide
done
echo
echo "Try: SERVAL_DATASTORE=$SERVAL_DATASTORE $serval get ippool default-ipv4-ippool -o yaml"
