#!/usr/bin/env bash
# Installs the Debian 12 packages diffuse needs to build, test and run. Idempotent; run as root.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build ccache pkg-config git
  clang-format              # the format test (tests/CMakeLists.txt) checks with version 14
  clang libclang-rt-14-dev  # the sanitize preset: ASan + UBSan tests and the libFuzzer harnesses
  libtorch-dev              # tensor engine (PyTorch 1.13 C++ API, CPU, oneDNN)
  libdnnl-dev               # oneDNN 2 headers (the library libtorch runs): fp32 Winograd convolutions, per-head attention products
  libgloo-dev               # headers of c10d's Gloo backend: data-parallel training (docs/distributed.md)
  libopenblas0-openmp       # makes libblas.so.3 OpenBLAS (the reference BLAS is ~30x slower)
  nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libpng-dev libjpeg-dev zlib1g-dev
  libgif-dev libwebp-dev    # animated GIF and WebP (diffuse animate)
  libgtest-dev libbenchmark-dev
  dataset-fashion-mnist     # training data for the shipped model and the tests
  fonts-noto-color-emoji unicode-data  # --data emoji: colour emoji bitmaps and their subgroups
  chromium                  # the web UI's browser tests (tests/node/browser_ui.test.mjs), headless
)
# Node.js and npm run the client tests (tests/node: the OpenAI SDK, the web UI through
# playwright-core); a newer Node already installed is kept.
command -v node >/dev/null && command -v npm >/dev/null || PKGS+=(nodejs npm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# libtorch must find OpenBLAS through libblas.so.3.
blas=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | awk '/^Value:/{print $2}')
case "$blas" in
  *openblas*) ;;
  *) update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 ;;
esac
# The pinned npm packages of the client tests (tests/node/package-lock.json), from the npm registry.
node_dir=$(cd "$(dirname "$0")/../tests/node" && pwd)
installed=$(node -e "
  const deps = require('$node_dir/package.json').dependencies;
  const ok = Object.entries(deps).every(([name, want]) => {
    try { return require('$node_dir/node_modules/' + name + '/package.json').version === want; } catch (e) { return false; }
  });
  console.log(ok ? 'yes' : 'no');")
[ "$installed" = yes ] || npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error
