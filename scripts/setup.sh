#!/usr/bin/env bash
# Set up trp-zoo on a fresh machine: the Fashion-MNIST data set (Debian package) and a
# virtual environment (.venv) with the package, its ONNX Runtime extra and the dev tools.
# Safe to re-run. Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

if [ ! -f "$FMNIST" ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
  else
    echo "warning: Fashion-MNIST is missing; run 'sudo apt-get install dataset-fashion-mnist'" \
         "or set FASHION_MNIST_DIR to a directory holding its IDX files" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[onnx,dev]"
# TensorRT's type stubs, for mypy over the TensorRT backend (pyproject's mypy_path); --no-deps
# because their declared dependency (tensorrt itself) only installs from NVIDIA's own index.
# They go to typings/, not the venv: they ship no py.typed, so mypy reads them only through
# mypy_path, and outside the venv they cannot pass for an installed tensorrt.
TRT_STUBS="tensorrt-stubs==10.13.0.35.1"
if [ ! -f typings/tensorrt/__init__.pyi ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target typings "$TRT_STUBS"
  # two generator slips in those stubs are Python syntax errors (plugin methods with a
  # parameter named `in`, and a required parameter after defaults in add_scale_nd)
  sed -i -E 's/([(,] *)in: list/\1in_: list/; s/power: Weights = None, channel_axis: int\)/power: Weights = None, channel_axis: int = ...)/' \
    typings/tensorrt_bindings/tensorrt.pyi
fi
