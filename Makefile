# stormount: `make run` mounts the embedded default at ./mnt; `make test` runs the suite.
# Both install what is missing first (apt: fuse3 libfuse3-dev pkg-config; npm: azurite;
# a .venv with the package and its test extras).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUNDIR := $(CURDIR)/.run

.PHONY: install system-deps run test check fuzz bench clean install-systemd

install: system-deps $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

# A local-directory tier in .run/data with its cache in .run/cache, mounted at ./mnt in
# the foreground; Ctrl-C uploads what is pending and unmounts.
run: install
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
