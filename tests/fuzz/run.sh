#!/usr/bin/env bash
# run.sh - fuzz each harness for a while (make fuzz), growing its corpus in
# the build folder, and print executions, coverage and crashes per harness.
# Usage: run.sh BUILD_DIR SECONDS HARNESS...
#   BUILD_DIR/bin/fuzz_<h>          the harness (built with -DMLS_FUZZ=ON)
#   BUILD_DIR/fuzz/corpus/<h>/      the corpus it grows (seeded from tests/fuzz/corpus/<h>)
#   BUILD_DIR/fuzz/crashes/<h>/     what it found (crash-*, leak-*, timeout-*, oom-*)
#   BUILD_DIR/fuzz/<h>.log          libFuzzer's output of the last run
#   BUILD_DIR/fuzz/totals.tsv       one line per run: harness, seconds, executions, cov, ft, crashes
# Extra libFuzzer flags come from FUZZ_FLAGS. Exits 1 when any harness crashed.
set -uo pipefail
build=$1
seconds=$2
shift 2
src=$(cd "$(dirname "$0")" && pwd)
out=$build/fuzz
mkdir -p "$out"
status=0
printf '%-10s %8s %12s %8s %8s %8s\n' harness seconds executions cov ft crashes
for h in "$@"; do
  bin=$build/bin/fuzz_$h
  if [[ ! -x $bin ]]; then
    echo "run.sh: $bin not built" >&2
    exit 2
  fi
  mkdir -p "$out/corpus/$h" "$out/crashes/$h"
  before=$(find "$out/crashes/$h" -type f | wc -l)
  # shellcheck disable=SC2086
  "$bin" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$out/crashes/$h/" ${FUZZ_FLAGS:-} "$out/corpus/$h" "$src/corpus/$h" \
    >"$out/$h.log" 2>&1
  rc=$?
  after=$(find "$out/crashes/$h" -type f | wc -l)
  crashes=$((after - before))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$h.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$out/$h.log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$out/$h.log" | tail -1 | cut -d' ' -f2)
  printf '%-10s %8s %12s %8s %8s %8s\n' "$h" "$seconds" "${execs:-?}" "${cov:-?}" "${ft:-?}" \
    "$crashes"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$h" "$seconds" "${execs:-0}" "${cov:-0}" "${ft:-0}" \
    "$crashes" >>"$out/totals.tsv"
  if ((rc != 0 || crashes > 0)); then
    echo "run.sh: fuzz_$h failed (exit $rc); see $out/$h.log and $out/crashes/$h/" >&2
    status=1
  fi
done
exit $status
