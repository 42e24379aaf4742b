#!/usr/bin/env bash
# Set up, then run the whole test suite (fast tests first, then the slow end-to-end checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
# Lint and format first: a failure here is cheap to find (ruff's configuration is in pyproject.toml).
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/python -m pytest -m "not slow" "$@"
if [ "${TOCHA_SKIP_SLOW:-0}" != 1 ]; then
  .venv/bin/python -m pytest -m slow "$@"
fi
