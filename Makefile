# Two commands: `make demo` and `make test`. Both create .venv and install what they need.
# `make test-jazzy` runs the ROS-facing tests again on ROS 2 Jazzy's client libraries.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JAZZY_VENV := .venv-jazzy
JAZZY_PY := $(JAZZY_VENV)/bin/python
JAZZY_STAMP := $(JAZZY_VENV)/.installed
# The ROS-facing tests: node, many cameras, playback, compressed, signals, lifecycle, lazy serving
# and output QoS, launch (with its colcon build), live evaluation, and the rclpy shim.
JAZZY_TESTS := test/test_node.py test/test_node_multicam.py test/test_playback.py test/test_compressed.py \
	test/test_process_signals.py test/test_lifecycle.py test/test_node_lifecycle.py test/test_node_lazy_qos.py \
	test/test_colcon_build.py test/test_launch.py test/test_eval_live.py test/test_rclpy_compat.py \
	test/test_node_structure.py
# DDS stays on loopback; each run picks its own domain so parallel runs don't meet.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 100 + 1 )))
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-jazzy demo bench clean

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

# .venv-jazzy holds only the ros-jazzy-* wheels; a .pth line appends the main .venv's site-packages
# (Jazzy's ROS packages come first, torch and the rest are shared). colcon gets a launcher there
# so `colcon build` in the launch tests installs seg_node for this Python.
$(JAZZY_STAMP): requirements-jazzy.txt $(STAMP)
	rm -rf $(JAZZY_VENV)
	$(PYTHON) -m venv $(JAZZY_VENV)
	$(JAZZY_PY) -m pip install -q -r requirements-jazzy.txt
	site=$$($(JAZZY_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
	  $(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > $$site/zz_main_venv.pth
	printf '#!%s\nimport sys\nfrom colcon_core.command import main\nsys.exit(main())\n' \
	  "$(abspath $(JAZZY_PY))" > $(JAZZY_VENV)/bin/colcon && chmod +x $(JAZZY_VENV)/bin/colcon
	env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE $(JAZZY_PY) -c \
	  "import rclpy, torch, sys; assert rclpy.__file__.startswith(sys.prefix), rclpy.__file__"
	touch $(JAZZY_STAMP)

# The ROS wheels' bootstrapper re-executes Python with their library path unless told it already
# did: drop that marker, so a make started from another ROS Python still loads Jazzy's libraries.
test-jazzy: $(JAZZY_STAMP)
	env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE PYTHONPATH=$(CURDIR) $(JAZZY_PY) -m pytest -q $(JAZZY_TESTS)

demo: $(STAMP)
	$(VENV)/bin/seg-perception demo --out out/demo --weights synthetic_street

bench: $(STAMP)
	$(VENV)/bin/seg-perception bench --model regseg --size 512x1024 --device auto

clean:
	rm -rf $(VENV) $(JAZZY_VENV) out build install log *.egg-info
