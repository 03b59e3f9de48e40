# `make demo` and `make test` create .venv and install into it when needed, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-cluster demo demo-uda bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# the multi-node fault and autoscaling tests start Ray clusters of their own (minutes each):
# `make test-cluster` runs them, .ci/run runs both targets
CLUSTER_TESTS := node_faults or autoscaling

test: install
	$(PY) -m pytest -m "not ($(CLUSTER_TESTS))" $(PYTEST_ARGS)

test-cluster: install
	$(PY) -m pytest -m "$(CLUSTER_TESTS)" $(PYTEST_ARGS)

demo: install
	$(PY) jobs/pipeline.py --config configs/demo.yaml

# stage 2 (pseudo-labels + fine-tuning) on the demo city with two cameras only the test split sees
demo-uda: install
	$(PY) jobs/pipeline.py --config configs/demo.yaml --set uda.enabled=true --set run_dir=runs/demo-uda \
		--set data.root=data/synth-demo-newcams --set data.synth_options.test_only_cameras=2

bench: install
	for b in benchmarks/[!_]*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache
