# Convenience entry points; the real build is CMake (see README.md).
#   make test        install deps, build (warnings as errors), run every test
#   make test-asan   the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make test-tsan   the same under ThreadSanitizer
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

clean:
	rm -rf build build-asan build-tsan

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
