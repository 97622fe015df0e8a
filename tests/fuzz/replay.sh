#!/usr/bin/env bash
# replay.sh - run a fuzz harness once over every file in the given folders
# (its seed corpus and its saved crashes): the regression test ctest runs.
# Usage: replay.sh HARNESS DIR...   (missing or empty folders are skipped)
set -euo pipefail
harness=$1
shift
files=()
for d in "$@"; do
  [[ -d $d ]] || continue
  while IFS= read -r -d '' f; do
    files+=("$f")
  done < <(find "$d" -type f ! -name '.*' ! -name '*.md' -print0 | sort -z)
done
if ((${#files[@]} == 0)); then
  echo "replay: no inputs in $*" >&2
  exit 1
fi
echo "replay: ${#files[@]} inputs through $(basename "$harness")"
exec "$harness" -runs=1 "${files[@]}"
