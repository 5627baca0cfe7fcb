#!/usr/bin/env bash
# CI check of the Debian package on this machine (root, no systemd needed): build the .deb,
# `dpkg -i` it, run the installed binary as the package's `wsgate` user on a copy of the
# packaged config (free ports), probe it, read the man page and completions, then purge.
# Prints how long each step took.
#   contrib/deb/check.sh             # after the tests (.ci/run): packages their debug binary
#   contrib/deb/check.sh --release   # the package to ship (a release build, a few minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
    --release) build_args=() ;;
    "") build_args=(--ci) ;;
    *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
    echo "deb check: needs root (dpkg -i)" >&2
    exit 1
fi

step_start=0
step() { step_start=$EPOCHREALTIME; printf 'deb check: %s ... ' "$1"; }
done_() { awk -v a="$step_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "ok (%.1fs)\n", b - a }'; }
fail() { echo "FAILED: $*" >&2; exit 1; }

gate_pid=""
work="$(mktemp -d)"
# man-db's dpkg trigger rebuilds the whole man index after the install and again after the
# purge (~25 s each here); `man -l` needs no index, so the trigger is off while this runs.
mandb_flag=/var/lib/man-db/auto-update
mandb_off=""
if [ -e "$mandb_flag" ]; then
    mv "$mandb_flag" "$work/man-db-auto-update"
    mandb_off=1
fi
cleanup() {
    if [ -n "$gate_pid" ]; then kill "$gate_pid" 2>/dev/null || true; fi
    rm -f /etc/wsgate/check.yaml
    if dpkg-query -W -f='${Status}' wsgate 2>/dev/null | grep -q installed; then
        dpkg --purge wsgate >/dev/null 2>&1 || true
    fi
    if [ -n "$mandb_off" ]; then mv "$work/man-db-auto-update" "$mandb_flag"; fi
    rm -rf "$work"
}
trap cleanup EXIT

if dpkg-query -W -f='${Status}' wsgate 2>/dev/null | grep -q installed; then
    fail "a wsgate package is already installed here; this check would replace it"
fi

step "cargo-deb present"
if ! command -v cargo-deb >/dev/null 2>&1; then
    # Without the bundled liblzma (xz falls back to the system's `xz`) and ELF debug ids the
    # one-time install takes ~1.5 min instead of ~3.5 on 2 cores, keeping a first CI run
    # under 20 minutes.
    cargo install --locked --quiet cargo-deb --no-default-features --features gzip
fi
done_

step "build the .deb ${build_args[*]:-(release)}"
contrib/deb/build.sh "${build_args[@]}" >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail build; }
deb="$(tail -n 1 "$work/build.log")"
[ -f "$deb" ] || { cat "$work/build.log"; fail "no .deb at '$deb'"; }
done_
echo "deb check: $deb ($(du -h "$deb" | cut -f1))"

step "package contents"
dpkg-deb --contents "$deb" >"$work/contents"
for path in ./usr/bin/wsgate ./etc/wsgate/config.yaml ./usr/share/man/man1/wsgate.1.gz \
    ./usr/share/bash-completion/completions/wsgate ./usr/share/zsh/vendor-completions/_wsgate \
    ./usr/share/fish/vendor_completions.d/wsgate.fish ./usr/share/doc/wsgate/copyright \
    'systemd/system/wsgate.service'; do
    grep -q -- "$path" "$work/contents" || { cat "$work/contents"; fail "missing $path"; }
done
dpkg-deb --field "$deb" Section Conffiles >"$work/fields" || true
grep -qx 'Section: net' "$work/fields" || { cat "$work/fields"; fail "section"; }
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/wsgate/config.yaml ||
    fail "config.yaml is not a conffile"
done_

step "dpkg -i"
dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i"; }
done_

step "installed files, user and permissions"
version="$(/usr/bin/wsgate --version)"
grep -Eq '^wsgate [0-9]+\.[0-9]+\.[0-9]+ \(commit ([0-9a-f]+|unknown)\)$' <<<"$version" ||
    fail "--version: $version"
