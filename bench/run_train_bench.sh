#!/usr/bin/env bash
# Training throughput: `diffuse train` against its PyTorch-Python twin (bench/train_twin.py),
# same model config, batch, threads and steps, one after the other. Prints img/s of both and
# the ratio diffuse / pytorch. See docs/benchmarks.md ("Training throughput") for the method.
#
#   bench/run_train_bench.sh [--preset small] [--batch 64] [--threads N] [--warmup 5] [--steps 30]
#                            [--twin-attention baddbmm|bmm]   (diffusers' formulation, default, or diffuse's)
#                            [--data fashion-mnist|emoji|DIR] [--latent VAE_DIR]
#                            [--bf16]   (both sides' forward pass under bf16 autocast)
#                            [--repeats N]   (N alternating rounds of both; medians)
#   bench/run_train_bench.sh --check     # parity of the twin and diffuse (max abs diff <= 1e-4)
#
# --preset is any `diffuse train --config` preset (UNet presets, DiT-S/2, ...). With --data other
# than fashion-mnist, or with --latent, the twin trains on synthetic data of the same shape
# (uint8 images, or VAE posteriors sampled per step) with the config.json diffuse wrote.
# Environment: DIFFUSE (binary, default build/diffuse), PYTHON (default /usr/bin/python3),
# DIFFUSE_FASHION_MNIST_DIR (dataset, default /usr/share/datasets/fashion-mnist).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
diffuse=${DIFFUSE:-$root/build/diffuse}
python=${PYTHON:-/usr/bin/python3}
twin=$root/bench/train_twin.py
fixtures=${DIFFUSE_FIXTURES:-$root/tests/fixtures}
preset=small batch=64 threads=$(nproc) warmup=5 steps=30 check=0 attention=baddbmm data=fashion-mnist latent= bf16= repeats=1

while [ $# -gt 0 ]; do
  case $1 in
    --preset) preset=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --twin-attention) attention=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --latent) latent=$2; shift 2 ;;
    --check) check=1; shift ;;
    --bf16) bf16=--bf16; shift ;;
    --repeats) repeats=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | cut -c3-; exit 0 ;;
    *) echo "run_train_bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$batch" "$threads" "$warmup" "$steps" "$repeats"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "run_train_bench.sh: '$v' must be a positive integer" >&2; exit 2; }
done
[ -x "$diffuse" ] || { echo "run_train_bench.sh: $diffuse not found (build it, or set DIFFUSE)" >&2; exit 2; }
"$python" -c 'import torch' 2>/dev/null || { echo "run_train_bench.sh: $python has no torch (apt-get install python3-torch)" >&2; exit 2; }

