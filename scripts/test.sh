#!/usr/bin/env bash
# The whole test suite: installs the client dependencies, checks formatting
# and lints, builds the broker, runs every unit, property, integration and
# real-client compatibility test. Prints how long each stage took, so the
# slow ones are known.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outputs live outside the clone so a later run on the same machine
# reuses them; a cold run builds everything into the same place.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fjord/target}"
mkdir -p "$CARGO_TARGET_DIR"
# A RUSTFLAGS in the environment replaces .cargo/config.toml's flags: keep tokio's unstable cfg,
# without which the simulation's runs cannot be replayed exactly (a_seed_replays_exactly).
if [ -n "${RUSTFLAGS:-}" ] && [[ "$RUSTFLAGS" != *tokio_unstable* ]]; then
  export RUSTFLAGS="$RUSTFLAGS --cfg tokio_unstable"
fi

timings=()
stage() {
  local name="$1"
  shift
  echo "==> $name"
  local t0=$SECONDS
  "$@"
  timings+=("$(printf '%5ds  %s' $((SECONDS - t0)) "$name")")
}
report_timings() {
  echo "==> stage durations"
  printf '%s\n' "${timings[@]}"
}
log="$(mktemp)"
suite_log="$(mktemp)"
# On an early failure the durations so far still show.
trap 'rm -f "$log" "$suite_log"; [ -n "${done_timings:-}" ] || report_timings' EXIT

cargo_rc=0
run_cargo_tests() {
  # Every test binary runs even after one fails, so one run shows all
  # failures. librdkafka's suite needs its test-runner built first: it is
  # its own stage.
  cargo test --workspace --no-fail-fast -- --skip librdkafka_broker_tests 2>&1 | tee "$log" || cargo_rc=$?
}
suite_rc=0
run_librdkafka_suite() {
  scripts/librdkafka-suite.sh 2>&1 | tee "$suite_log" || suite_rc=$?
}

stage "test dependencies" scripts/setup-test-deps.sh
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
stage "build the broker and fjordctl binaries the compat suite starts" cargo build -p fjord-broker --bin fjord -p fjord-cli --bin fjordctl
# The transform SDK and examples are their own cargo workspaces (the examples build for
# wasm32-wasip1): their lints and native tests, then the modules the compat suite deploys.
wasm_dir="$HOME/.cache/fjord/wasm-target"
export FJORD_WASM_DIR="$wasm_dir/wasm32-wasip1/release"
transform_sdk() {
  local d
  for d in transforms/sdk transforms/examples; do
    (cd "$d" && export CARGO_TARGET_DIR="$HOME/.cache/fjord/sdk-target" &&
      cargo fmt --all -- --check && cargo clippy --all-targets -q -- -D warnings && cargo test -q)
  done
  CARGO_TARGET_DIR="$wasm_dir" transforms/examples/build.sh
}
stage "transform SDK and examples: lints, tests, wasm32-wasip1 modules" transform_sdk
stage "cargo test --workspace" run_cargo_tests
sim_rc=0
run_simulation() {
  scripts/sim.sh 2>&1 | tee -a "$log" || sim_rc=$?
}
stage "simulation: 2,300 seeded schedules (release build)" run_simulation
stage "librdkafka's test suite against Fjord" run_librdkafka_suite
report_timings
done_timings=1
# One closing line for the whole run, summed over every test binary and
# librdkafka's tests (its cargo test wrapper is not counted twice): the last
# line printed.
awk 'FNR == NR && /^test result:/ { p += $4; f += $6 }
     FNR != NR && /^librdkafka: [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
     END { printf "tests: %d passed, %d failed\n", p, f; exit (f > 0) }' "$log" "$suite_log"
# A build failure leaves no result lines: the exit codes tell.
[ "$cargo_rc" = 0 ] && [ "$suite_rc" = 0 ] && [ "$sim_rc" = 0 ]
