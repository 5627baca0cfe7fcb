#!/usr/bin/env bash
# Builds the Debian package in target/debian/: the binary, then the man page and shell
# completions it generates from its own clap definition (into target/deb-assets/, which
# Cargo.toml's [package.metadata.deb] assets name), then `cargo deb --no-build`.
# Installs cargo-deb first, quietly, when it is missing. Prints the .deb's path last.
#   contrib/deb/build.sh          # the package to ship: release build, xz -9
#   contrib/deb/build.sh --ci     # CI's install check: packages the binary the test suite
#                                 # built (target/debug), light compression, no second build
set -euo pipefail
cd "$(dirname "$0")/../.."

ci=""
case "${1:-}" in
    --ci) ci=1 ;;
    "") ;;
    *) echo "usage: $0 [--ci]" >&2; exit 2 ;;
esac
target="${CARGO_TARGET_DIR:-target}"

if ! command -v cargo-deb >/dev/null 2>&1; then
    cargo install --locked --quiet cargo-deb
fi

if [ -n "$ci" ]; then
    # `cargo build` would not reuse the test build: dev-dependencies add features (tokio's
    # test-util...), so it would compile much of the tree again. This is a no-op right after
    # `cargo test` and refreshes target/debug/wsgate otherwise.
    cargo test --locked --no-run --test cli
    bin="$target/debug/wsgate"
    # -q: cargo-deb warns that dev builds are not for release, which is the point here.
    deb_args=(--profile dev --fast -q)
else
    cargo build --locked --release --bin wsgate
    bin="$target/release/wsgate"
    deb_args=()
fi

assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
# -n: no file name or time stamp in the gzip header, so the package is reproducible.
"$bin" man | gzip -9n >"$assets/wsgate.1.gz"
"$bin" completions bash >"$assets/wsgate.bash"
"$bin" completions zsh >"$assets/_wsgate"
"$bin" completions fish >"$assets/wsgate.fish"

mkdir -p target/debian
deb="$(cargo deb --no-build "${deb_args[@]}" --output target/debian/)"
echo "$deb"
