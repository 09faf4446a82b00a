#!/usr/bin/env bash
# Installs what the test suite drives: kcat (Debian), a Python venv with
# confluent-kafka and kafka-python (plus its codec libraries), schemathesis
# (the admin API's OpenAPI checks) and helm-python-sdk with kubernetes-validate
# (the Helm chart's checks), aiokafka, kafkajs with pure-JS codecs (npm), and
# s3s-fs, the S3-compatible server the tiered storage tests start (built with
# cargo into ~/.cache/fjord/tools, kept between runs), and Rust's wasm32-wasip1
# target (the transform examples). Safe to run again: each
# step skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kcat >/dev/null 2>&1; then
  echo "==> installing kcat"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kcat >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import confluent_kafka, kafka, aiokafka, lz4, zstandard, snappy, schemathesis, helm_python, kubernetes_validate, yaml" 2>/dev/null; then
  echo "==> creating .venv with the Python clients and checkers"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r compat-tests/clients/python/requirements.txt
fi

if [ ! -d compat-tests/clients/node/node_modules/kafkajs ]; then
  echo "==> installing kafkajs"
  (cd compat-tests/clients/node && npm install --no-audit --no-fund --loglevel=error)
fi
# The newest s3s-fs that builds with this machine's rustc (0.15 and later need 1.96).
S3S_FS_VERSION=0.14.1
tools="$HOME/.cache/fjord/tools"
if ! "$tools/bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
  echo "==> building s3s-fs $S3S_FS_VERSION"
  CARGO_TARGET_DIR="$HOME/.cache/fjord/s3s-build" cargo install -q s3s-fs --version "=$S3S_FS_VERSION" \
    --features binary --locked --root "$tools"
fi
# WASM transforms: the examples and `fjordctl transform build` compile for wasm32-wasip1.
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "==> adding the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi
echo "==> test dependencies ready"
