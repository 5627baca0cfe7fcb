#!/usr/bin/env bash
# Runs the whole test suite. Installs, quietly and only when missing, what the tests use:
# Debian chromium and prometheus (promtool), the interop suite's npm and pip packages.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x tests/interop/install.sh ]; then
    tests/interop/install.sh
elif ! command -v promtool >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
cargo test --locked -- --test-threads="${WSGATE_TEST_THREADS:-4}"
