# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export SECONDREAD_DATA ?= $(abspath ../shared/data)
# PyTorch's OpenMP threads busy-wait by default: on 2 shared cores that made a training step ~60x
# slower under load. Passive waiting changes no result, only who gets the CPU.
export OMP_WAIT_POLICY ?= PASSIVE
# torch 2.13.0 (CPU) is a wheel on this machine's disk; point pip at it when the folder exists.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: demo test test-llm models venv clean system-deps

# Real components the tests start (Orthanc with its DICOMweb plugin, dciodvfy, headless Chromium)
# come from Debian's packages; installed once, only those missing (needs root or sudo).
SYSTEM_PACKAGES := orthanc orthanc-dicomweb dicom3tools chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_FLAGS) -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/secondread demo --out demo-output

test: $(STAMP) system-deps
	$(PY) -m pytest -q

# The language-model tests against a real llama.cpp server: builds llama-cpp-python from source
# (about 10 minutes on 2 cores, cached by pip afterwards), so it is not part of `make test`, where
# those three tests skip and a scripted OpenAI-compatible server covers the same behaviour.
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_OPENMP=OFF
test-llm: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install --quiet $(PIP_FLAGS) -c constraints.txt -e '.[test,llm-test]'
	$(PY) -m pytest -q tests/test_llm.py

# Rebuilds the shipped model bundles from ../shared/data (training split only, fixed seeds).
ZOO := src/secondread/models/zoo
models: $(STAMP)
	$(VENV)/bin/secondread train --dataset pneumoniamnist --out $(ZOO)/pneumonia
	$(VENV)/bin/secondread train --dataset breastmnist --out $(ZOO)/breast-us-28
	$(VENV)/bin/secondread train --dataset adrenalmnist3d --out $(ZOO)/adrenal-ct-3d
	$(VENV)/bin/secondread train --dataset lgg --out $(ZOO)/brain-mri-tumour
	$(VENV)/bin/secondread train --dataset mini-mias --out $(ZOO)/mammo-abnormal
	$(PY) -m secondread.segment_train

clean:
	rm -rf $(VENV) demo-output .pytest_cache
