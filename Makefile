# Two commands do all set-up from a fresh clone:
#   make demo   creates .venv if needed, installs, runs the demo sweep (orchestration/sweep.py)
#   make test   creates .venv if needed, installs, runs the tests
# GPU machines: create .venv with your CUDA torch already in it and set TORCH_SPEC= (empty)
# so the CPU pin is not installed over it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= --durations=20

.PHONY: install test demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) orchestration/sweep.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
