#!/usr/bin/env bash
# The first demo: installs what is missing, builds Serval, brings up the default lab (a
# two-node cluster on this host, with a few example pods) and prints its connectivity matrix.
# Run as root. Re-running replaces the lab.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release --locked --bins
serval="$PWD/target/release/serval"

"$serval" lab down --name serval >/dev/null 2>&1 || true
"$serval" lab up --name serval --demo
echo
"$serval" --lab serval get pods -A -o wide
echo
echo "== serval lab matrix --name serval (port 80/TCP; '.' reached, 'X' not)"
"$serval" lab matrix --name serval
echo
echo "The lab stays up. Next: $serval --lab serval apply -f examples/ ;" \
  "$serval lab down --name serval"
