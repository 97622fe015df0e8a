#!/usr/bin/env bash
# install-fuzz-deps.sh - what `make fuzz` needs on top of deploy/install-deps.sh:
# Debian's clang with libFuzzer and the sanitizer runtimes (libclang-rt-14-dev)
# and llvm-symbolizer for readable crash reports. Only the fuzz build uses them.
# Idempotent. Usage: deploy/install-fuzz-deps.sh   (as root, or with sudo available)
set -euo pipefail

"$(dirname "$0")/install-deps.sh"

pkgs=(
  clang clang-14                                 # the compiler the harnesses need
  libclang-rt-14-dev                             # libFuzzer, ASan and UBSan runtimes
  llvm-14                                        # llvm-symbolizer: stack traces in reports
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "install-fuzz-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi
echo "install-fuzz-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
