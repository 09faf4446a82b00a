#!/usr/bin/env bash
# The whole test suite: installs the client dependencies, checks formatting
# and lints, builds the broker, runs every unit, property, integration and
# real-client compatibility test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> building the broker binary the compat suite starts"
cargo build -p fjord-broker --bin fjord
echo "==> cargo test --workspace"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log"
