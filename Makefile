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
# Tests run on one thread each (tests/conftest.py): one worker per core, whole files per worker
# (their module fixtures are built once).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
BENCH_ARGS ?=

.PHONY: setup demo test bench cuda-check gpu-check clean distclean

setup: $(VENV)/.built

# torch is pinned first so that nothing later resolves an unpinned torch (a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" ninja "setuptools>=64" wheel
	$(PY) -m pip install -q --no-build-isolation -e '.[test,eval]'
	@touch $@

# Rebuild only the extension (incrementally, with ninja) when its sources change.
$(VENV)/.built: $(VENV)/.installed setup.py $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

demo: setup
	$(BIN)/manifoldadv reproduce --data synthetic --quick --run-dir runs/demo

# Compiled modules first: where PYTHONDONTWRITEBYTECODE is set (these machines set it), each of
# the suite's python processes would otherwise compile the package again (0.6 s a start).
test: setup cuda-check
	@$(PY) -m compileall -q manifoldadv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Compile every .cu for sm_80 and sm_90 whenever nvcc exists, even without a GPU (with the
# half/bfloat16 flags torch's CUDAExtension passes). Then, when the venv's torch headers are
# there, syntax-check the torch glue csrc/cuda/*_cuda.cpp against them and the CUDA runtime
# headers (a CPU torch lacks one generated CUDA header; a one-line stub stands in for it).
TORCH_INC = $(wildcard $(VENV)/lib/python3*/site-packages/torch/include)
CUDA_RT_H = $(firstword $(wildcard $(CUDA_HOME)/include/cuda_runtime.h /usr/local/cuda/include/cuda_runtime.h \
	$(dir $(realpath $(NVCC)))../include/cuda_runtime.h))
CUDA_INC  = $(patsubst %/,%,$(dir $(CUDA_RT_H)))
CUDA_TORCH_FLAGS = -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
	-D__CUDA_NO_HALF2_OPERATORS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
# Each object and each glue check is a file: a rerun redoes only what changed, and the sub-make
# runs them side by side (nvcc is single-threaded; serially they took 27 s of a 2-core machine).
CU_DEPS  = $(wildcard csrc/*.h csrc/cuda/*.h csrc/cuda/*.cuh)
CU_OBJS  = $(patsubst csrc/cuda/%.cu,build/cuda-check/%.o,$(wildcard csrc/cuda/*.cu))
CU_GLUE  = $(if $(and $(TORCH_INC),$(CUDA_INC)),$(patsubst csrc/cuda/%.cpp,build/cuda-check/%.ok,$(wildcard csrc/cuda/*_cuda.cpp)))
CU_STUB  = build/cuda-check/stub.ok
cuda-check:
ifeq ($(NVCC),)
	@echo "cuda-check: nvcc not found, skipped"
else
	@$(MAKE) -s --no-print-directory -j$(TEST_WORKERS) $(CU_OBJS) $(CU_GLUE)
endif

build/cuda-check/%.o: csrc/cuda/%.cu $(CU_DEPS)
	@mkdir -p $(@D)
	@echo "nvcc -c $< (sm_$(subst $() ,/sm_,$(CUDA_ARCHS)))"
	@$(NVCC) -std=c++17 -O3 -Icsrc/cuda $(CUDA_TORCH_FLAGS) $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
		-c $< -o $@.tmp && mv $@.tmp $@

$(CU_STUB): $(VENV)/.installed
	@mkdir -p build/cuda-check/stub/c10/cuda/impl
	@test -f $(TORCH_INC)/c10/cuda/impl/cuda_cmake_macros.h || \
		printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > build/cuda-check/stub/c10/cuda/impl/cuda_cmake_macros.h
	@touch $@

build/cuda-check/%_cuda.ok: csrc/cuda/%_cuda.cpp $(CU_DEPS) $(CU_STUB)
	@echo "c++ -fsyntax-only $< (torch glue)"
	@$(CXX) -std=c++20 -fsyntax-only -Wall -Wno-unknown-pragmas -Ibuild/cuda-check/stub -I$(TORCH_INC) \
		-I$(TORCH_INC)/torch/csrc/api/include -I$(CUDA_INC) -Icsrc -Icsrc/cuda \
		-DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -DMANIFOLDADV_WITH_CUDA $<
	@touch $@

# torchattacks, the attack rows' outside reference, lives in $(VENV)/bench-deps only (not a
# dependency, not on the package's path; --no-deps: it imports without torchvision, which the CPU
# wheel lacks). The bench never calls its checkpoint loaders.
$(VENV)/bench-deps/torchattacks:
	$(PY) -m pip install -q --no-deps --target $(VENV)/bench-deps torchattacks==3.5.1 || echo "torchattacks unavailable: its row is skipped"

bench: setup $(VENV)/bench-deps/torchattacks
	$(PY) bench/run.py $(BENCH_ARGS)

# On a CUDA machine whose python already has torch with CUDA (no venv there): build, CUDA tests,
# the suite, kernel and training timings; see bench/gpu_check.py. GPU_CHECK_ARGS=--dry-run runs
# the tiny CPU version (the suite runs it too).
GPU_PY ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf build manifoldadv/*.so .pytest_cache
	rm -f $(VENV)/.built

distclean: clean
	rm -rf $(VENV) *.egg-info
