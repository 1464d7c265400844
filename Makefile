# Two commands on a fresh machine: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output
# Tests and benchmarks share 2 cores here: pytest-xdist splits test files across them.
PYTEST_ARGS ?= -n 2 --dist loadfile
# The CPU build tested here. GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install lint test demo gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock requirements-spconv.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q -r requirements-dev.lock
	$(PY) -m pip install -q --no-deps -r requirements-spconv.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Style (ruff), layers (import-linter, the contract of docs/ARCHITECTURE.md) and types (mypy); configured in
# pyproject.toml. Each exits non-zero on a finding, which fails `make test`.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: $(STAMP) lint
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests, which counts as a failure"; exit 1; fi; \
	exit $$rc

demo: $(STAMP)
	$(VENV)/bin/slidr demo --out $(DEMO_OUT)

# On a CUDA machine, with its own Python and CUDA torch (not the CPU venv above): installs slidr with --no-deps and
# runs bench sparse, loss and step on the GPU in under 8 minutes (README, "GPU check").
GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= gpu_check
gpu-check:
	PYTHON=$(GPU_PYTHON) scripts/gpu_check.sh --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
