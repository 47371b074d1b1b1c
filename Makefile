# jaxsci: `make demo` and `make test` do all set-up themselves (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MPIRUN := $(VENV)/bin/mpirun

# mpi4jax builds from source; on machines where nvcc is on PATH without CUDA
# headers beside it, the build needs CUDA_PATH pointing at the real toolkit.
ifneq ($(shell command -v nvcc 2>/dev/null),)
ifneq ($(wildcard /usr/local/cuda),)
export CUDA_PATH ?= /usr/local/cuda
endif
endif

# One persistent XLA compilation cache shared by every test process.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.5
export MPLBACKEND ?= Agg

PYTEST := $(PY) -m pytest -p no:cacheprovider
# Unit tests in parallel processes, one test file per process (module fixtures and jit
# caches stay shared within a file). The suite is compile-bound: on the 2-core box 2
# workers took 12 min 41 s against 18 min 2 s in one process (cold compile cache, before
# the level-0 flag below).
TEST_WORKERS ?= 2
# Tests compile far more than they run, so XLA's CPU backend compiles them at LLVM
# optimisation level 0, added to the caller's XLA_FLAGS: unit tests 6 min 2 s against
# 9 min 48 s at the default level, multidevice 30 s against 67 s, mpi 45 s against 133 s
# (2-core box, cold compile cache, all passing both ways). `make demo` and the benchmarks
# keep the default level; `make test TEST_XLA_FLAGS=` tests at it.
# The CPU backend's legacy (elemental) emitters compile in about half the time of its MLIR
# fusion emitters: XLA compile time summed over the unit pass 480 s against 837 s (2 workers,
# cold cache); two test files interleaved A/B/A/B, 67 and 50 s against 127 and 82 s. Same
# programs, other rounding: one test's tolerance was measured under both (ePIE, ptycho tests).
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false
# One BLAS/OpenMP thread per test process: the workers, and the two MPI ranks, already fill
# the cores, and more threads per process only contend. SciPy's L-BFGS-B and numpy's linear
# algebra spin-waited on each other: 6 heavy test files took 4 min 50 s with one thread
# against 5 min 23-44 s with the defaults (2-core box, 2 workers, cold compile cache).
# XLA's kernels kept their threads: --xla_cpu_multi_thread_eigen=false gained little, and
# one run with it aborted a worker while serialising an executable for the compile cache.
# `make test TEST_THREADS=` keeps the libraries' defaults.
TEST_THREADS ?= 1
test_env = $(if $(TEST_THREADS),OMP_NUM_THREADS=$(TEST_THREADS) OPENBLAS_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS))
# The unit pass prints its 25 slowest steps (set-ups included): what to trim when the suite
# nears the CI budget of 15 minutes.
# Every pass fails on any non-zero exit, 5 ("no tests ran") included: each marker selects
# tests, and pytest-xdist reports 5 when every worker crashed before running one.
# The caller's XLA_FLAGS (make reads the environment) plus $(1), trimmed: XLA takes a value
# of only spaces for a file name and aborts.
xla_flags = XLA_FLAGS="$(strip $(XLA_FLAGS) $(1))"

# The multidevice and mpi passes collect only the test files that use their marker:
# collecting every file imports every test module, ~10 s per process.
MULTIDEVICE_FILES = $(shell grep -lE 'mark\.multidevice' tests/test_*.py)
MPI_FILES = $(shell grep -lE 'mark\.mpi\b' tests/test_*.py)

.PHONY: demo test test-unit test-multidevice test-mpi lint bench cgan clean setup

setup: $(STAMP)

# mpi4jax is built against the venv's own jax, mpi4py and nanobind (no isolated build
# environment to download and unpack jax, jaxlib and numpy into), its extensions compiled
# two at a time: 22 s against 52 s (2-core box, cold pip cache). Should that fail (another
# build backend in a later mpi4jax), the plain build runs.
MPI4JAX_ENV = MPI4JAX_BUILD_MPICC=$(CURDIR)/$(VENV)/bin/mpicc PATH=$(CURDIR)/$(VENV)/bin:$$PATH
MPI4JAX_FAST = --no-build-isolation -C--build-option=build_ext -C--build-option=-j2

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]' mpich 'mpi4py>=4' nanobind
	$(MPI4JAX_ENV) $(PY) -m pip install -q $(MPI4JAX_FAST) 'mpi4jax>=0.8' \
	  || $(MPI4JAX_ENV) $(PY) -m pip install -q 'mpi4jax>=0.8'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.pt_nanoparticles.run

test: $(STAMP)
	$(MAKE) --no-print-directory test-unit test-multidevice test-mpi

test-unit: $(STAMP)
	$(test_env) $(call xla_flags,$(TEST_XLA_FLAGS)) $(PYTEST) -m "not multidevice and not mpi" -n $(TEST_WORKERS) --dist loadfile --durations=25

test-multidevice: $(STAMP)
	$(test_env) $(call xla_flags,--xla_force_host_platform_device_count=4 $(TEST_XLA_FLAGS)) $(PYTEST) -m multidevice $(MULTIDEVICE_FILES)

test-mpi: $(STAMP)
	$(test_env) $(call xla_flags,$(TEST_XLA_FLAGS)) timeout 900 $(MPIRUN) -n 2 $(PYTEST) -m mpi -q $(MPI_FILES)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

cgan: $(STAMP)
	$(PY) -m experiments.cgan_digits.run

clean:
	rm -rf $(VENV) .cache build *.egg-info
