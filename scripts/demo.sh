#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main demo.
#   scripts/demo.sh [demo flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh build
exec build/examples/train_demo "$@"
