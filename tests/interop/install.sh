#!/usr/bin/env bash
# Installs what tests/interop.rs needs, quietly and only when missing. Idempotent; the second
# run only checks (no network). Called by the top-level test script; safe to run by hand.
#   - Debian: chromium (/usr/bin/chromium), prometheus (+ promtool), apache2-utils (htpasswd)
#   - npm ci in tests/interop when node_modules is missing or older than package-lock.json
#   - Python venv at tests/interop/.venv with requirements.txt (tests use .venv/bin/python)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
# tests/acme.rs: Let's Encrypt's test CA and its DNS helper (pebble-challtestsrv, same package).
{ command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null; } || missing+=(pebble)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm: reinstall when node_modules is missing or the lock file changed since the last install.
stamp=node_modules/.wsgate-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  echo "install.sh: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  cp package-lock.json "$stamp"
fi

# Python: a venv so the system site-packages stay untouched.
venv="$here/.venv"
pystamp="$venv/.wsgate-req-stamp"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$pystamp" ] || ! cmp -s requirements.txt "$pystamp"; then
  echo "install.sh: pip install -r requirements.txt (venv $venv)" >&2
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt "$pystamp"
fi
