# Two commands do all set-up from a fresh clone:
#   make demo   creates .venv if needed, installs, runs the demo sweep (orchestration/sweep.py)
#   make test   creates .venv if needed, installs, runs the tests
# GPU machines: create .venv with your CUDA torch already in it and set TORCH_SPEC= (empty)
# so the CPU pin is not installed over it; `make gpu-wheel` packs mamba-ssm for one with no package index.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= --durations=20

# mamba-ssm as pinned by the `gpu` extra, for `make gpu-wheel`.
MAMBA_SPEC := $(shell grep -o 'mamba-ssm==[^"]*' pyproject.toml)

.PHONY: install test demo clean gpu-wheel

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

# A GPU machine with no package index (the benchmarks' CUDA suite): mamba-ssm as a pure-Python wheel in .whl/
# (its SSD kernels are Triton, so no CUDA build); install it there with `pip install --no-deps .whl/*.whl`.
gpu-wheel: install
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(PY) -m pip wheel -q --no-deps --no-build-isolation \
		"$(MAMBA_SPEC)" -w .whl
	@ls .whl/*.whl

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
