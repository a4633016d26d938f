# Quickstart: `make demo` and `make test`. Both create .venv when it is missing and install the project
# with the pinned versions in constraints.txt (torch 2.14.1 / torchvision 0.29.1: see README "Install").
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-all clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install --quiet -c constraints.txt opencv-contrib-python-headless  # selective search (cv2.ximgproc); after the project: both wheels provide cv2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tasks.demo

# The default suite (under 10 minutes on 2 cores); `slow` marks multi-process DDP runs and learning curves.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: test test-slow

clean:
	rm -rf $(VENV) runs data .pytest_cache
