#!/usr/bin/env bash
# Install the Debian packages the test suite (and later the agent's tooling) uses.
#
#   dicom3tools  dciodvfy: validates our synthetic and de-identified objects against the IODs
#   dcmtk        storescu/echoscu: drive the agent's DICOM listener in integration tests
#   orthanc      a real PACS that pushes studies to the agent (tests/peers/orthanc.py starts
#                its own instance with a temporary config; the system service is not used)
#   orthanc-dicomweb  Orthanc's DICOMweb plugin: the central platform's STOW-RS/QIDO-RS/WADO-RS
#                endpoint in delivery tests (tests/peers/platform.py)
#   nginx        the central platform's TLS front (client certificates, bearer token, WebDAV
#                PUT of manifests and clinical files, proxy to Orthanc); Debian's `nginx`
#                package is built --with-http_dav_module (`nginx -V`). tests/peers/platform.py
#                runs its own nginx with a temporary config; the system service is not used
#   tinyproxy    a hospital's forward proxy: delivery through platform.proxy is tested through it
#                (tests/peers/proxy.py runs its own on a free port; the system service is not used)
#   python3-venv `make test` builds .venv with `python3 -m venv` (Debian splits ensurepip out)
#   tesseract-ocr, tesseract-ocr-eng  OCR of burned-in text (profiles with `pixels: ocr`, such
#                as nmip); the agent needs them at run time too (README, "What it needs")
#
# Idempotent: when every package is already installed it touches nothing (no apt,
# no network, no sudo), so `make test` stays fast on a developer machine and works
# on a bare CI clone. Extra package names may be given as arguments; with `--only`, only
# those are installed (`make deb-tools` installs the packaging tools this way).
set -euo pipefail

if [ "${1:-}" = --only ]; then
    shift
    PACKAGES=("$@")
else
    PACKAGES=(dicom3tools dcmtk orthanc orthanc-dicomweb nginx tinyproxy python3-venv tesseract-ocr tesseract-ocr-eng "$@")
fi

die() { echo "install-debian-packages: $*" >&2; exit 1; }

is_installed() {
    # "install ok installed" is the only state in which the package's files are really there.
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu only; install by hand: ${PACKAGES[*]}"

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-debian-packages: already installed: ${PACKAGES[*]}"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "not root and sudo is not available; run as root: apt-get install ${missing[*]}"
fi

# The orthanc, nginx and tinyproxy packages start and enable their system services on install, and
# orthanc-dicomweb's trigger restarts the orthanc service. The tests never use them
# (tests/peers/orthanc.py and tests/peers/platform.py run their own servers on free ports with
# temporary configs), and a PACS left listening on 4242/8042 or a web server on port 80 is not
# something to leave behind, so while apt runs a policy-rc.d (Debian's hook that invoke-rc.d and
# deb-systemd-invoke consult) forbids starting either, and afterwards the services of the packages
# installed now are disabled. A policy-rc.d already in place (containers have one that forbids
# every start) is left alone.
POLICY=/usr/sbin/policy-rc.d
temporary_policy=false
needs_policy=false
new_services=()
for pkg in "${missing[@]}"; do
    case "$pkg" in
        orthanc|nginx|tinyproxy) new_services+=("$pkg"); needs_policy=true ;;
        orthanc-dicomweb) needs_policy=true ;;
    esac
done
if $needs_policy && [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# install-debian-packages: do not start the orthanc, nginx or tinyproxy service\ncase "$1" in orthanc|nginx|tinyproxy) exit 101 ;; esac\nexit 0\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    temporary_policy=true
    trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-debian-packages: installing: ${missing[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || die "apt-get update failed (no network to the Debian archive?)"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"

for pkg in "${missing[@]}"; do
    is_installed "$pkg" || die "$pkg still not installed after apt-get install"
done

if command -v systemctl >/dev/null 2>&1; then
    for service in "${new_services[@]}"; do
        "${SUDO[@]}" systemctl disable "$service.service" >/dev/null 2>&1 \
            || echo "install-debian-packages: note: could not disable $service.service (not needed by the tests)" >&2
    done
fi
if $temporary_policy; then
    "${SUDO[@]}" rm -f "$POLICY"
    trap - EXIT
fi
echo "install-debian-packages: done"
