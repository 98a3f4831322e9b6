# q2-aam: `make demo` and `make test` set everything up first (`make setup`).
#
# Two ways to get QIIME 2:
#  - conda: run make with the QIIME 2 environment's Python active; setup installs
#    q2-aam into it (pip install -e .) and stops there.
#  - Debian 12+: setup installs Debian's QIIME 2 packages with apt, then makes
#    .venv (with the system site-packages, so Debian's QIIME 2 and pip's torch meet).
# A stamp file inside .venv makes a second `make setup` take no time.

PYTHON ?= python3
SYS_PYTHON := /usr/bin/python3
VENV := $(CURDIR)/.venv
STAMP := $(VENV)/.q2-aam-setup-done
CLI_CACHE := $(VENV)/.q2cli-cache-done
TORCH := torch==2.13.0
APT_PACKAGES := qiime q2cli q2-types q2-feature-table q2-diversity-lib \
	q2-sample-classifier q2templates python3-matplotlib python3-venv python3-tqdm \
	python3-sklearn
# pip must never replace these Debian builds: their compiled parts must match.
PINNED := numpy pandas scipy scikit-learn scikit-bio biom-format h5py
GALAXY_WHEEL := $(wildcard $(CURDIR)/../shared/wheels/q2galaxy-*.whl)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# "conda" when $(PYTHON) already imports qiime2 and is not our own .venv.
MODE := $(shell $(PYTHON) -c 'import os, sys, qiime2; \
	print("venv" if os.path.realpath(sys.prefix) == os.path.realpath("$(VENV)") else "conda")' \
	2>/dev/null || echo venv)
ifeq ($(MODE),conda)
PY := $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
else
PY := $(VENV)/bin/python
endif

.PHONY: setup test demo bench install clean

ifeq ($(MODE),conda)
setup:
	@if $(PY) -c 'import os, q2_aam; assert os.path.dirname(os.path.realpath(q2_aam.__file__)) == os.path.realpath("q2_aam")' 2>/dev/null; then \
		echo "q2-aam is already installed in $(PY)."; \
	else \
		echo "==> QIIME 2 found in $(PY): installing q2-aam into it (pip install -e .)"; \
		$(PY) -m pip install -e . && $(dir $(PY))qiime dev refresh-cache; \
	fi
	@# torch >= 2.9 wants setuptools >= 77; an unpinned upgrade drops pkg_resources, which
	@# QIIME 2 2024.x imports: keep setuptools below 81 (README, "Installing into ... conda")
	@$(PY) -c 'import torch' 2>/dev/null || { echo "==> Installing PyTorch (with setuptools<81, so that qiime keeps working)"; \
		$(PY) -m pip install torch "setuptools<81"; }
	@$(dir $(PY))qiime info >/dev/null 2>&1 || { echo "ERROR: 'qiime info' fails in this environment after installing q2-aam."; \
		echo "If it says No module named 'pkg_resources', run: $(PY) -m pip install 'setuptools<81'"; exit 1; }
else
setup: $(STAMP) $(CLI_CACHE)
endif

# q2cli caches the plugins' signatures per package version, which an editable install never
# changes: refresh it whenever the code that declares the actions changes.
$(CLI_CACHE): $(STAMP) q2_aam/plugin_setup.py q2_aam/_parameters.py $(wildcard q2_aam/actions/*.py)
	@echo "==> Refreshing the QIIME 2 command-line cache (q2cli)"
	@$(VENV)/bin/qiime dev refresh-cache
	@touch $@

$(STAMP): setup.py Makefile
	@command -v apt-get >/dev/null || { echo "ERROR: QIIME 2 was not found, and this is not a Debian system with apt-get."; \
		echo "Install QIIME 2 with conda (https://docs.qiime2.org), activate it, and run make again."; exit 1; }
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo "==> Debian's QIIME 2 packages are already installed."; \
	else \
		echo "==> Installing Debian's QIIME 2 packages with apt-get (this takes a few minutes)"; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $(APT_PACKAGES) \
		|| { echo "ERROR: apt-get could not install QIIME 2. Debian's QIIME 2 packages need Debian 12 (bookworm) or newer."; exit 1; }; \
	fi
	@$(SYS_PYTHON) -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null || { \
		echo "ERROR: $(SYS_PYTHON) must be Python 3.10 or newer; install Debian 12 (bookworm) or newer, or use conda."; exit 1; }
	@if [ ! -x $(VENV)/bin/python ]; then \
		echo "==> Creating the virtual environment .venv (it sees Debian's QIIME 2)"; \
		$(SYS_PYTHON) -m venv --system-site-packages $(VENV); \
	fi
	@echo "==> Pinning Debian's numpy, pandas, scipy, scikit-learn, scikit-bio, biom-format, h5py (.venv/constraints.txt)"
	@$(VENV)/bin/python -c 'import importlib.metadata as m; \
		[print(f"{n}=={m.version(n)}") for n in "$(PINNED)".split() if n in {d.metadata["Name"] for d in m.distributions()}]' \
		> $(VENV)/constraints.txt
	@echo "==> Installing PyTorch (CPU), TensorBoard, tqdm and pytest into .venv"
	$(VENV)/bin/python -m pip install -q -c $(VENV)/constraints.txt $(TORCH) tensorboard tqdm pytest
	@echo "==> Installing q2-aam itself (editable: changes to the code take effect at once)"
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	@# q2galaxy (Galaxy tool wrappers) is on neither PyPI nor Debian; the tests use it when
	@# the shared wheel is beside the checkout, and skip the Galaxy checks otherwise
	@if [ -n "$(GALAXY_WHEEL)" ]; then \
		echo "==> Installing q2galaxy from $(GALAXY_WHEEL) (for the Galaxy tests)"; \
		$(VENV)/bin/python -m pip install -q --no-deps $(GALAXY_WHEEL); \
	fi
	@echo "==> Writing .venv/bin/qiime (Debian's /usr/bin/qiime cannot see .venv)"
	@printf '#!%s\nimport sys\nfrom q2cli.__main__ import qiime\nsys.argv[0] = "qiime"\nsys.exit(qiime())\n' \
		"$(VENV)/bin/python" > $(VENV)/bin/qiime
	@chmod +x $(VENV)/bin/qiime
	@touch $@
	@echo "==> Setup done. Use it with: source .venv/bin/activate && qiime aam --help"

test: setup
	$(PY) -m pytest tests -q

demo: setup
	@if [ -f $(VENV)/bin/activate ] && [ "$(MODE)" = venv ]; then . $(VENV)/bin/activate; fi; bash demo/run.sh

bench: setup
	$(PY) benchmarks/run.py

# conda-build (recipe/meta.yaml): install into the build environment, no dependencies.
install:
	$(PYTHON) -m pip install --no-deps --no-build-isolation .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache demo-output bench-output
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
