#!/usr/bin/env bash
# Configures and builds diffuse in ./build (Release, Ninja, unity units, ccache, precompiled headers).
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Ninja compiles a target's objects while its dependencies still link; a build folder
# configured earlier keeps the generator it was made with.
generator=()
if [ ! -f build/CMakeCache.txt ] && command -v ninja >/dev/null; then generator=(-G Ninja); fi
# With clang, the "sanitize" preset (build-asan: ASan + UBSan unit tests and the libFuzzer
# harnesses) is built too, and the tests of build/ run it.
sanitize=()
if command -v clang++ >/dev/null; then sanitize=(-DDIFFUSE_SANITIZE_DIR="$PWD/build-asan"); fi
cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "${sanitize[@]}" "$@" >/dev/null
cmake --build build -j"$(nproc)"
if [ ${#sanitize[@]} -gt 0 ]; then
  cmake --preset sanitize >/dev/null
  cmake --build --preset sanitize -j"$(nproc)"
fi
