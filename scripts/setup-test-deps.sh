#!/usr/bin/env bash
# Installs what the test suite drives: kcat (Debian), a Python venv with
# confluent-kafka and kafka-python (plus its codec libraries), schemathesis
# (the admin API's OpenAPI checks) and helm-python-sdk with kubernetes-validate
# (the Helm chart's checks), and kafkajs
# with pure-JS codecs (npm). Safe to run again: each step skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kcat >/dev/null 2>&1; then
  echo "==> installing kcat"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kcat >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import confluent_kafka, kafka, lz4, zstandard, snappy, schemathesis, helm_python, kubernetes_validate, yaml" 2>/dev/null; then
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
echo "==> test dependencies ready"
