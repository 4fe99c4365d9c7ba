#!/usr/bin/env bash
# Install the Debian packages the test suite (and later the agent's tooling) uses.
#
#   dicom3tools  dciodvfy: validates our synthetic and de-identified objects against the IODs
#   dcmtk        storescu/echoscu: drive the agent's DICOM listener in integration tests
#   python3-venv `make test` builds .venv with `python3 -m venv` (Debian splits ensurepip out)
#
# Idempotent: when every package is already installed it touches nothing (no apt,
# no network, no sudo), so `make test` stays fast on a developer machine and works
# on a bare CI clone. Extra package names may be given as arguments.
set -euo pipefail

PACKAGES=(dicom3tools dcmtk python3-venv "$@")

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

export DEBIAN_FRONTEND=noninteractive
echo "install-debian-packages: installing: ${missing[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || die "apt-get update failed (no network to the Debian archive?)"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"

for pkg in "${missing[@]}"; do
    is_installed "$pkg" || die "$pkg still not installed after apt-get install"
done
echo "install-debian-packages: done"
