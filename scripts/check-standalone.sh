#!/usr/bin/env bash
# Checks that the repository stands alone: no test, benchmark, script, build file or doc reaches
# a folder beside the clone (the reference fixtures live in tests/fixtures), and the test
# binaries were configured with the in-tree fixtures folder.
# Usage: scripts/check-standalone.sh [FIXTURES_DIR the tests were built with]; exits 1 naming
# each offending line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# The patterns are split so that this file does not match itself.
sibling='\.\./'"shared"'|/work/'"shared"'|'"shared"'/fixtures'
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files -co --exclude-standard | grep -v '^tests/fixtures/')
else
  mapfile -t files < <(find . -path ./build -prune -o -path ./tests/fixtures -prune -o -type f -print | sed 's#^\./##')
fi
bad=0
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  case "$f" in *.safetensors | *.png | *.jpg | *.gif | *.webp | *.bin) continue ;; esac
  if hits=$(grep -nE "$sibling" "$f"); then
    sed "s#^#$f:#" <<<"$hits" >&2
    bad=1
  fi
done
if [ $# -ge 1 ]; then
  fixtures=$(cd "$1" 2>/dev/null && pwd) || {
    echo "fixtures folder $1 does not exist" >&2
    exit 1
  }
  case "$fixtures/" in
    "$root"/*) ;;
    *)
      echo "tests were configured with fixtures outside the repository: $fixtures" >&2
      bad=1
      ;;
  esac
  [ -f "$fixtures/README.md" ] || {
    echo "$fixtures has no README.md (provenance of the fixtures)" >&2
    bad=1
  }
fi
if [ $bad -ne 0 ]; then
  echo "the repository reaches outside itself (see the lines above)" >&2
  exit 1
fi
echo "${#files[@]} files checked: nothing reaches outside the repository"
