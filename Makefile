# `make demo` and `make test` create .venv and install into it when needed, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-cluster demo demo-uda demo-recrop bench clean

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

# the demo with 003's weakly supervised re-crop: an initial BoT model (r18-init) gives the heatmap boxes,
# the ensemble's models train on original + cropped images and are extracted with 003's four TTA views
DEMO_INIT := {name: r18-init, backbone: resnet18, input_size: [64, 64], scaling: {num_workers: 1, cpus_per_worker: 0.5}, \
	recipe: [{name: stage1, epochs: 4, optimizer: adam, lr: 1.0e-3, p: 8, k: 4, milestones: [3], \
	augment: {shrink_p: 0.5, background_p: 0.5}}]}
demo-recrop: install
	$(PY) jobs/pipeline.py --config configs/demo.yaml --set run_dir=runs/demo-recrop \
		--set recrop.enabled=true --set recrop.model=r18-init --set 'models.4=$(DEMO_INIT)' \
		--set 'models.0.recipe.0.domains=[real, crop]' --set 'models.1.recipe.0.domains=[real, crop]' \
		--set 'extract.tta=[original, flip, heatmap_crop, heatmap_crop_flip]'

bench: install
	for b in benchmarks/[!_]*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache
