# Two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DDS stays on loopback; each run picks its own domain so parallel runs don't meet.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 100 + 1 )))
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/seg-perception demo --out out/demo --weights synthetic_street

bench: $(STAMP)
	$(VENV)/bin/seg-perception bench --model regseg --size 512x1024 --device auto

clean:
	rm -rf $(VENV) out build install log *.egg-info
