#!/usr/bin/env bash
# tests/gpu/run.sh - the one prepared device check for the CUDA backend.
#
# In a fresh build directory: configure and build for Hopper (sm_90a by
# default), run the GPU kernel tests on fresh random inputs (a new seed each
# run, printed so a failure can be replayed with MLS_TEST_SEED), then the GPU
# benchmark (copy bandwidth + MLA decode table). Prints everything; budgeted
# to finish well inside 8 minutes on a 16-core H200 host.
#
# When the whole-tree CMake configure cannot run (a bare device host without
# cJSON/libuv/pkg-config), it falls back to compiling just what the GPU check
# needs (common, kernels/cpu, kernels/cuda, the test and the bench) with
# nvcc and cc directly.
#
# Environment: MLS_CUDA_ARCH (default 90a; 90 for plain sm_90), MLS_GPU_BUILD
# (build directory, default <repo>/build-gpu-run), MLS_TEST_SEED (default: the
# time), MLS_BENCH_ARGS (default: the full sweep), MLS_GPU_FORCE_MANUAL=1
# (skip CMake), OUT (if set, logs and bench.json are written there too).
# Exit status: 0 all passed; 1 a test or the bench failed; 2 the build failed;
# 77 no usable CUDA device.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${MLS_GPU_BUILD:-$ROOT/build-gpu-run}
ARCH=${MLS_CUDA_ARCH:-90a}
SEED=${MLS_TEST_SEED:-$(date +%s)}
BENCH_ARGS=${MLS_BENCH_ARGS:-}
JOBS=$(nproc 2>/dev/null || echo 4)
OUTDIR=${OUT:-}
NVCC=${NVCC:-}
if [ -z "$NVCC" ]; then
    if command -v nvcc >/dev/null 2>&1; then NVCC=$(command -v nvcc); else NVCC=/usr/local/cuda/bin/nvcc; fi
fi
CUDA_HOME=${CUDA_HOME:-$(cd "$(dirname "$NVCC")/.." 2>/dev/null && pwd || echo /usr/local/cuda)}

log() { printf '\n=== %s [%s]\n' "$*" "$(date +%H:%M:%S)"; }
t_start=$(date +%s)

log "environment"
echo "repo: $ROOT  build: $BUILD  arch: sm_$ARCH  seed: $SEED  jobs: $JOBS"
nvidia-smi || echo "nvidia-smi: not available"
"$NVCC" --version || { echo "nvcc not found at $NVCC"; exit 2; }
cmake --version 2>/dev/null | head -1 || echo "cmake: not available"

rm -rf "$BUILD"
mkdir -p "$BUILD"

build_cmake() {
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMLS_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$ARCH" &&
    cmake --build "$BUILD" -j"$JOBS" --target test_cuda_kernels mlaserve-bench-cuda
}

# The same objects without CMake: per-ISA flags for kernels/cpu as its
# CMakeLists.txt sets them; nvcc for kernels/cuda.
# shellcheck disable=SC2086  # flag lists are split on purpose
build_manual() {
    local obj="$BUILD/manual" f o flags cflags
    mkdir -p "$obj" "$BUILD/bin"
    cflags="-std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter -fno-strict-aliasing -pthread"
    cflags="$cflags -I$ROOT/common -I$ROOT/kernels/cpu -I$ROOT/kernels/cuda -I$ROOT/tests"
    local pids=() p
    for f in "$ROOT"/common/*.c "$ROOT"/kernels/cpu/*.c; do
        o="$obj/$(basename "$(dirname "$f")")_$(basename "$f" .c).o"
        flags=""
        case "$f" in
        *_avx2.c) flags="-mavx2 -mfma -mf16c" ;;
        *_avx512.c) flags="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx2 -mfma -mf16c" ;;
        esac
        cc $cflags $flags -c "$f" -o "$o" &
        pids+=($!)
    done
    for f in "$ROOT"/kernels/cuda/*.cu; do
        "$NVCC" -std=c++17 -O3 -lineinfo --expt-relaxed-constexpr \
            -gencode=arch=compute_${ARCH},code=sm_${ARCH} \
            -I"$ROOT/common" -I"$ROOT/kernels/cpu" -I"$ROOT/kernels/cuda" \
            -c "$f" -o "$obj/cuda_$(basename "$f" .cu).o" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do
        wait "$p" || return 1
    done
    local libs="-L$CUDA_HOME/lib64 -lcublasLt -lcublas -lcudart -lstdc++ -lm -lpthread -ldl -lrt"
    ar rcs "$obj/libmls_gpu.a" "$obj"/*.o || return 1
    cc $cflags -DMLS_FIXTURES_DIR="\"$ROOT/tests/fixtures\"" -DMLS_BIN_DIR="\"$BUILD/bin\"" \
        "$ROOT/tests/gpu/test_cuda_kernels.c" "$obj/libmls_gpu.a" $libs \
        -Wl,-rpath,"$CUDA_HOME/lib64" -o "$BUILD/bin/test_cuda_kernels" || return 1
    cc $cflags "$ROOT/bench/bench_cuda.c" "$obj/libmls_gpu.a" $libs \
        -Wl,-rpath,"$CUDA_HOME/lib64" -o "$BUILD/bin/mlaserve-bench-cuda" || return 1
}

log "build (cmake, sm_$ARCH)"
if [ -n "${MLS_GPU_FORCE_MANUAL:-}" ] || ! build_cmake; then
    log "building the GPU check directly with nvcc + cc (cmake failed or MLS_GPU_FORCE_MANUAL)"
    rm -rf "$BUILD" && mkdir -p "$BUILD"
    build_manual || { echo "BUILD FAILED"; exit 2; }
fi
echo "build took $(( $(date +%s) - t_start )) s"

log "GPU kernel tests (MLS_TEST_SEED=$SEED)"
MLS_TEST_SEED=$SEED timeout 240 "$BUILD/bin/test_cuda_kernels" 2>&1 |
    if [ -n "$OUTDIR" ]; then tee "$OUTDIR/test_cuda_kernels.log"; else cat; fi
rc_test=${PIPESTATUS[0]}
echo "test_cuda_kernels exit status: $rc_test"
if [ "$rc_test" -eq 77 ]; then
    echo "SKIPPED: no usable CUDA device"
    exit 77
fi

log "GPU benchmark"
json_args=()
if [ -n "$OUTDIR" ]; then json_args=(--json-out "$OUTDIR/bench.json"); fi
# shellcheck disable=SC2086
timeout 300 "$BUILD/bin/mlaserve-bench-cuda" $BENCH_ARGS ${json_args[@]+"${json_args[@]}"} 2>&1 |
    if [ -n "$OUTDIR" ]; then tee "$OUTDIR/bench.txt"; else cat; fi
rc_bench=${PIPESTATUS[0]}
echo "mlaserve-bench-cuda exit status: $rc_bench"

log "summary"
echo "tests: $([ "$rc_test" -eq 0 ] && echo PASS || echo "FAIL ($rc_test)")"
echo "bench: $([ "$rc_bench" -eq 0 ] && echo OK || echo "FAIL ($rc_bench)")"
echo "total $(( $(date +%s) - t_start )) s"
[ "$rc_test" -eq 0 ] && [ "$rc_bench" -eq 0 ] || exit 1
exit 0
