# Two commands do all the set-up on a fresh machine:
#   make demo   build the default corpus + tokenizer + .bin/.idx, then train a small GPT
#   make test   run the whole test suite (unit + slow end-to-end)
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# DeepSpeed JIT-builds its ops into TORCH_EXTENSIONS_DIR. One directory per venv: checkouts
# sharing ~/.cache/torch_extensions rebuild each other's ops (the include paths differ), and a
# build killed mid-way leaves a lock that makes every later DeepSpeed process wait forever.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: venv demo test test-fast bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	# The CPU wheel of torch lies on disk; installing it first keeps pip from pulling
	# a multi-GB CUDA build for the torch range in pyproject.toml. On a GPU machine pass the
	# PyTorch index of the driver's CUDA: make venv TORCH_INDEX=https://download.pytorch.org/whl/cu128
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[test]'
	# Build DeepSpeed's JIT ops once, here, so no training run or test pays for it or races
	# another process building it: only those of the detected accelerator (mtds/ops.py; CPU:
	# shm comm + fused Adam, ~2 min on 2 cores; CUDA: FusedAdam if nvcc is there).
	$(BIN)/python -W ignore -m mtds.ops
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/deepspeed mtds/pretrain.py --deepspeed_config ds_configs/zero2.json --run-dir runs/demo

# Two pytest workers (pytest-xdist), a test module each at a time (--dist loadscope: a module's
# fixtures, e.g. its shared training runs or the local SLURM cluster, are built once): much of a
# test is process start-up and waiting, so two side by side fit 2 cores (bench/RESULTS.md).
# One OpenMP thread per process: two workers (and the ranks they launch) each spinning up torch's
# default of one thread per core oversubscribe 2 cores; measured on this tree, same machine, back to
# back: 813 s with it, 975 s without (bench/RESULTS.md, 2026-12-04).
test: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder tests

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs data
