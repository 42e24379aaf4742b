#!/usr/bin/env bash
# Idempotent setup on a fresh Debian machine: Python venv in .venv, tocha with its dev extras
# (torch/torchvision pinned by constraints.txt), and the Fashion-MNIST Debian package when we can
# install it. Safe to run again: skips what is already done.
# `setup.sh --tests` (what scripts/test.sh runs) also installs what only the tests need: Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: no python3 found; install Python 3.11" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi

stamp=.venv/.tocha-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing tocha and its dependencies into .venv (first time: a few minutes)"
  # pip lists every local index folder it skips; those lines are noise, errors still show.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' 2>&1 \
    | { grep -v "^WARNING: Location 'file://" || true; }
  echo "$want" > "$stamp"
fi

# debian_package PACKAGE WHAT OTHERWISE: apt-get install PACKAGE (when root), else say what happens without it.
debian_package() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing the Debian package $1 ($2)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1") >/dev/null \
      || echo "setup: could not install $1; $3"
  else
    echo "setup: not root, cannot apt-get install $1; $3"
  fi
}

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (no download at run time).
[ -d /usr/share/datasets/fashion-mnist ] \
  || debian_package dataset-fashion-mnist "the default dataset" "tocha will fall back to the digits dataset"
# The default text corpus of `tocha train task=charlm`: the English files of Debian's fortunes package.
[ -d /usr/share/games/fortunes ] \
  || debian_package fortunes "default text for task=charlm" "task=charlm will need data.path=FILE"
# The report tests render report.html in headless Chromium; the quick start does not need it.
if [ "${1:-}" = --tests ] && [ ! -x /usr/bin/chromium ]; then
  debian_package chromium "headless rendering of report.html in the tests" "the report rendering tests will skip"
fi
