# Two commands do all set-up on a fresh machine: `make submission` (the whole job on the embedded
# default competition) and `make test`. Everything else is a step of those.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
LEDGER := $(VENV)/bin/ledger
SPEC ?= experiments/fashion.yaml
DATA ?= data/fashion
SUBMISSION ?= submissions/fashion.csv

.PHONY: install install-ray test test-quick data probe train ensemble submission bench bench-peer gpu-check clean

# uv installs the locked CUDA-enabled torch + torchvision from PyPI (they run on CPU too) and ignores
# pip's configuration, so a local CPU-only torch wheel can never be picked; bytecode is compiled at
# install so every process (and each probe child) starts fast.
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml uv.lock
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	UV_COMPILE_BYTECODE=1 python3 -m uv sync --locked --group dev
	@touch $@

# The tests also cover the Ray executor, so they get the optional `ray` extra; `make submission`
# keeps the base install. Re-synced whenever the base install is newer (a plain sync removes Ray).
install-ray: $(VENV)/.installed-ray
$(VENV)/.installed-ray: $(VENV)/.installed
	UV_COMPILE_BYTECODE=1 python3 -m uv sync --locked --group dev --extra ray
	@touch $@

test: install-ray
	$(VENV)/bin/pytest -q

# The tests a developer runs in a minute or two: no end-to-end training, Ray or browser.
test-quick: install
	$(VENV)/bin/pytest -q -m "not slow and not ray and not browser"

$(DATA)/solution.csv: | install
	$(LEDGER) data fashion-mnist $(DATA) --train-per-class 1000 --test 2000 --force

data: $(DATA)/solution.csv

probe: data
	$(LEDGER) probe-memory $(SPEC)

train: data
	$(LEDGER) train $(SPEC)

ensemble:
	$(LEDGER) ensemble $(SPEC) --out $(SUBMISSION)

# The whole job in its own ledger folder, so that it bags exactly the runs it trained. On a CPU two
# runs train side by side (--jobs 2), each on its share of the cores, and the probe measures them so;
# on a GPU one run at a time has the card.
submission: data
	@set -e; home=runs/submission-$$(date +%Y%m%d-%H%M%S); \
	jobs=$$($(PYTHON) -c 'import torch; print(1 if torch.cuda.is_available() else 2)'); \
	echo "== ledger folder $$home, $$jobs run(s) at a time"; \
	$(LEDGER) probe-memory $(SPEC) --home $$home --jobs $$jobs; \
	$(LEDGER) train $(SPEC) --home $$home --jobs $$jobs; \
	$(LEDGER) ensemble $(SPEC) --home $$home --out $(SUBMISSION) --tune-weights; \
	$(LEDGER) runs --home $$home; \
	$(LEDGER) score $(SUBMISSION) $(DATA)/solution.csv; \
	echo "submission: $(SUBMISSION)"

bench: data
	$(PYTHON) bench/run.py

# Every CUDA claim on one GPU in about 5 minutes (bench/results/gpu.jsonl); one line and exit 0 without CUDA.
gpu-check: install
	$(PYTHON) bench/gpu_check.py

# fastai lives only in this benchmark's own environment, never in ledger's: same torch, torchvision and
# timm as .venv (read from it), so the two sides differ only in their own code; ledger is installed too
# because the fastai side loads the packaged lite0 weights through ledger.training.models' key map.
PEER_VENV := bench/.venv-peer
$(PEER_VENV)/.installed: pyproject.toml | install
	rm -rf $(PEER_VENV)
	python3 -m uv venv -q $(PEER_VENV) --python $(PYTHON)
	UV_COMPILE_BYTECODE=1 python3 -m uv pip install -q --python $(PEER_VENV)/bin/python "fastai==2.8.*" -e . \
		$$($(PYTHON) -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in ('torch', 'torchvision', 'timm')))")
	@touch $@

bench-peer: $(PEER_VENV)/.installed
	$(PYTHON) bench/bench_peer.py $(PEER_ARGS)

clean:
	rm -rf $(DATA) runs submissions
