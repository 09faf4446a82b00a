#!/usr/bin/env bash
# librdkafka's own test suite against Fjord: builds librdkafka and its
# test-runner from the source the rdkafka-sys crate carries (cached outside
# the clone, keyed by version), then runs the broker tests through
# compat-tests/tests/librdkafka_suite.rs, which starts the broker, applies
# compat-tests/librdkafka/skip.txt and prints `librdkafka: N passed, N failed`.
#
# Environment: FJORD_CACHE_DIR (default ~/.cache/fjord) holds the build;
# LIBRDKAFKA_SUITE_ARGS overrides the test-runner's flags (see the test).
set -euo pipefail
cd "$(dirname "$0")/.."

# The flags and packages are part of the cache key below: change one and the
# next run rebuilds. No SSL/SASL/HTTP (Fjord does not speak them yet, and they
# need libraries or downloads); zlib and zstd are required so that 0017 covers
# every codec; lz4 is librdkafka's bundled copy; RapidJSON (headers only)
# lets the tests that parse statistics JSON run (0053, 0098, 0101, 0110).
# Built at -O0: half the compile time of -O2 on two cores, and the tests wait
# on the network and timers, not on the client's CPU.
CONFIGURE_ARGS=(--no-download --disable-ssl --disable-gssapi --disable-curl
  --disable-lz4-ext --enable-zlib --enable-zstd --disable-optimization)
APT_PACKAGES=(zlib1g-dev libzstd-dev rapidjson-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The librdkafka source of the rdkafka-sys version Cargo.lock pins.
read -r sys_version manifest < <(cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "rdkafka-sys":
        print(p["version"], p["manifest_path"])
        break
')
if [ -z "${manifest:-}" ]; then
  echo "rdkafka-sys is not in the dependency graph (cargo metadata)" >&2
  exit 1
fi
version="${sys_version##*+}"
src="$(dirname "$manifest")/librdkafka"
[ -x "$src/configure" ] || { echo "no librdkafka source at $src" >&2; exit 1; }

cache="${FJORD_CACHE_DIR:-$HOME/.cache/fjord}"
dir="$cache/librdkafka-$version"
stamp="$dir/.fjord-suite-build"
want="librdkafka $version; configure ${CONFIGURE_ARGS[*]}; packages ${APT_PACKAGES[*]}"
mkdir -p "$cache"
# One build at a time (two clones on one machine share the cache).
exec 9>"$cache/librdkafka-$version.lock"
flock 9
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> building librdkafka $version and its test-runner in $dir"
  start=$SECONDS
  rm -rf "$dir"
  cp -a "$src" "$dir"
  (
    cd "$dir"
    # (mklove loads every configure.* file here as a module: logs are named otherwise)
    ./configure "${CONFIGURE_ARGS[@]}" >fjord-configure.log 2>&1 || { cat fjord-configure.log; exit 1; }
    make -j2 libs >fjord-build.log 2>&1 || { tail -50 fjord-build.log; exit 1; }
    make -j2 -C tests build >>fjord-build.log 2>&1 || { tail -50 fjord-build.log; exit 1; }
  )
  [ -x "$dir/tests/test-runner" ] || { echo "test-runner was not built" >&2; exit 1; }
  echo "$want" >"$stamp"
  echo "==> librdkafka built in $((SECONDS - start)) s"
else
  echo "==> librdkafka $version and its test-runner already built in $dir"
fi
flock -u 9

echo "==> building the broker binary"
cargo build -p fjord-broker --bin fjord
echo "==> running librdkafka's broker tests against Fjord"
FJORD_LIBRDKAFKA_DIR="$dir" cargo test -p fjord-compat-tests --test librdkafka_suite -- --nocapture
