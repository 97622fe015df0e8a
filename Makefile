# Convenience entry points; the real build is CMake (see README.md).
#   make test        install deps, build (warnings as errors), run every test
#   make test-asan   the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make test-tsan   the same under ThreadSanitizer
#   make fuzz        build the libFuzzer harnesses (clang) and fuzz each for FUZZ_SECONDS
JOBS ?= $(shell nproc)
CTEST_ARGS ?=

.PHONY: deps build test test-asan test-tsan clean

deps:
	./deploy/install-deps.sh

build: deps
	cmake -S . -B build -DMLS_WERROR=ON
	cmake --build build -j $(JOBS)

test: build
	ctest --test-dir build --output-on-failure -j $(JOBS) $(CTEST_ARGS)

test-asan: deps
	cmake -S . -B build-asan -DMLS_WERROR=ON -DMLS_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build-asan -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --test-dir build-asan --output-on-failure -j $(JOBS) $(CTEST_ARGS)

test-tsan: deps
	cmake -S . -B build-tsan -DMLS_WERROR=ON -DMLS_TSAN=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build-tsan -j $(JOBS)
	# UCX's memory-event hooks crash under TSan; the transport works without them
	UCX_MEM_EVENTS=no TSAN_OPTIONS=halt_on_error=1 \
	  ctest --test-dir build-tsan --output-on-failure -j $(JOBS) $(CTEST_ARGS)

# libFuzzer harnesses (tests/fuzz): replay the seed corpus and saved crashes
# (ctest), then fuzz each harness for FUZZ_SECONDS; the grown corpus stays in
# build-fuzz/fuzz/corpus, findings go to build-fuzz/fuzz/crashes.
FUZZ_SECONDS ?= 60
FUZZ_HARNESSES ?= http oai proto kv_layout model tokenizer
.PHONY: fuzz
fuzz:
	./deploy/install-deps.sh --fuzz
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DMLS_FUZZ=ON -DMLS_CUDA=OFF -DMLS_WERROR=ON
	cmake --build build-fuzz -j $(JOBS) --target mls_fuzz
	ctest --test-dir build-fuzz -R '^fuzz_' --output-on-failure
	tests/fuzz/run.sh build-fuzz $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

clean:
	rm -rf build build-asan build-tsan build-fuzz

# Start a local cluster (router + 1 prefill + 1 decode) on the demo model; Ctrl-C stops it.
.PHONY: cluster
cluster: build
	build/bin/mlaserve cluster up

# Generate a DeepSeek-V2-Lite-shaped model (2 layers, random weights) and run it.
DEMO_MODEL ?= models/v2lite-2l
.PHONY: demo
demo: build
	@test -f $(DEMO_MODEL)/config.json || build/bin/mlaserve genmodel --preset deepseek-v2-lite \
	  --layers 2 --out $(DEMO_MODEL)
	build/bin/mlaserve generate --model $(DEMO_MODEL) --prompt-ids 100,200,300,400,500,600,700,800 \
	  --max-tokens 32 --kv-dtype bf16
