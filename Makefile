# stormount: `make run` mounts the embedded default at ./mnt; `make test` runs the suite.
# Both install what is missing first: `run` the apt packages a mount needs (fuse3
# libfuse3-dev pkg-config gcc) and a .venv with the package; the rest also the test tools
# (npm: azurite; the package's test extras).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# one stamp per install: `run` needs the package alone, the rest its test extras too;
# a test install serves `run` as well, so it leaves both stamps
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
RUNDIR := $(CURDIR)/.run

.PHONY: install install-run system-deps runtime-deps run test check fuzz bench clean install-systemd

install: system-deps $(TEST_STAMP)

# what a mount needs: FUSE and what builds pyfuse3, not Azurite or the test tools
install-run: runtime-deps $(RUN_STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

runtime-deps:
	@bash scripts/install-system-deps.sh --runtime

$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(TEST_STAMP) $(RUN_STAMP)

# A local-directory tier in .run/data with its cache in .run/cache, mounted at ./mnt in
# the foreground; Ctrl-C uploads what is pending and unmounts.
run: install-run
	@mkdir -p $(RUNDIR)/data $(RUNDIR)/cache mnt
	$(BIN)/stormount mount file://$(RUNDIR)/data mnt --cache-dir $(RUNDIR)/cache --foreground

test: install
	$(BIN)/pytest

# Every fuzz of the suite (tests/**/test_fuzz_*.py: options, config files and command
# lines; objects in the store through the namespace and the storage commands; control
# socket requests and ctl command lines) with 100
# times the examples `make test` runs (FUZZ_SCALE=N to change it).
FUZZ_SCALE ?= 100
FUZZ_TESTS = $(shell find tests -name 'test_fuzz_*.py' | sort)
fuzz: install
	STORMOUNT_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/pytest -p no:cacheprovider --timeout=0 \
		$(FUZZ_TESTS)

check: install
	$(BIN)/ruff check stormount tests
	$(BIN)/mypy
	$(BIN)/lint-imports

# As root: a venv in /opt/stormount, /usr/local/bin/stormount, /sbin/mount.stormount (for
# mount -t stormount and fstab), the stormount@.service template and the docs
# (docs/OPERATIONS.md). DESTDIR=DIR with STORMOUNT_VENV=VENV stages the files under DIR.
install-systemd:
	@bash scripts/install-system-deps.sh --runtime
	@bash scripts/install-systemd.sh

# The benchmark suite (benchmarks/, see benchmarks/results/README.md): installs fio,
# rclone and s3fs when missing, then measures stormount beside boto3, local files, rclone
# and s3fs in one run (~18 min). `make bench ARGS=--quick` is a ~6 min smoke run.
bench: install
	@bash benchmarks/install-tools.sh
	$(BIN)/python benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
