# nmip-agent developer entry points. `make test` works on a bare Debian machine:
# it installs the Debian packages and the virtualenv the suite needs, then runs it.

PYTHON      ?= python3
VENV        := .venv
VENV_STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# What `make run` passes to nmip-agent. The daemon comes in a later issue; then
# this line becomes: RUN_ARGS ?= serve --config config.example.yaml
RUN_ARGS    ?= --help

.PHONY: test run bench clean debian-packages venv

test: debian-packages $(VENV_STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

run: $(VENV_STAMP)
	$(VENV)/bin/nmip-agent $(RUN_ARGS)

bench: $(VENV_STAMP)
	$(VENV)/bin/python bench/deid.py

# Always runs: the script itself is a no-op (no apt, no sudo) when all is installed.
debian-packages:
	scripts/install-debian-packages.sh

venv: $(VENV_STAMP)

# Reinstalled only when the dependencies change; the stamp is written last so a
# failed pip run is retried next time.
$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) var/
