#!/usr/bin/env bash
# Installs the library from a build folder, builds examples/embed against the installed CMake
# package (find_package(diffuse)) and runs it on the shipped fashion-mnist model.
# Usage: scripts/check-embed.sh BUILD_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
prefix=$build/embed-install
rm -rf "$prefix" "$build/embed"
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$root/examples/embed" -B "$build/embed" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build/embed" >/dev/null
out=$build/embed/sneaker.png
"$build/embed/embed" "$root/models/fashion-mnist" "$out" sneaker 3
head -c 8 "$out" | od -An -c | grep -q "P   N   G" || { echo "embed did not write a PNG" >&2; exit 1; }
grep -aq "Class: sneaker" "$out" || { echo "the PNG lacks its parameters" >&2; exit 1; }
echo "embed wrote $out"
