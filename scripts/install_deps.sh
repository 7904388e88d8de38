#!/usr/bin/env bash
# Installs what syncbn needs to build and test on Debian/Ubuntu, only what is
# missing: a C++20 compiler, CMake >= 3.25, Ninja, Catch2 (v2, Debian's
# package), OpenBLAS (the CPU convolutions and matrix products; a build
# without a BLAS refuses CPU convolutions), oneDNN (the CPU convolutions'
# second engine, float32: libdnnl-dev, with ocl-icd-opencl-dev, which
# Debian's oneDNN CMake package requires though syncbn never runs OpenCL), OpenMPI (syncbn::distributed's process
# groups and mpirun for the multi-process tests), nlohmann-json (the
# safetensors header), zlib (gzip-compressed datasets) and Fashion-MNIST (Debian's dataset-fashion-mnist, which the data
# tests and the demo read) and libtorch (Debian's libtorch-dev, CPU only: the
# optional libtorch layer and its tests). The CUDA toolkit is optional and never installed
# here: the build enables the CUDA backend where nvcc is found.
# Extra packages can be named as arguments (e.g. gnuplot-nox for the plots).
set -euo pipefail

packages=(cmake g++ ninja-build catch2 libopenblas-dev libdnnl-dev ocl-icd-opencl-dev libopenmpi-dev openmpi-bin nlohmann-json3-dev zlib1g-dev dataset-fashion-mnist libtorch-dev "$@")
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
# On a fresh machine another package manager (unattended upgrades, a
# provisioning script) may hold dpkg's or apt's locks for minutes, and
# apt-get fails at once when it meets one (apt-get update does not honour
# DPkg::Lock::Timeout): wait for them, bounded, saying who holds them.
lock_timeout=${SYNCBN_APT_LOCK_TIMEOUT:-600}
apt_locks=${SYNCBN_APT_LOCKS:-"/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock"}
lock_holder() {  # "PID COMMAND PATH" of a process holding one of apt_locks; empty when none
  lslocks -n -r -o PID,COMMAND,PATH 2>/dev/null |
    awk -v locks="$apt_locks" 'BEGIN { n = split(locks, l, " "); for (i = 1; i <= n; i++) held[l[i]] = 1 }
                               ($3 in held) { print; exit }'
}
wait_for_apt_locks() {
  local waited=0 holder
  command -v lslocks >/dev/null 2>&1 || return 0  # apt's own timeout below still applies to dpkg's lock
  while holder=$(lock_holder) && [ -n "$holder" ]; do
    read -r pid command path <<<"$holder"
    if [ "$waited" -ge "$lock_timeout" ]; then
      echo "install_deps: $path is still held by process $pid ($command) after ${lock_timeout} s, expected it" \
           "free: let that package manager finish, or stop it, then run this again" \
           "(SYNCBN_APT_LOCK_TIMEOUT sets the wait in seconds)" >&2
      exit 1
    fi
    if [ "$waited" -eq 0 ]; then
      echo "install_deps: another package manager, process $pid ($command), holds $path; waiting up to" \
           "${lock_timeout} s for it"
    fi
    sleep 2
    waited=$((waited + 2))
  done
}

echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_options=(-o "DPkg::Lock::Timeout=${lock_timeout}")
wait_for_apt_locks
"${sudo[@]}" apt-get "${apt_options[@]}" update -qq
wait_for_apt_locks
"${sudo[@]}" apt-get "${apt_options[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
