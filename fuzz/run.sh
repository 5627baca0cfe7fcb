#!/usr/bin/env bash
# Runs wsgate's fuzz targets.
#
#   fuzz/run.sh [SECONDS]   fuzz each target for SECONDS (default 60), starting from the
#                           seed corpus in fuzz/corpus/<target>/ (new inputs are added there;
#                           only seed-* files are committed)
#   fuzz/run.sh --regress   run only the committed seeds through each target, once (a quick
#                           regression test; any crash fails the script)
#
# With `cargo fuzz` and a nightly toolchain installed, fuzzing uses them (ASan included).
# Otherwise the targets are built on stable with libFuzzer's coverage instrumentation
# (-Cpasses=sancov-module, no sanitizer: wsgate forbids unsafe code), which is what
# cargo-fuzz does minus ASan. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(config_parse credentials forwarded_headers frame_tracker path_canonical)
MODE=fuzz
SECONDS_EACH=60
case "${1:-}" in
  --regress) MODE=regress ;;
  '') ;;
  *) SECONDS_EACH="$1" ;;
esac

if [[ $MODE == fuzz ]] && cargo fuzz --version >/dev/null 2>&1 && cargo +nightly --version >/dev/null 2>&1; then
  for t in "${TARGETS[@]}"; do
    echo "== cargo fuzz: $t (${SECONDS_EACH}s)"
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH"
  done
  exit 0
fi

export CARGO_TARGET_DIR="$PWD/target/sancov"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target keeps RUSTFLAGS off build scripts and proc macros (they can't link sancov).
HOST="$(rustc -vV | sed -n 's/^host: //p')"
echo "== building the targets (stable, sancov instrumentation, $HOST)"
cargo build --bins --target "$HOST"

for t in "${TARGETS[@]}"; do
  bin="$CARGO_TARGET_DIR/$HOST/debug/$t"
  mkdir -p "artifacts/$t"
  if [[ $MODE == regress ]]; then
    echo "== regress: $t"
    "$bin" -artifact_prefix="artifacts/$t/" corpus/"$t"/seed-*
  else
    echo "== fuzz: $t (${SECONDS_EACH}s)"
    "$bin" -artifact_prefix="artifacts/$t/" -max_total_time="$SECONDS_EACH" -timeout=10 "corpus/$t"
  fi
done
echo "fuzz: all targets ok ($MODE)"
