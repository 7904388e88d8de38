#!/usr/bin/env bash
# Installs what is missing, builds the demo (the libraries and train_demo
# only) and runs it.
#   scripts/demo.sh [demo flags...]      scripts/demo.sh --help lists them
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
  if [[ $arg == --help || $arg == -h ]]; then
    cat examples/train_demo_usage.txt  # the demo prints the same text
    exit 0
  fi
done
scripts/install_deps.sh
scripts/build.sh build --target train_demo
exec build/examples/train_demo "$@"
