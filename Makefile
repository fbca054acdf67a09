# osteo-platform: two commands do everything on a fresh machine.
#   make demo   -> set up .venv, run the main job (the profile of params.yaml: demo; PROFILE=tiny writes another)
#   make test   -> set up .venv, run the test suite except the long end-to-end cases (marker `slow`)
#   make test-slow -> the long end-to-end cases (flows, DVC, CLI subprocesses, servers); .ci/run runs both
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROFILE ?=
PKGS    := osteo osteo_config osteo_testing cohort features osteo_model registry data_checks flows screening

.PHONY: demo test test-slow test-all testdeps browserdeps venv lock bench repro clean-data browser orthanc doctools

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -r requirements.lock
	@# the project itself, built by the venv's setuptools (84.x: the lock's torch requires >= 77, pyproject.toml
	@# >= 68) instead of a fresh isolated build environment (9.7 -> 3.9 s)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@# bytecode on every core (pip compiles one file at a time: 104 s -> 69 s for the whole venv on 2 cores),
	@# except the dependencies' own test suites (18 % of their files, never imported here); as with pip, a
	@# dependency's file that does not compile (torch ships a Python-3.12-only test file) is not fatal; the
	@# project's own packages must compile
	$(BIN)/python -m compileall -q -j 0 -x '/tests?/' $(VENV)/lib > $(VENV)/compileall.log 2>&1 \
	  || echo "compileall: some dependency files did not compile (not fatal, as with pip): $(VENV)/compileall.log"
	$(BIN)/python -m compileall -q -j 0 $(PKGS)
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP)

# The profile is params.yaml's `profile:` key, which DVC tracks: `make demo PROFILE=tiny` writes it there
# (a visible one-line change of params.yaml) so dvc.lock records the profile the stages computed.
demo: $(STAMP)
	@if [ -n "$(PROFILE)" ]; then sed -i -E 's/^profile:[[:space:]]*[A-Za-z0-9_-]+/profile: $(PROFILE)/' params.yaml \
	  && echo "params.yaml: profile: $(PROFILE)"; fi
	env -u OSTEO_PROFILE $(BIN)/osteo demo

# Debian packages some tests need (installed when root + apt allow; otherwise those tests skip with a message).
# Chromium is only for the browser tests, which are all `slow`: `make test` does not pay its download.
testdeps:
	@$(MAKE) -s orthanc || echo "could not install orthanc (not root / no apt?): the PACS round-trip tests will be skipped"
	@$(MAKE) -s doctools || echo "could not install poppler-utils / dicom3tools (not root / no apt?): the PDF rendering and dciodvfy checks will be skipped"

test: $(STAMP) testdeps
	$(BIN)/python -m pytest -q -m "not slow"

browserdeps:
	@$(MAKE) -s browser || echo "could not install chromium (not root / no apt?): the MLflow UI browser test will be skipped"

test-slow: $(STAMP) testdeps browserdeps
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP) testdeps browserdeps
	$(BIN)/python -m pytest -q

# Rebuild the pipeline with DVC (only what changed); the venv's tools on PATH; the profile is params.yaml's.
repro: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH env -u OSTEO_PROFILE $(BIN)/dvc repro

bench: $(STAMP)
	$(BIN)/python benchmarks/texture.py

# Headless Chromium + its driver from Debian, for the MLflow UI browser test (tests/e2e) and
# tools/mlflow_screenshot.py; needs root on Debian. Does nothing when both are already there.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then echo "chromium + chromedriver present"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; fi

# Orthanc + its DICOMweb plugin from Debian, for the PACS tests (tests/screening/test_pacs*.py start their
# own Orthanc on free ports with a temporary storage); needs root on Debian. The packaged service is
# stopped again so that nothing stays on ports 8042/4242. Does nothing when both are already there.
orthanc:
	@if command -v Orthanc >/dev/null && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
	  echo "orthanc + orthanc-dicomweb present"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc orthanc-dicomweb \
	  && { service orthanc stop >/dev/null 2>&1 || true; }; fi

# pdftotext / pdftoppm (poppler-utils) and dciodvfy (dicom3tools) from Debian, for the screening report tests
# (the PDF renders, the SR validates); needs root on Debian. Does nothing when they are already there.
doctools:
	@if command -v pdftoppm >/dev/null && command -v pdftotext >/dev/null && command -v dciodvfy >/dev/null; then \
	  echo "poppler-utils + dicom3tools present"; \
	else apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q poppler-utils dicom3tools; fi

# Re-resolve the pinned set from requirements.in (needs network to the registry).
lock:
	rm -rf /tmp/osteo-lock && $(PY) -m venv /tmp/osteo-lock
	/tmp/osteo-lock/bin/pip install -q -r requirements.in
	/tmp/osteo-lock/bin/pip check
	/tmp/osteo-lock/bin/pip freeze | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock

clean-data:
	rm -rf data mlruns mlflow.db .prefect reports models metrics
