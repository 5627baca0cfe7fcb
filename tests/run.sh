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
# Every test that needs an installed tool fails (instead of skipping) when it is missing.
export WSGATE_REQUIRE_TOOLS=1
cargo test --locked -- --test-threads="${WSGATE_TEST_THREADS:-4}"
