# The README's two commands: `make demo` and `make test`. Each sets up what it needs.
# The torch/torchvision pair is pinned: it is the pair the tests ran against, and it matches the
# GPU image (torch 2.11 / torchvision 0.26). The machine's local CPU-only torch wheel has no
# torchvision that imports against it, so the pin also keeps pip from picking that wheel.
TORCH_VERSION ?= 2.11.0
TORCHVISION_VERSION ?= 0.26.0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.maskbench-installed

.PHONY: install demo test test-all clean

install: $(STAMP)

# Re-runs only when the venv is missing or pyproject.toml / this Makefile changed: a second
# `make install` with nothing changed does nothing.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"
	$(PY) -m pip install -q -e ".[dev]" "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"
	$(PY) -c "import torch, torchvision; assert torch.__version__.split('+')[0] == '$(TORCH_VERSION)', torch.__version__; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

# Every architecture's quickstart config on the synthetic default: train, evaluate, benchmark, then the leaderboard
# table (printed) and the AP-vs-FPS plot in results/quickstart/leaderboard/. Measured on a fresh clone with 2 idle
# CPU cores: 11 min 54 s, the venv install (about 1.5 min) included. A GPU is used when present.
demo: install
	$(VENV)/bin/maskbench quickstart

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) .pytest_cache
