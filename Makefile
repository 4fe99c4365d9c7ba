# nmip-agent developer entry points. `make test` works on a bare Debian machine:
# it installs the Debian packages and the virtualenv the suite needs, then runs it.

PYTHON      ?= python3
VENV        := .venv
VENV_STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# `make run` starts the agent on the bundled example config (SQLite, a local spool under var/);
# send it a study from another terminal with the command the README gives.
RUN_ARGS    ?= serve --config config.example.yaml

.PHONY: test run bench clean debian-packages venv

test: debian-packages $(VENV_STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

run: $(VENV_STAMP) var/site.key
	$(VENV)/bin/nmip-agent $(RUN_ARGS)

var/site.key: | $(VENV_STAMP)
	mkdir -p -m 700 var
	$(VENV)/bin/nmip-agent keys init --key-file $@

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
