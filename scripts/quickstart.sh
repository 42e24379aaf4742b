#!/usr/bin/env bash
# Quick start: set up, then train the embedded default (seed CNN on Fashion-MNIST) and print the report path.
# Extra arguments go to `tocha train`, e.g.  bash scripts/quickstart.sh epochs=2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -d /usr/share/datasets/fashion-mnist ]; then
  exec .venv/bin/tocha train "$@"
fi
echo "quickstart: Fashion-MNIST is not installed (needs root for apt-get); training on scikit-learn's digits instead"
exec .venv/bin/tocha train data=digits "$@"
