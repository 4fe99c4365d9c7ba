#!/usr/bin/env bash
# Build the nmip-agent Debian package: dist/nmip-agent_<version>_<arch>.deb.
#
#   scripts/build-deb.sh                    # the working tree's tracked files, version from pyproject.toml
#   DEB_VERSION=0.1.0~prev scripts/build-deb.sh
#   NMIP_DEB_SOURCE=/path/to/worktree scripts/build-deb.sh   # another checkout (an older commit)
#   scripts/build-deb.sh --print-version    # the version it would build, and nothing else
#
# Steps: copy the tracked files of the source tree to build/deb/<version>/ with packaging/debian/
# as its debian/ folder; fetch every wheel the agent needs into debian/wheelhouse/ with Debian's
# /usr/bin/python3 (the only step that needs the network: PyPI); dpkg-buildpackage, which makes
# the virtual environment from those wheels alone (packaging/debian/rules). The tools it needs:
# `make deb-tools` (Makefile).
#
# Environment: DEB_VERSION (default: the version pyproject.toml gives), NMIP_DEB_SOURCE (default:
# this checkout), NMIP_DEB_OUT (default: dist/), NMIP_DEB_BUILD (default: build/deb/),
# NMIP_DEB_COMPRESSION (default: xz; zstd and gzip are quicker, and larger).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOURCE=$(cd "${NMIP_DEB_SOURCE:-$REPO}" && pwd)
OUT=${NMIP_DEB_OUT:-$REPO/dist}
BUILD_ROOT=${NMIP_DEB_BUILD:-$REPO/build/deb}
PACKAGING=$REPO/packaging/debian
# Debian's interpreter: the package runs on it. Not `python3` from PATH (pyenv, conda, a venv).
PYTHON=/usr/bin/python3

say() { echo "build-deb: $*"; }
die() { echo "build-deb: error: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || die "$PYTHON not found: install Debian's python3 (make deb-tools)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot make virtual environments: install python3-venv (make deb-tools)"
for tool in dpkg-buildpackage dh dpkg-shlibdeps git; do
    command -v "$tool" >/dev/null || die "$tool not found: run make deb-tools"
done
[ -f "$PACKAGING/control" ] || die "$PACKAGING/control not found"
[ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not the agent's source tree (no pyproject.toml)"

# The version pyproject.toml declares: [project].version, or the attribute it names as dynamic
# (agent.__version__), read without importing the package.
upstream_version() {
    "$PYTHON" - "$SOURCE" <<'PY'
import pathlib, re, sys, tomllib
root = pathlib.Path(sys.argv[1])
meta = tomllib.loads((root / "pyproject.toml").read_text())
version = meta["project"].get("version")
if version is None:
    attr = meta["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, name = attr.rsplit(".", 1)
    path = root / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = re.search(rf"^{name}\s*=\s*['\"]([^'\"]+)['\"]", path.read_text(), re.M)
    if found is None:
        sys.exit(f"no {name} in {path}")
    version = found.group(1)
print(version)
PY
}

VERSION=${DEB_VERSION:-$(upstream_version)}
[[ "$VERSION" =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "not a Debian version for a native package: $VERSION"
if [ "${1:-}" = --print-version ]; then
    echo "$VERSION"
    exit 0
fi
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
BUILD=$BUILD_ROOT/$VERSION
STAGE=$BUILD/nmip-agent-$VERSION
DEB=nmip-agent_${VERSION}_${ARCH}.deb

say "nmip-agent $VERSION ($ARCH) from $SOURCE"
rm -rf "$BUILD"
mkdir -p "$STAGE" "$OUT"

# The files git knows or would add (tracked, and new files not ignored), as they are in the working
# tree: a fresh clone's content, plus work not yet committed; never .venv, var/, build/ or other
# ignored files. A file deleted but not yet committed is skipped.
git -C "$SOURCE" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$SOURCE is not a git checkout"
(cd "$SOURCE" && git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$STAGE"
rm -rf "$STAGE/debian"
cp -r "$PACKAGING" "$STAGE/debian"

# debian/changelog: this version, dated by the source's last commit (the package's timestamps).
date=$(git -C "$SOURCE" log -1 --format=%cD 2>/dev/null || date -R)
commit=$(git -C "$SOURCE" rev-parse --short HEAD)
# (Not `| head`: with pipefail, git killed by SIGPIPE on a large status would end the build.)
dirty=$(git -C "$SOURCE" status --porcelain)
maintainer=$(sed -n 's/^Maintainer: //p' "$PACKAGING/control")
cat > "$STAGE/debian/changelog" <<EOF
nmip-agent ($VERSION) unstable; urgency=medium

  * Built from commit $commit${dirty:+ with uncommitted changes}.

 -- $maintainer  $date
EOF

# Every wheel the agent needs (its own built from the copy), by Debian's python3 so the compiled
# ones match the interpreter the package runs on. pip's cache makes a second build quick.
say "collecting wheels (PyPI)"
TOOLS=$BUILD_ROOT/tools
if [ ! -x "$TOOLS/bin/pip" ] || [ "$(readlink -f "$TOOLS/bin/python")" != "$(readlink -f "$PYTHON")" ]; then
    rm -rf "$TOOLS"
    "$PYTHON" -m venv "$TOOLS"
fi
"$TOOLS/bin/pip" --disable-pip-version-check wheel --wheel-dir "$STAGE/debian/wheelhouse" "$STAGE" \
    > "$BUILD/pip-wheel.log" 2>&1 \
    || { tail -n 20 "$BUILD/pip-wheel.log" >&2; die "pip could not collect the wheels (no network to PyPI?); log: $BUILD/pip-wheel.log"; }
say "$(ls "$STAGE/debian/wheelhouse" | wc -l) wheels"
rm -rf "$STAGE/build" "$STAGE"/*.egg-info

say "dpkg-buildpackage"
(cd "$STAGE" && env -u PYTHONPATH -u VIRTUAL_ENV -u PYTHONHOME NMIP_DEB_COMPRESSION="${NMIP_DEB_COMPRESSION:-xz}" \
    dpkg-buildpackage --build=binary --no-sign \
    > "$BUILD/dpkg-buildpackage.log" 2>&1) \
    || { tail -n 40 "$BUILD/dpkg-buildpackage.log" >&2; die "dpkg-buildpackage failed (log: $BUILD/dpkg-buildpackage.log)"; }

mv -f "$BUILD/$DEB" "$OUT/$DEB"
# The copy of the source stays (what was packaged, for comparison); the tree and wheels go.
rm -rf "$STAGE/debian/nmip-agent" "$STAGE/debian/wheelhouse" "$STAGE/debian/.debhelper"
say "$OUT/$DEB ($(du -h "$OUT/$DEB" | cut -f1))"
dpkg-deb --field "$OUT/$DEB" Package Version Architecture Depends Recommends
