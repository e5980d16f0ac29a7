#!/usr/bin/env bash
# Configures and builds diffuse in ./build (Release, Ninja, unity units, ccache, precompiled headers).
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Ninja compiles a target's objects while its dependencies still link; a build folder
# configured earlier keeps the generator it was made with.
generator=()
if [ ! -f build/CMakeCache.txt ] && command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
