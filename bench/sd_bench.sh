#!/usr/bin/env bash
# Stable Diffusion 1.5 on the CPU: seconds per sampling step (CFG 7.5, so the UNet runs batch 2),
# VAE decode time and peak RSS of `diffuse generate` on a random fp16 SD1.5 single-file checkpoint
# (docs/benchmarks.md, "Stable Diffusion 1.5 on the CPU"). Builds nothing: needs build/diffuse and,
# when the checkpoint is missing, build/bench/sd_random_checkpoint.
#
# Usage: bench/sd_bench.sh [CHECKPOINT.safetensors]   (default /tmp/sd15_random.safetensors)
# Environment: SIZES ("256 512"), DTYPES ("bf16 fp32"), STEPS (3), NICE (5), BUILD (build).
# Prints one markdown table row per configuration; logs go to $LOGDIR (default /tmp/sd_bench).
set -euo pipefail
cd "$(dirname "$0")/.."

CKPT=${1:-/tmp/sd15_random.safetensors}
SIZES=${SIZES:-"256 512"}
DTYPES=${DTYPES:-"bf16 fp32"}
STEPS=${STEPS:-3}
NICE=${NICE:-5}
BUILD=${BUILD:-build}
LOGDIR=${LOGDIR:-/tmp/sd_bench}
KEYS=${KEYS:-$(cd "$(dirname "$0")/.." && pwd)/tests/fixtures/sd15_keys.tsv}
mkdir -p "$LOGDIR"

if [[ ! -f $CKPT ]]; then
  echo "writing $CKPT from $KEYS" >&2
  nice -n "$NICE" "$BUILD/bench/sd_random_checkpoint" "$KEYS" "$CKPT" >&2
fi

echo "| size | dtype | steps | first step (s) | s/step after the first | VAE decode (s) | load (s) | peak RSS (GB) | wall (s) | load avg at start |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for size in $SIZES; do
  for dtype in $DTYPES; do
    log="$LOGDIR/${size}_${dtype}.log"
    loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
    nice -n "$NICE" /usr/bin/time -v "$BUILD/diffuse" generate --model "$CKPT" --prompt "a photograph of an astronaut riding a horse" \
      --width "$size" --height "$size" --steps "$STEPS" --guidance 7.5 --seed 0 --dtype "$dtype" --timings \
      --out "$LOGDIR/${size}_${dtype}.png" >"$log" 2>&1 || { echo "failed: see $log" >&2; tail -5 "$log" >&2; continue; }
    # timings {"load_s": L, "step_s": [a, b, ...], "decode_s": D}
    t=$(grep '^timings ' "$log" | tail -1)
    load_s=$(sed -E 's/.*"load_s": ([0-9.e+-]+).*/\1/' <<<"$t")
    steps=$(sed -E 's/.*"step_s": \[([^]]*)\].*/\1/' <<<"$t" | tr -d ' ')
    decode_s=$(sed -E 's/.*"decode_s": ([0-9.e+-]+).*/\1/' <<<"$t")
    rss_kb=$(sed -nE 's/.*Maximum resident set size \(kbytes\): ([0-9]+).*/\1/p' "$log")
    wall=$(sed -nE 's/.*Elapsed \(wall clock\) time.*: (.*)$/\1/p' "$log" | awk -F: '{s=0; for (i=1;i<=NF;i++) s=s*60+$i; print s}')
    awk -v size="$size" -v dtype="$dtype" -v steps="$steps" -v dec="$decode_s" -v ld="$load_s" -v rss="$rss_kb" \
      -v wall="$wall" -v la="$loadavg" 'BEGIN {
        n = split(steps, s, ","); rest = 0; for (i = 2; i <= n; i++) rest += s[i]
        printf "| %d² | %s | %d | %.1f | %s | %.1f | %.1f | %.2f | %.0f | %s |\n", size, dtype, n, s[1],
               (n > 1 ? sprintf("%.1f", rest / (n - 1)) : "-"), dec, ld, rss * 1024 / 1e9, wall, la }'
  done
done
