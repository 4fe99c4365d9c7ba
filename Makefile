# nmip-agent developer entry points. `make test` works on a bare Debian machine:
# it installs the Debian packages and the virtualenv the suite needs, then runs it.

PYTHON      ?= python3
VENV        := .venv
VENV_STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# `make run` starts the agent on the bundled example config (SQLite, a local spool under var/);
# send it a study from another terminal with the command the README gives.
RUN_ARGS    ?= serve --config config.example.yaml

.PHONY: test run send-sample status bench bench-pixels clean debian-packages venv deb deb-check deb-tools

test: debian-packages $(VENV_STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

run: $(VENV_STAMP) var/site.key
	$(VENV)/bin/nmip-agent $(RUN_ARGS)

var/site.key: | $(VENV_STAMP)
	mkdir -p -m 700 var
	$(VENV)/bin/nmip-agent keys init --key-file $@

# From another terminal while `make run` is up: send a public sample CT as the PACS would, then
# look at the agent's state (the study is de-identified once the quiet period, 60 s, has passed).
SAMPLE = $$($(VENV)/bin/python -c "from pydicom.data import get_testdata_file as g; print(g('CT_small.dcm'))")
# DCMTK's storescu when it is installed (Debian: dcmtk), else pynetdicom's, from the virtualenv.
send-sample: $(VENV_STAMP)
	@if [ -x /usr/bin/storescu ]; then \
		TCP_NODELAY=1 /usr/bin/storescu -v -aet STORESCU -aec NMIP_AGENT 127.0.0.1 11112 $(SAMPLE); \
	else \
		$(VENV)/bin/python -m pynetdicom storescu -v -aet STORESCU -aec NMIP_AGENT 127.0.0.1 11112 $(SAMPLE); \
	fi

status: $(VENV_STAMP)
	$(VENV)/bin/nmip-agent status --config config.example.yaml

bench: $(VENV_STAMP)
	$(VENV)/bin/python bench/deid.py

# Masking a 30-frame RGB ultrasound cine by a region rule against a pydicom decode+encode, and
# OCR's cost per frame read (tesseract: scripts/install-debian-packages.sh); about two minutes.
bench-pixels: $(VENV_STAMP)
	$(VENV)/bin/python bench/pixels.py

# Always runs: the script itself is a no-op (no apt, no sudo) when all is installed.
debian-packages:
	scripts/install-debian-packages.sh

# The Debian package, dist/nmip-agent_<version>_<arch>.deb: the agent in its own virtual environment
# of Debian's /usr/bin/python3 under /opt/nmip-agent, every wheel inside (packaging/debian/). Needs
# debhelper and python3-venv (deb-tools) and PyPI; about a minute and a half.
deb: deb-tools
	scripts/build-deb.sh

# Builds the package and two earlier versions', then, as root, in a clean debootstrapped bookworm
# root (cached in ~/.cache/nmip-agent-ci): install, config check, a C-STORE and a delivery to the
# test suite's platform (nginx, mTLS, Orthanc: hence debian-packages and the venv), purge, upgrades
# over studies in every state (scripts/deb-check.sh). Needs the Debian mirror the first time;
# about 7 minutes on 2 cores without the cache.
deb-check: deb-tools debian-packages $(VENV_STAMP)
	scripts/deb-check.sh

# The Debian tools the two targets above use: debhelper and dpkg-dev (dpkg-buildpackage),
# python3 and python3-venv (Debian's interpreter builds the package's environment), debootstrap
# (the clean root), dcmtk (storescu into the installed agent), systemd (systemd-analyze verify and
# security), zstd (the cached root). Always runs: a no-op when they are installed.
DEB_TOOLS := debhelper dpkg-dev python3 python3-venv debootstrap dcmtk systemd zstd
deb-tools:
	scripts/install-debian-packages.sh --only $(DEB_TOOLS)

venv: $(VENV_STAMP)

# Reinstalled only when the dependencies change; the stamp is written last so a
# failed pip run is retried next time.
$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) var/
	rm -rf --one-file-system build/deb build/deb-check dist/
