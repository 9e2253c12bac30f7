# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: demo test lint docs bench bench-scale bench-explore gpu-check fuzz clean-runs

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	# torch/torchvision first and pinned: pip takes them from the local wheel cache when present
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev]"
	# the viewer's pinned Leaflet, from the npm registry, checked against its sha512
	$(PY) atlas_core/compose/vendor.py
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/atlas run_dir=runs/demo
	@echo "atlas: runs/demo/atlas.png  viewer: runs/demo/viewer/index.html  manifest: runs/demo/manifest.json"

test: $(STAMP)
	@.ci/chromium
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check atlas_core pipelines tests benchmarks
	$(VENV)/bin/ruff format --check atlas_core pipelines tests benchmarks
	$(VENV)/bin/mypy

# the documentation site (mkdocs.yml, pages under docs/) into site/: open site/index.html.
# --strict: a broken link, a missing anchor or a page outside the navigation fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site
	@echo "docs: site/index.html"

bench: $(STAMP)
	# the render peer is the real torch-lucent (its pins are from 2020: install it without deps)
	$(PY) -m pip install decorator kornia ipython
	$(PY) -m pip install --no-deps torch-lucent==0.1.8
	$(PY) -m benchmarks.run

# the R3 shape at three sizes (10k, 50k, 200k images; SCALE_SIZES to change): growth exponents
# and the projection to ImageNet, in benchmarks/results/scale.json (tens of minutes on 2 cores)
bench-scale: $(STAMP)
	$(PY) -m benchmarks.scale_bench

# On a GPU machine: every GPU-marked test and every GPU figure in one JSON
# (benchmarks/results/gpu.json), over the python and torch already installed there; nothing is
# installed or downloaded (a missing package is recorded as skipped, with what to carry).
gpu-check:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m benchmarks.gpu_check

# the decoder's fuzzing test, long: ATLAS_FUZZ_EXAMPLES mutated images (make test runs a few
# hundred); figures (files tried, count per status, crashes) in benchmarks/results/fuzz.json
FUZZ_EXAMPLES ?= 200000
fuzz: $(STAMP)
	ATLAS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ATLAS_FUZZ_REPORT=benchmarks/results/fuzz.json \
		$(PY) -m pytest -q -p no:cacheprovider -o log_cli=true -o log_cli_level=INFO \
		--timeout=0 tests/data/test_fuzz.py

# the explorer at 100k and 1M samples in headless chromium (a synthetic store composed by the
# real compose stage): open, points, lasso, heap; benchmarks/results/explore.json
bench-explore: $(STAMP)
	$(PY) -m benchmarks.explore_bench

clean-runs:
	rm -rf runs
