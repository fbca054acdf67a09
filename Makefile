# osteo-platform: two commands do everything on a fresh machine.
#   make demo   -> set up .venv, run the main job on the demo profile
#   make test   -> set up .venv, run the test suite
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?= demo

.PHONY: demo test venv lock bench repro clean-data browser

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	OSTEO_PROFILE=$(PROFILE) $(BIN)/osteo demo

test: $(STAMP)
	@$(MAKE) -s browser || echo "could not install chromium (not root / no apt?): the MLflow UI browser test will be skipped"
	$(BIN)/python -m pytest -q

# Rebuild the pipeline with DVC (only what changed); the venv's tools on PATH.
repro: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

bench: $(STAMP)
	$(BIN)/python benchmarks/texture.py

# Headless Chromium + its driver from Debian, for the MLflow UI browser test (tests/e2e) and
# tools/mlflow_screenshot.py; needs root on Debian. Does nothing when both are already there.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then echo "chromium + chromedriver present"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; fi

# Re-resolve the pinned set from requirements.in (needs network to the registry).
lock:
	rm -rf /tmp/osteo-lock && $(PY) -m venv /tmp/osteo-lock
	/tmp/osteo-lock/bin/pip install -q -r requirements.in
	/tmp/osteo-lock/bin/pip check
	/tmp/osteo-lock/bin/pip freeze | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock

clean-data:
	rm -rf data mlruns mlflow.db .prefect reports models metrics
