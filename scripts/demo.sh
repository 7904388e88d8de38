#!/usr/bin/env bash
# Installs what is missing, builds the demo (the libraries and the demo's
# program only) and runs it: a short run of the ResNet demo on Fashion-MNIST
# (one epoch, about a minute on 2 cores), or with --mlp the MLP demo.
#   scripts/demo.sh [flags...]          ResNet demo; flags go to examples/resnet_fashion_mnist
#   scripts/demo.sh --mlp [flags...]    MLP demo; flags go to examples/train_demo
#   scripts/demo.sh --torch [flags...]  the ResNet in plain libtorch through the libtorch
#                                       bridge; flags go to examples/torch_resnet_fashion_mnist
#   scripts/demo.sh [--mlp] --help      the flags, without building anything
# BUILD_DIR (default build) is the build tree to use.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=resnet_fashion_mnist
if [[ $# -gt 0 && $1 == --mlp ]]; then
  demo=train_demo
  shift
elif [[ $# -gt 0 && $1 == --torch ]]; then
  demo=torch_resnet_fashion_mnist
  shift
fi
for arg in "$@"; do
  if [[ $arg == --help || $arg == -h ]]; then
    if [[ $demo == resnet_fashion_mnist ]]; then
      echo "scripts/demo.sh [flags]: a short run (--epochs 1) of resnet_fashion_mnist, whose flags follow;"
      echo "scripts/demo.sh --mlp [flags]: the MLP demo instead (scripts/demo.sh --mlp --help lists its flags)."
      echo
    fi
    if [[ $demo == torch_resnet_fashion_mnist ]]; then
      sed -n '/^constexpr const char\* kUsage/,/;$/p' "examples/$demo.cpp" | sed -n 's/^ *"\(.*\)\\n"[;]*$/\1/p'
      exit 0
    fi
    cat "examples/${demo}_usage.txt"  # the program prints the same text
    exit 0
  fi
done
build=${BUILD_DIR:-build}
scripts/install_deps.sh
scripts/build.sh "$build" --target "$demo"
if [[ $demo == resnet_fashion_mnist ]]; then
  # One epoch instead of the program's default three: the demo's first
  # impression in about a minute; a later --epochs wins.
  exec "$build/examples/resnet_fashion_mnist" --epochs 1 "$@"
fi
if [[ $demo == torch_resnet_fashion_mnist ]]; then
  exec "$build/examples/torch_resnet_fashion_mnist" "$@"
fi
exec "$build/examples/train_demo" "$@"
