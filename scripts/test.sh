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
suite_log="$(mktemp)"
trap 'rm -f "$log" "$suite_log"' EXIT
# librdkafka's suite needs its test-runner built first: it is its own stage.
cargo test --workspace -- --skip librdkafka_broker_tests 2>&1 | tee "$log"
echo "==> librdkafka's test suite against Fjord"
scripts/librdkafka-suite.sh 2>&1 | tee "$suite_log"
# One closing line for the whole run, summed over every test binary and
# librdkafka's tests (its cargo test wrapper is not counted twice).
awk 'FNR == NR && /^test result:/ { p += $4; f += $6 }
     FNR != NR && /^librdkafka: [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log" "$suite_log"
