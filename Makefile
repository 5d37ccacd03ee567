# Two commands do everything on a fresh clone: `make serve` and `make test` (`make test-fast`: the fast tier only).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 3000
# onnxruntime-gpu only where a GPU answers; the two onnxruntime wheels must never share an environment.
SERVE_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo serve-gpu || echo serve)
export BENTOML_DO_NOT_TRACK := true

.PHONY: setup serve train lint test test-fast bench bench-peers clean

setup: $(VENV)/.installed-$(SERVE_EXTRA)

$(VENV)/.installed-$(SERVE_EXTRA): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# A GPU appeared or went away: the other onnxruntime wheel must go first (both own the same module folder).
	@for f in $(VENV)/.installed-*; do [ ! -e "$$f" ] || [ "$$f" = "$@" ] || \
		$(PY) -m pip uninstall -q -y onnxruntime onnxruntime-gpu; done
	$(PY) -m pip install -q -e ".[train,$(SERVE_EXTRA),ray,test]"
	rm -f $(VENV)/.installed-*
	touch $@

train: setup
	$(PY) -m training train $(ARGS)

# Trains and promotes the default model only when artifacts/ has no current one, then serves it.
serve: setup
	$(PY) -m training train --if-no-current
	$(PY) -m cli serve --host 0.0.0.0 --port $(PORT)

# The linter (its rules: [tool.ruff] in pyproject.toml); .ci/run runs it before the tests.
lint: setup
	$(PY) -m ruff check .

# The fast tier: synthetic images and a tiny model trained in seconds; no ../shared data, no network, about a minute.
test-fast: setup
	$(PY) -m pytest -q -r s --durations=5 tests/fast $(PYTEST_ARGS)

# The fast tier, then the end-to-end tier: the real photos, real training, a real server (minutes).
test: test-fast
	$(PY) -m pytest -q -r s tests --ignore=tests/fast $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.bench_decode --json bench/results/decode.json
	$(PY) -m bench.bench_batch --json bench/results/batch.json
	$(PY) -m bench.bench_serving --json bench/results/serving.json

# This service beside BentoML's example pattern, LitServe, Ray Serve and TorchServe (their pins: the peers extra).
bench-peers: setup
	$(PY) -m pip install -q -e ".[peers]"
	$(PY) -m bench.bench_peers --json bench/results/peers.json

clean:
	rm -rf $(VENV) artifacts build
