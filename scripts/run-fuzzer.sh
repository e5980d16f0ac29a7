#!/usr/bin/env bash
# Runs one libFuzzer harness for a fixed time over its seed corpus (read-only: new inputs go to
# a temporary folder). A crash, a leak, a sanitizer report or an abort fails, and its input is kept
# in $FUZZ_ARTIFACTS (default: artifacts/ beside the binary): BINARY FILE reproduces it.
# Usage: scripts/run-fuzzer.sh FUZZER_BINARY SEED_CORPUS_DIR SECONDS [libFuzzer options...]
set -euo pipefail
bin=$(realpath "$1") seeds=$(realpath "$2") seconds=$3
shift 3
[ -x "$bin" ] || { echo "$bin: not built (scripts/build.sh builds the sanitize preset when clang is installed)" >&2; exit 1; }
artifacts=${FUZZ_ARTIFACTS:-$(dirname "$bin")/artifacts}
mkdir -p "$artifacts"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_NUM_THREADS=1
"$bin" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts/" \
  "$@" "$work" "$seeds" 2>&1 |
  grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)' | tail -40
