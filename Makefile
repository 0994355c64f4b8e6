# Two commands set up a fresh machine and do the work (see README):
#   make run    - pretrain (SLidR, CPU-sized config) on the embedded synthetic bag
#   make samples - build training samples from the embedded bag and report them
#   make test   - the whole test suite (real-data fixtures from ../shared/fixtures)
# Both create or reuse the virtual environment in $(VENV).

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# CPU torch from the machine's local wheel; on a GPU machine the same pin pulls the CUDA build.
TORCH ?= torch==2.13.0

CONFIG ?= configs/cpu_demo.yaml

.PHONY: venv run samples test lint bench clean-venv lock

venv: $(STAMP)

# Every install is pinned by constraints.txt so a fresh machine gets the versions the tests passed with.
CONSTRAINTS := constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -c $(CONSTRAINTS) "$(TORCH)"
	$(PIP) install -q --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev,ros]'
	# the ROS 2 package's nodes as console scripts (colcon builds the same package on a ROS machine)
	$(PIP) install -q --disable-pip-version-check --no-deps -e ros2_ws/src/lidar_ssl
	# nuscenes-devkit pins numpy<2 but runs on numpy 2: its dependencies come from the dev extra
	$(PIP) install -q --disable-pip-version-check -c $(CONSTRAINTS) --no-deps 'nuscenes-devkit>=1.1'
	touch $(STAMP)

# Re-resolve the newest versions into a scratch venv and rewrite constraints.txt: run on purpose, then
# run `make test` against the new pins before committing them.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check "$(TORCH)"
	.lock-venv/bin/pip install -q --disable-pip-version-check -e '.[dev,ros]'
	.lock-venv/bin/pip install -q --disable-pip-version-check --no-deps 'nuscenes-devkit>=1.1'
	{ echo "# Pinned versions of everything the tests depend on; make installs with -c constraints.txt."; \
	  echo "# Refresh on purpose: make lock (after checking the suite passes with the new versions)."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^lidar-ssl' | sed 's/+cpu$$//'; } > $(CONSTRAINTS)
	rm -rf .lock-venv

run: $(STAMP)
	$(VENV)/bin/lidar-ssl pretrain --config $(CONFIG) $(ARGS)

samples: $(STAMP)
	$(VENV)/bin/lidar-ssl samples $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check lidar_ssl_core tests benchmarks ros2_ws/src/lidar_ssl
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_superpixels.py
	$(PY) benchmarks/bench_dataset.py
	$(PY) benchmarks/bench_hot_paths.py
	$(PY) benchmarks/bench_convert.py

clean-venv:
	rm -rf $(VENV)
