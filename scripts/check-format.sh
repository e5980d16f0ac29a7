#!/usr/bin/env bash
# Checks that every C++ source and header is clang-format clean (.clang-format at the root).
# Usage: scripts/check-format.sh [clang-format binary]; prints the files that differ and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
cf=${1:-clang-format}
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.cpp' '*.h')
else
  mapfile -t files < <(find src tools tests bench -name '*.cpp' -o -name '*.h' | sort)
fi
bad=()
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  "$cf" --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ "${#bad[@]}" -gt 0 ]; then
  echo "not clang-format clean (fix with: $cf -i FILE):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
echo "${#files[@]} files clang-format clean"
