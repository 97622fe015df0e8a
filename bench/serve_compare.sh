#!/usr/bin/env bash
# serve_compare.sh - the DistServe comparison on one machine, in one run:
# the local cluster disaggregated (1 prefill + 1 decode node) and colocated
# (1 node doing both), the same model, the same total compute threads, the
# same prompts and the same rate sweep (`mlaserve bench serve`), then one
# markdown table and one plot side by side: goodput at the same SLO,
# throughput, p99 TTFT and TPOT vs rate, and the latency CDFs.
#
# The model is a deepseek-v2-lite-shaped checkpoint with random weights and
# few layers (genmodel --preset deepseek-v2-lite --layers 2: hidden 2048, MLA
# with kv_lora_rank 512, 64 routed + 2 shared experts, top-6), with a BPE
# tokenizer trained on the system's license texts (its vocab is the
# tokenizer's size). The defaults fit in under 10 minutes on a 2-core machine.
#
# usage: bench/serve_compare.sh [--out DIR] [--model DIR] [--build DIR]
#          [--rates 0.25,0.5,1,2] [--num-prompts N] [--input-len L]
#          [--output-len L] [--slo-ttft MS] [--slo-tpot MS] [--threads N]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
build=${MLS_BUILD_DIR:-$repo/build}
out=""
model=""
rates="0.25,0.5,1,2"
num_prompts=16
input_len=64
output_len=16
slo_ttft=2000
slo_tpot=100
threads=$(nproc)

while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --num-prompts) num_prompts=$2; shift 2 ;;
    --input-len) input_len=$2; shift 2 ;;
    --output-len) output_len=$2; shift 2 ;;
    --slo-ttft) slo_ttft=$2; shift 2 ;;
    --slo-tpot) slo_tpot=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "serve_compare: unknown option $1" >&2; exit 2 ;;
  esac
done

bin=$build/bin/mlaserve
[[ -x $bin ]] || { echo "serve_compare: $bin not found (build first, or --build DIR)" >&2; exit 1; }
out=${out:-$build/serve-compare}
mkdir -p "$out"
((threads >= 2)) || threads=2
half=$((threads / 2))
t_start=$(date +%s)

# ---- the model -------------------------------------------------------------------
if [[ -z $model ]]; then
  model=$build/models/deepseek-v2-lite-2l
  if [[ ! -f $model/config.json || ! -f $model/tokenizer.json ]]; then
    corpus=""
    for f in GPL-3 Apache-2.0 Artistic GPL-2 LGPL-2.1 MPL-2.0; do
      [[ -r /usr/share/common-licenses/$f ]] && corpus+="${corpus:+,}/usr/share/common-licenses/$f"
    done
    [[ -n $corpus ]] || { echo "serve_compare: no tokenizer corpus in /usr/share/common-licenses; pass --model" >&2; exit 1; }
    echo "serve_compare: generating a deepseek-v2-lite-shaped model (2 layers) in $model"
    "$bin" genmodel --preset deepseek-v2-lite --layers 2 --tokenizer-corpus "$corpus" \
      --tokenizer-vocab 102400 --out "$model" --force
  fi
fi
vocab=$(sed -n 's/.*"vocab_size": *\([0-9][0-9]*\).*/\1/p' "$model/config.json" | head -1)
[[ -n $vocab ]] || { echo "serve_compare: no vocab_size in $model/config.json" >&2; exit 1; }

# ---- one setup: start the cluster, warm up, sweep, stop ---------------------------
cluster_pid=""
stop_cluster() {
  if [[ -n $cluster_pid ]]; then
    kill -TERM "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
    cluster_pid=""
  fi
}
trap stop_cluster EXIT INT TERM

run_setup() { # name, cluster options...
  local name=$1; shift
  local state=$out/$name.state.json port
  rm -f "$state"
  "$bin" cluster up --model "$model" --port 0 --state-file "$state" "$@" >"$out/$name.cluster.log" 2>&1 &
  cluster_pid=$!
  for _ in $(seq 1200); do
    [[ -s $state ]] && break
    kill -0 "$cluster_pid" 2>/dev/null || { tail -20 "$out/$name.cluster.log" >&2; return 1; }
    sleep 0.1
  done
  port=$(sed -n 's/.*"http_port":\([0-9]*\).*/\1/p' "$state")
  [[ -n $port ]] || { echo "serve_compare: $name did not come up" >&2; tail -20 "$out/$name.cluster.log" >&2; return 1; }
  echo "serve_compare: $name up on port $port ($*)"
  # warm-up (weights paged in, first-call costs paid): not measured
  "$bin" bench serve --url "http://127.0.0.1:$port" --num-prompts 2 --max-concurrency 1 \
    --input-len "$input_len" --output-len 4 --vocab-size "$vocab" --seed 999 --no-progress >/dev/null
  "$bin" bench serve --url "http://127.0.0.1:$port" --label "$name" --num-prompts "$num_prompts" \
    --sweep-rates "$rates" --input-len "$input_len" --output-len "$output_len" --vocab-size "$vocab" \
    --seed 1 --goodput "ttft:$slo_ttft" "tpot:$slo_tpot" --timeout 300 \
    --result-json "$out/$name.json" --plot "$out/$name.png" >"$out/$name.txt"
  stop_cluster
}

run_setup disaggregated --prefill 1 --decode 1 --threads "$half"
run_setup colocated --colocated --decode 1 --threads "$threads"

echo
echo "## mlaserve disaggregated vs colocated ($(basename "$model"): deepseek-v2-lite shape, 2 layers, vocab $vocab)"
echo "Same model, $threads compute threads in total (disaggregated: $half + $half, colocated: $threads)," \
     "$num_prompts prompts per rate, input $input_len / output $output_len tokens, Poisson arrivals."
echo
"$bin" bench serve --compare "disaggregated=$out/disaggregated.json" --compare "colocated=$out/colocated.json" \
  --table "$out/compare.md" --plot "$out/compare.png"
echo
echo "serve_compare: table $out/compare.md, plot $out/compare.png, raw results $out/{disaggregated,colocated}.json" \
     "($(($(date +%s) - t_start)) s)"
