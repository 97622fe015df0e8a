#!/usr/bin/env bash
# install-deps.sh - install every build and run dependency of mlaserve from
# Debian packages. Idempotent: does nothing when everything is present.
# Usage: deploy/install-deps.sh [--fuzz]   (as root, or with sudo available)
#   --fuzz  also what `make fuzz` needs: Debian's clang with libFuzzer and the
#           sanitizer runtimes, and llvm-symbolizer for readable crash reports
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build pkg-config   # toolchain
  libcjson-dev                                   # JSON: config.json, safetensors headers, API
  libuv1-dev                                     # event loops: router, nodes, transport
  libucx-dev ucx-utils                           # KV transport (ucp) and ucx_perftest
  libprotobuf-c-dev protobuf-c-compiler          # control-plane messages
  libsodium-dev                                  # cluster key: node authentication, sealed frames
  libxxhash-dev                                  # per-layer KV checksums
  node-llhttp                                    # HTTP/1.1 parser sources (router)
  libpcre2-dev                                   # tokenizer pre-tokenizer regexes (Unicode)
  gnuplot-nox                                    # benchmark plots
  curl procps psmisc                             # cluster scripts and tests
  iproute2                                       # ip netns: the multi-host fault test
  python3                                        # tools/check_includes.py (a ctest test)
)
if [[ "${1:-}" == "--fuzz" ]]; then
  pkgs+=(
    clang clang-14                               # the compiler the fuzz harnesses need
    libclang-rt-14-dev                           # libFuzzer, ASan and UBSan runtimes
    llvm-14                                      # llvm-symbolizer: stack traces in reports
  )
elif [[ $# -gt 0 ]]; then
  echo "usage: deploy/install-deps.sh [--fuzz]" >&2
  exit 2
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