[ -z "$latent" ] || [ -f "$latent/config.json" ] || { echo "run_train_bench.sh: --latent $latent: no config.json" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/train-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

# What diffuse trains on, and what the twin is given: Fashion-MNIST itself with the same preset, or
# synthetic data of the shape of the config.json diffuse wrote (twin_args_for DIR).
data_args=(--data "$data")
[ -n "$latent" ] && data_args+=(--latent "$latent")
model_dir() { for d in "$1/unet" "$1/transformer" "$1"; do [ -f "$d/config.json" ] && { echo "$d"; return; }; done; }
twin_args_for() {
  local cfg
  cfg=$(model_dir "$1")/config.json
  if [ "$data" = fashion-mnist ] && [ -z "$latent" ]; then
    echo --config "$cfg"
  elif [ -n "$latent" ]; then
    echo --data synthetic --config "$cfg" --latent --latent-scale \
      "$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["scaling_factor"])' "$latent/config.json")"
  else
    echo --data synthetic --config "$cfg"
  fi
}

if [ "$check" = 1 ]; then
  fail=0
  compare() { "$python" "$twin" compare "$1" "$2" --tol 1e-4 || fail=1; }
  # 1. The fixture written by diffusers (io.safetensors holds the inputs and diffusers' `out`).
  for name in unet2d_classcond unet2d_ddpm dit_tiny; do
    f=$fixtures/$name
    if [ -f "$f/io.safetensors" ]; then
      "$python" "$twin" forward --model "$f" --inputs "$f/io.safetensors" --out "$work/$name.safetensors"
      printf 'twin    vs diffusers (fixture %s): ' "$name"; compare "$work/$name.safetensors" "$f/io.safetensors"
      "$diffuse" forward --model "$f" --inputs "$f/io.safetensors" --out "$work/d_$name.safetensors" \
        --threads "$threads" >/dev/null
      printf 'diffuse vs diffusers (fixture %s): ' "$name"; compare "$work/d_$name.safetensors" "$f/io.safetensors"
    else
      echo "fixture $f not found: skipped"
    fi
  done
  # 2. A model written by `diffuse train` (preset $preset, 2 steps): twin vs `diffuse forward`.
  "$diffuse" train "${data_args[@]}" --out "$work/d" --config "$preset" --batch 4 --steps 2 \
    --sample-every 0 --save-every 0 --threads "$threads" --quiet >/dev/null
  # 3. A model written by the twin (same config, 2 steps): `diffuse forward` vs twin.
  # shellcheck disable=SC2046
  "$python" "$twin" train $(twin_args_for "$work/d") --batch 4 --warmup 1 --steps 1 --threads "$threads" \
    --save "$work/t" >/dev/null 2>&1
  for m in "$(model_dir "$work/d"):written by diffuse train" "$work/t:written by the twin"; do
    dir=${m%%:*}
    "$python" "$twin" inputs --model "$dir" --batch 4 --out "$work/in.safetensors"
    "$diffuse" forward --model "$dir" --inputs "$work/in.safetensors" --out "$work/out_diffuse.safetensors" \
      --threads "$threads" >/dev/null
    "$python" "$twin" forward --model "$dir" --inputs "$work/in.safetensors" --out "$work/out_twin.safetensors"
    printf 'twin    vs diffuse forward (%s, %s): ' "$preset" "${m#*:}"
    compare "$work/out_twin.safetensors" "$work/out_diffuse.safetensors"
  done
  [ "$fail" = 0 ] && echo "parity: ok" || { echo "parity: FAILED"; exit 1; }
  exit 0
fi

# diffuse: elapsed_s in metrics.csv is the time spent in training steps (no start-up, data
# loading or final save). Time of steps warmup+1 .. warmup+steps = difference of two runs.
common=("${data_args[@]}" --config "$preset" --batch "$batch" --threads "$threads" --seed 0 --flip
        --sample-every 0 --save-every 0 --quiet ${bf16:+--bf16})
elapsed() { tail -n 1 "$1/metrics.csv" | cut -d, -f5; }
echo "preset $preset, data $data${latent:+ (latents of $latent)}, batch $batch, threads $threads${bf16:+, bf16 autocast}:" \
     "$warmup warm-up + $steps timed steps | $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
d_all=() t_all=()
for ((round = 1; round <= repeats; round++)); do
  rm -rf "$work/w" "$work/r"
  "$diffuse" train "${common[@]}" --steps "$warmup" --out "$work/w" >/dev/null
  "$diffuse" train "${common[@]}" --steps $((warmup + steps)) --out "$work/r" >/dev/null
  d_ips=$("$python" -c "import sys; a, b = map(float, sys.argv[1:]); print(f'{$steps * $batch / (b - a):.2f}')" \
          "$(elapsed "$work/w")" "$(elapsed "$work/r")")
  # shellcheck disable=SC2046
  t_ips=$("$python" "$twin" train $(twin_args_for "$work/r") --batch "$batch" --threads "$threads" \
          --warmup "$warmup" --steps "$steps" --seed 0 --attention "$attention" $bf16 2>/dev/null |
          awk '/^img_per_s/ {print $2}')
  [ "$repeats" = 1 ] || echo "round $round/$repeats: diffuse $d_ips, twin $t_ips img/s"
  d_all+=("$d_ips") t_all+=("$t_ips")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
of=""; [ "$repeats" = 1 ] || of=" (median of $repeats)"
d_ips=$(median "${d_all[@]}") t_ips=$(median "${t_all[@]}")
echo "diffuse train: $d_ips img/s$of"
echo "pytorch twin:  $t_ips img/s (attention $attention)$of"
"$python" -c "import sys; print(f'ratio diffuse / pytorch: {float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$d_ips" "$t_ips"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
