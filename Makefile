# manifoldadv: setup, demo, test, bench. Everything runs inside .venv (created by `make setup`).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
PY     := $(BIN)/python
CSRC   := $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cpp csrc/cuda/*.cu csrc/cuda/*.h csrc/cuda/*.cuh)
NVCC   ?= $(shell command -v nvcc 2>/dev/null)
CUDA_ARCHS ?= 80 90
PYTEST_ARGS ?=

.PHONY: setup demo test bench cuda-check clean distclean

setup: $(VENV)/.built

# torch is pinned first so that nothing later resolves an unpinned torch (a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" ninja "setuptools>=64" wheel
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	@touch $@

# Rebuild only the extension (incrementally, with ninja) when its sources change.
$(VENV)/.built: $(VENV)/.installed setup.py $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

demo: setup
	$(BIN)/manifoldadv reproduce --data synthetic --quick --run-dir runs/demo

test: setup cuda-check
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Compile every .cu for sm_80 and sm_90 whenever nvcc exists, even without a GPU.
cuda-check:
ifeq ($(NVCC),)
	@echo "cuda-check: nvcc not found, skipped"
else
	@mkdir -p build/cuda-check
	@for f in $(wildcard csrc/cuda/*.cu); do \
		echo "nvcc -c $$f (sm_$(subst $() ,/sm_,$(CUDA_ARCHS)))"; \
		$(NVCC) -std=c++17 -O3 -Icsrc/cuda $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
			-c $$f -o build/cuda-check/$$(basename $$f .cu).o || exit 1; \
	done
endif

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf build manifoldadv/*.so .pytest_cache
	rm -f $(VENV)/.built

distclean: clean
	rm -rf $(VENV) *.egg-info
