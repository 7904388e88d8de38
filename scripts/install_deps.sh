#!/usr/bin/env bash
# Installs what syncbn needs to build and test on Debian/Ubuntu, only what is
# missing: a C++20 compiler, CMake >= 3.25, Ninja, Catch2 (v2, Debian's
# package), OpenBLAS (the CPU convolutions and matrix products; a build
# without a BLAS refuses CPU convolutions), OpenMPI (syncbn::dist's process
# groups and mpirun for the multi-process tests), nlohmann-json (the
# safetensors header), zlib (gzip-compressed datasets) and Fashion-MNIST (Debian's dataset-fashion-mnist, which the data
# tests and the demo read). The CUDA toolkit is optional and never installed
# here: the build enables the CUDA backend where nvcc is found.
# Extra packages can be named as arguments (e.g. gnuplot-nox for the plots).
set -euo pipefail

packages=(cmake g++ ninja-build catch2 libopenblas-dev libopenmpi-dev openmpi-bin nlohmann-json3-dev zlib1g-dev dataset-fashion-mnist "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_deps: missing ${missing[*]}, and apt-get is not available: install them by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
