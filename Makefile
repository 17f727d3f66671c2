# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export SECONDREAD_DATA ?= $(abspath ../shared/data)
# torch 2.13.0 (CPU) is a wheel on this machine's disk; point pip at it when the folder exists.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: demo test models venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_FLAGS) -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/secondread demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q

# Rebuilds the shipped model bundles from ../shared/data (training split only, fixed seeds).
ZOO := src/secondread/models/zoo
models: $(STAMP)
	$(VENV)/bin/secondread train --dataset pneumoniamnist --out $(ZOO)/pneumonia
	$(VENV)/bin/secondread train --dataset breastmnist --out $(ZOO)/breast-us-28
	$(VENV)/bin/secondread train --dataset adrenalmnist3d --out $(ZOO)/adrenal-ct-3d

clean:
	rm -rf $(VENV) demo-output .pytest_cache