getent passwd wsgate >/dev/null || fail "no wsgate user"
[ "$(stat -c '%U:%G %a' /etc/wsgate)" = "root:wsgate 750" ] || fail "/etc/wsgate: $(stat -c '%U:%G %a' /etc/wsgate)"
[ "$(stat -c '%U:%G %a' /etc/wsgate/config.yaml)" = "root:wsgate 640" ] ||
    fail "config.yaml: $(stat -c '%U:%G %a' /etc/wsgate/config.yaml)"
unit="$(dpkg -L wsgate | grep 'systemd/system/wsgate.service$')"
if command -v systemd-analyze >/dev/null 2>&1; then
    # Checks the unit's syntax, that its commands exist and that man:wsgate(1) resolves.
    systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
fi
done_
echo "deb check: $version"

# setpriv execs (runuser would stay the parent and turn SIGTERM into its own exit 143).
as_wsgate() { setpriv --reuid=wsgate --regid=wsgate --clear-groups -- "$@"; }

step "wsgate check on the packaged config (as user wsgate)"
out="$(as_wsgate /usr/bin/wsgate check --config /etc/wsgate/config.yaml)" ||
    fail "check: $out"
[ "$out" = ok ] || fail "check printed: $out"
done_

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen="$(free_port)"
admin="$(free_port)"
dead="$(free_port)"

step "start the installed binary (as user wsgate, ports $listen/$admin)"
# The packaged config with free ports and an upstream nobody listens on, kept next to it so
# that it is read with the same ownership and permissions.
sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$listen/" -e "s/127\.0\.0\.1:9190/127.0.0.1:$admin/" \
    -e "s|ws://127\.0\.0\.1:3000|ws://127.0.0.1:$dead|" /etc/wsgate/config.yaml >/etc/wsgate/check.yaml
chown root:wsgate /etc/wsgate/check.yaml
chmod 640 /etc/wsgate/check.yaml
grep -q "127.0.0.1:$listen" /etc/wsgate/check.yaml && grep -q "127.0.0.1:$admin" /etc/wsgate/check.yaml ||
    fail "the packaged config's ports changed: update this script"
# Not through as_wsgate: a backgrounded function is a subshell, and $! must be wsgate itself.
setpriv --reuid=wsgate --regid=wsgate --clear-groups -- \
    /usr/bin/wsgate --config /etc/wsgate/check.yaml 2>"$work/gate.log" &
gate_pid=$!
healthy=""
for _ in $(seq 100); do
    if /usr/bin/wsgate healthcheck --admin "127.0.0.1:$admin" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    kill -0 "$gate_pid" 2>/dev/null || { cat "$work/gate.log"; fail "wsgate exited"; }
    sleep 0.1
done
[ -n "$healthy" ] || { cat "$work/gate.log"; fail "never healthy"; }
done_

step "probe the listener"
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$listen/nowhere")"
[ "$code" = 404 ] || fail "GET /nowhere: $code"
code="$(curl -s -o /dev/null -w '%{http_code}' -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
    -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
    "http://127.0.0.1:$listen/demo")"
# The demo route is open and its upstream is down: routed, admitted, then 502.
[ "$code" = 502 ] || fail "upgrade on /demo: $code"
grep -q 'wsgate starting' "$work/gate.log" || { cat "$work/gate.log"; fail "no start-up line"; }
done_

step "SIGTERM"
kill -TERM "$gate_pid"
status=0
wait "$gate_pid" || status=$?
gate_pid=""
[ "$status" = 0 ] || { cat "$work/gate.log"; fail "exit status $status after SIGTERM"; }
done_

step "man page and completions"
page="$(MANWIDTH=80 man -P cat -l /usr/share/man/man1/wsgate.1.gz 2>"$work/man.err")"
grep -q 'EXIT STATUS' <<<"$page" && grep -q 'wsgate check' <<<"$page" || fail "man page: $page"
[ ! -s "$work/man.err" ] || { cat "$work/man.err"; fail "man warnings"; }
bash -c 'source /usr/share/bash-completion/completions/wsgate && complete -p wsgate' >/dev/null ||
    fail "bash completion does not load"
done_

step "dpkg --purge"
rm -f /etc/wsgate/check.yaml
dpkg --purge wsgate >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg --purge"; }
[ ! -e /usr/bin/wsgate ] || fail "/usr/bin/wsgate left behind"
[ ! -e /etc/wsgate ] || fail "/etc/wsgate left behind: $(ls -la /etc/wsgate)"
done_
echo "deb check: ok"
