# Quickstart: `make demo` and `make test`. Both create .venv when it is missing and install the project
# with the pinned versions in constraints.txt (torch 2.14.1 / torchvision 0.29.1: see README "Install").
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-all docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install --quiet -c constraints.txt opencv-contrib-python-headless  # selective search (cv2.ximgproc); after the project: both wheels provide cv2
	touch $(STAMP)

install: $(STAMP)

# The docs extra (mkdocs-material, mkdocstrings) on top of the test install: only `make docs` and the slow suite
# (its strict-build test) need it.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

# The guide and API reference site (mkdocs.yml, docs/) into site/; strict: a broken link or reference fails.
docs: $(DOCS_STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

demo: $(STAMP)
	$(BIN)/python -m tasks.demo

# The default suite (under 10 minutes on 2 cores); `slow` marks multi-process DDP runs and learning curves.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(DOCS_STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: test test-slow

clean:
	rm -rf $(VENV) runs data site .pytest_cache
