# Two commands for a newcomer:  make lab   (set up, open the course)   make test   (set up, run every test)
# Both create .venv with the project's pinned dependencies the first time. Needs Python 3.10+.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, by itself: on a machine without a GPU a CPU build is enough; override with
# `make TORCH=torch==2.13.0 ...` or any version within pyproject.toml's bounds.
TORCH  ?= torch==2.13.0
PYTEST_WORKERS ?= 2
# The triton of the lent H100 image, where every GPU figure was measured. `make test` installs it beside
# the project's (not imported by anything else) for the offline sm_90 compile tests of the Gluon kernel:
# register allocation, and so spills, differ between triton versions.
TRITON_H100 ?= triton==3.6.0
H100_TRITON_DIR := $(VENV)/triton-h100

.PHONY: lab test test-fast test-notebooks notebooks grade bench gpu-wheels clean

$(VENV)/.install-stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -c "import kernels; print('installed:', kernels.device.describe())"
	touch $@

lab: $(VENV)/.install-stamp
	$(BIN)/jupyter lab --notebook-dir=lessons $(if $(filter 0,$(shell id -u)),--allow-root)

# Everything CI runs: graded kernel tests, the drift, environment and mutant checks, then every
# notebook of lessons/ and solutions/ under nbval (solutions strictly: a wrong answer fails).
$(H100_TRITON_DIR)/.stamp: $(VENV)/.install-stamp
	$(BIN)/python -m pip install --quiet --no-deps --target $(H100_TRITON_DIR) "$(TRITON_H100)" \
	    || { rm -rf $(H100_TRITON_DIR); mkdir -p $(H100_TRITON_DIR); \
	         echo "no $(TRITON_H100) wheel here: the Gluon kernel's offline compile tests will skip"; }
	touch $@

test: $(VENV)/.install-stamp $(H100_TRITON_DIR)/.stamp
	KERNELS_H100_TRITON=$(H100_TRITON_DIR) $(BIN)/python -m pytest -ra -n $(PYTEST_WORKERS) --dist loadfile tests
	KERNELS_STRICT_CHECKS=1 $(BIN)/python -m pytest -ra -n $(PYTEST_WORKERS) --dist loadfile \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=900 --nbval-kernel-startup-timeout=300 \
	    -p no:cacheprovider lessons solutions

test-fast: $(VENV)/.install-stamp
	$(BIN)/python -m pytest -ra -n $(PYTEST_WORKERS) tests

test-notebooks: $(VENV)/.install-stamp
	KERNELS_STRICT_CHECKS=1 $(BIN)/python -m pytest -ra -n $(PYTEST_WORKERS) --dist loadfile \
	    --nbval-lax --nbval-current-env --nbval-cell-timeout=900 --nbval-kernel-startup-timeout=300 \
	    lessons solutions

# Regenerate lessons/ from solutions/ after editing a solution notebook.
notebooks: $(VENV)/.install-stamp
	$(BIN)/python -m kernels.grading.notebooks

# Grade a notebook or a folder of submissions:  make grade NB=path
grade: $(VENV)/.install-stamp
	$(BIN)/python -m kernels.grading $(NB)

bench: $(VENV)/.install-stamp
	$(BIN)/python -m kernels.bench

# Wheels for a GPU machine without network (Python 3.12, x86-64): carry .whl/ with the project and
# run tools/gpu_check.sh there.
GPU_PLATFORMS := $(foreach t,manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux1_x86_64 manylinux_2_5_x86_64 manylinux_2_24_x86_64,--platform $(t))
gpu-wheels: $(VENV)/.install-stamp
	grep -v '^#' tools/gpu_wheels.txt | xargs -n 1 $(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: \
	    --python-version 3.12 --implementation cp $(GPU_PLATFORMS) -d .whl

clean:
	rm -rf $(VENV) .pytest_cache
