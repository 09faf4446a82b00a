#!/usr/bin/env bash
# Builds the example transforms for wasm32-wasip1 (release) and prints each module's path and
# size. The modules land in $CARGO_TARGET_DIR/wasm32-wasip1/release/<name>.wasm.
set -euo pipefail

cd "$(dirname "$0")" # .cargo/config.toml (the stack size) is found from the working directory
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/fjord/wasm-target}"

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    rustup target add wasm32-wasip1
fi

# A RUSTFLAGS in the environment replaces .cargo/config.toml's target rustflags: keep the
# stack size, or every module would start with a 1 MiB stack of its 2 MiB.
if [ -n "${RUSTFLAGS:-}" ] && [[ "$RUSTFLAGS" != *zstack-size* ]]; then
    export RUSTFLAGS="$RUSTFLAGS -C link-arg=-zstack-size=65536"
fi

cargo build --release --target wasm32-wasip1 --workspace

for manifest in */Cargo.toml; do
    name="$(dirname "$manifest")"
    wasm="$CARGO_TARGET_DIR/wasm32-wasip1/release/$name.wasm"
    printf '%s\t%s bytes\n' "$wasm" "$(stat -c %s "$wasm")"
done
