#!/usr/bin/env bash
# make deb-check: build the Debian package and prove it in a clean Debian root.
#
# 1. Build dist/nmip-agent_<version>_<arch>.deb from this tree (scripts/build-deb.sh), and the
#    "previous" packages, from earlier commits (NMIP_DEB_PREV_REFS, below), versioned lower.
# 2. A clean bookworm root from debootstrap (minbase, plus only what the package depends on and
#    systemd for systemd-analyze), cached as a tarball in $NMIP_CI_CACHE so the next run skips it
#    (the previous packages are cached there too).
# 3. Install: dpkg -i, then the user, modes, conffile, PATH, the unit (systemd-analyze verify and
#    security against the root), `config check` (refused before the key, clean after `keys init`),
#    `serve` as the nmip-agent user with a C-STORE from the host's DCMTK storescu, delivery to the
#    test suite's platform on the host (nginx, mTLS, token, Orthanc DICOMweb), `status --json`,
#    SIGTERM and exit 0, nothing written outside /var/lib/nmip-agent; purge keeps the key and the
#    data and says so; reinstalling finds them again.
# 4. Upgrade, from each previous package: installed, studies sent to its agent until it holds them
#    received, queued, quarantined and excluded (as far as that version knows these states), the
#    conffile edited as an administrator would; the new package installed over it: conffile, key
#    and every data file unchanged, `status` asks for the restart if the schema is older; then the
#    new agent starts, migrates the state database, and every study and instance is in the state
#    it was; it receives a new study.
#
# Needs root (debootstrap, chroot, mount), the tools `make deb-tools` installs, and the test
# suite's nginx, Orthanc and virtualenv (`make debian-packages venv`); the network only for PyPI
# (wheels) and the Debian mirror (the first debootstrap). No systemd needed:
# the agent runs directly in the chroot (which shares the host's network), never as a service.
#
# Environment:
#   NMIP_CI_CACHE       debootstrap tarballs and the previous versions' packages (default:
#                       $XDG_CACHE_HOME/nmip-agent-ci, else ~/.cache/nmip-agent-ci)
#   NMIP_DEB_PREV_REFS  commits the previous packages are built from (default below; "" for this
#                       package repacked with a lower version: no migration to see)
#   DEBIAN_MIRROR       default: the bookworm mirror of /etc/apt/sources.list*, else deb.debian.org
#   NMIP_DEB_CHECK_KEEP=1   keep the chroot (build/deb-check/root) for a look afterwards
#   NMIP_DEB_CHECK_REUSE=1  use the packages an earlier run left in dist/ instead of building them
set -euo pipefail
# (No `| grep -q` or `| head` below: with pipefail, the writer's SIGPIPE would fail the pipe.)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${NMIP_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nmip-agent-ci}
WORK=$REPO/build/deb-check
ROOT=$WORK/root
SUITE=bookworm
# Upgrades checked, from:
# - fad29b0: the source the first package was made from (every study state, excluded included);
# - 1ea8cc7: the last commit before the state database had a schema version, as the first sites
#   installed it (schema 0: no excluded state yet), so the check sees the upgrade migrate it.
PREV_REFS=${NMIP_DEB_PREV_REFS-fad29b015126ca2e221df2f2406ecb5700bfdb01 1ea8cc712e737cbc3549aa04706a633e44bba737}
CONFIG=/etc/nmip-agent/config.yaml
STATE=/var/lib/nmip-agent
DEB_OUT=$REPO/dist
HOST_PYTHON=/usr/bin/python3

START=$SECONDS
say()  { printf 'deb-check [%4ds]: %s\n' $((SECONDS - START)) "$*"; }
step() { printf '\ndeb-check [%4ds]: === %s\n' $((SECONDS - START)) "$*"; }
die()  { printf 'deb-check [%4ds]: FAILED: %s\n' $((SECONDS - START)) "$*" >&2; exit 1; }
ok()   { say "ok: $*"; }

[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap, chroot and mount need it"
for tool in debootstrap chroot storescu echoscu systemd-analyze zstd dpkg-deb git; do
    command -v "$tool" >/dev/null || die "$tool not found: run make deb-tools"
done

# ---------------------------------------------------------------------------------------------
# The chroot: mounts, commands in it, the agent running in it, and cleaning up whatever happens.

AGENT_PID=""
PLATFORM_PID=""
DEBOOTSTRAP_TMP=""

mounted_under() {  # prints the mount points below $1
    awk -v prefix="$1/" 'index($2, prefix) == 1 { print $2 }' /proc/self/mounts
}

unmount_under() {
    local point
    for point in $(mounted_under "$1" | sort -r); do
        umount "$point" 2>/dev/null || umount -l "$point" || true
    done
}

# rm -rf only once nothing is mounted below (a mounted /proc or /dev must never be walked).
remove_tree() {
    [ -e "$1" ] || return 0
    unmount_under "$1"
    [ -z "$(mounted_under "$1")" ] || die "still mounted under $1: $(mounted_under "$1" | tr '\n' ' ')"
    rm -rf --one-file-system "$1"
}

stop_agent_quietly() {
    if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
        kill -TERM "$AGENT_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$AGENT_PID" 2>/dev/null || true
        wait "$AGENT_PID" 2>/dev/null || true
    fi
    AGENT_PID=""
}

cleanup() {
    local rc=$?
    set +e
    stop_agent_quietly
    if [ -n "$PLATFORM_PID" ]; then kill "$PLATFORM_PID" 2>/dev/null; wait "$PLATFORM_PID" 2>/dev/null; fi
    [ -d "$ROOT" ] && unmount_under "$ROOT"
    [ -n "$DEBOOTSTRAP_TMP" ] && remove_tree "$DEBOOTSTRAP_TMP"
    if [ "$rc" -eq 0 ] && [ "${NMIP_DEB_CHECK_KEEP:-0}" != 1 ]; then
        remove_tree "$ROOT"
    elif [ -d "$ROOT" ]; then
        echo "deb-check: the chroot is left in $ROOT (logs in $WORK)" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_root() {
    mount -t proc proc "$ROOT/proc"
    # POSIX semaphores of the agent's process pools; a private tmpfs, not the host's /dev.
    mount -t tmpfs -o mode=1777,nosuid,nodev,size=64m tmpfs "$ROOT/dev/shm"
}

# A command in the chroot, as root, with a clean environment (no NOTIFY_SOCKET, no pyenv PATH).
in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root chroot "$ROOT" "$@"
}

# A command in the chroot as the agent's user, as the unit runs it (its groups, its home).
as_agent() {
    in_root setpriv --reuid=nmip-agent --regid=nmip-agent --init-groups --reset-env "$@"
}

free_port() {
    "$HOST_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Set `key: value` inside `section:` of the configuration in the chroot, as an administrator
# edits it (the rest of the line, its comment, is kept).
set_config() {
    local section=$1 key=$2 value=$3 file=$ROOT$CONFIG
    sed -i -E "/^$section:/,/^[^ #]/ s|^(  $key:) *[^ #]*( *#.*)?\$|\\1 $value\\2|" "$file"
    sed -n "/^$section:/,/^[^ #]/p" "$file" | grep -E "^  $key: $value( |\$)" >/dev/null \
        || die "could not set $section.$key in $CONFIG"
}

PORT=""
MARKER=/tmp/deb-check/marker
start_agent() {  # $1: log name
    local log=$WORK/$1.log
    touch "$ROOT$MARKER"
    sleep 1  # whatever changes from now on is the agent's doing
    # Not through as_agent (a function would run in a subshell): $! must be the agent itself,
    # which env, chroot and setpriv each exec.
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root chroot "$ROOT" \
        setpriv --reuid=nmip-agent --regid=nmip-agent --init-groups --reset-env \
        nmip-agent serve --config "$CONFIG" > "$log" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 120); do
        if ! kill -0 "$AGENT_PID" 2>/dev/null; then
            tail -n 20 "$log" >&2
            die "nmip-agent serve exited at start ($log)"
        fi
        if echoscu -to 5 -aet STORESCU -aec NMIP_AGENT 127.0.0.1 "$PORT" >/dev/null 2>&1; then
            ok "nmip-agent serve (pid $AGENT_PID) answers C-ECHO on 127.0.0.1:$PORT"
            return
        fi
        sleep 0.5
    done
    tail -n 20 "$log" >&2
    die "nmip-agent serve did not answer C-ECHO within 60 s ($log)"
}

stop_agent() {  # SIGTERM; the agent must exit 0
    local rc=0
    [ -n "$AGENT_PID" ] || die "no agent to stop"
    kill -TERM "$AGENT_PID"
    for _ in $(seq 120); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$AGENT_PID" 2>/dev/null && die "nmip-agent serve still runs 60 s after SIGTERM"
    wait "$AGENT_PID" || rc=$?
    AGENT_PID=""
    [ "$rc" -eq 0 ] || die "nmip-agent serve exited $rc after SIGTERM (0 expected)"
    ok "SIGTERM: nmip-agent serve exited 0"
    nothing_written_outside_state
}

send() {  # folders of samples, from the host, as the PACS would
    local out=$WORK/storescu.log
    storescu -to 30 -aet STORESCU -aec NMIP_AGENT 127.0.0.1 "$PORT" +sd "$@" >> "$out" 2>&1 \
        || { tail -n 20 "$out" >&2; die "storescu failed ($out)"; }
    ok "C-STORE from the host's storescu: $(for f in "$@"; do basename "$f"; done | tr '\n' ' ')"
}

status_json() {  # $1: where to write it
    as_agent nmip-agent status --config "$CONFIG" --json > "$1" \
        || die "nmip-agent status --json failed"
}

# Wait until a Python expression over the status report `s` holds (its text for the message).
wait_status() {
    local expression=$1 timeout=${2:-90} report=$WORK/status.json
    for _ in $(seq $((timeout * 2))); do
        status_json "$report"
        if "$HOST_PYTHON" -c "import json, sys; s = json.load(open(sys.argv[1])); sys.exit(0 if ($expression) else 1)" \
                "$report"; then
            ok "status: $expression"
            return
        fi
        sleep 0.5
    done
    cat "$report" >&2
    die "status never showed: $expression"
}

# The state database as the agent's user reads it: schema version, each study's and instance's state.
dump_state() {  # $1: output file
    as_agent /opt/nmip-agent/bin/python -c '
import json, sqlite3
db = sqlite3.connect("file:/var/lib/nmip-agent/state.sqlite?mode=ro", uri=True)
print(json.dumps({"schema": db.execute("PRAGMA user_version").fetchone()[0],
                  "studies": dict(db.execute("SELECT study_key, state FROM studies")),
                  "instances": dict(db.execute("SELECT sop_key, state FROM instances"))}, sort_keys=True))
' > "$1" || die "could not read the state database"
}

# Every file the agent keeps, with its digest (not the database, which the new agent migrates).
data_files() {  # $1: output file
    (cd "$ROOT$STATE" && find . -type f ! -name 'state.sqlite*' ! -name '*.lock' -print0 | sort -z \
        | xargs -0 --no-run-if-empty sha256sum) > "$1"
}

# Nothing written outside the state folder while the agent ran: no file, no folder changed
# anywhere else in the root (the chroot's /tmp included).
nothing_written_outside_state() {  # since start_agent touched $MARKER
    local found
    # (/proc and the semaphores' /dev/shm are mounts of their own, and hold nothing on disk.)
    found=$(find "$ROOT" -xdev -newer "$ROOT$MARKER" \( -type f -o -type d \) ! -path "$ROOT/proc" ! -path "$ROOT/dev/shm" \
                ! -path "$ROOT$STATE" ! -path "$ROOT$STATE/*" -print | sed "s|^$ROOT||")
    [ -z "$found" ] || die "the agent wrote outside $STATE: $found"
    ok "nothing written outside $STATE while the agent ran"
}

# The platform: the test suite's own (nginx with TLS, client certificates and a bearer token in
# front of Orthanc's DICOMweb: tests/peers/platform.py), run on the host from the project's
# virtualenv by scripts/deb-check-platform.py; the agent's configuration points at it, with the
# site's credentials where docs/install.md puts them.
start_platform() {
    local dir=$WORK/platform
    rm -rf "$dir"
    mkdir -p -m 0700 "$dir"
    : > "$WORK/platform.log"
    "$REPO/.venv/bin/python" "$REPO/scripts/deb-check-platform.py" "$dir" >> "$WORK/platform.log" 2>&1 &
    PLATFORM_PID=$!
    for _ in $(seq 240); do
        grep "listening on" "$WORK/platform.log" >/dev/null 2>&1 && { ok "the test platform (nginx, mTLS, Orthanc DICOMweb): $(sed -n 's/.*listening on //p' "$WORK/platform.log")"; return; }
        kill -0 "$PLATFORM_PID" 2>/dev/null || break
        sleep 0.25
    done
    cat "$WORK/platform.log" >&2
    die "the test platform did not start"
}

platform_setting() {  # $1: a key of platform.json
    "$HOST_PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/platform/platform.json" "$1"
}

platform_on() {  # the site's platform: section, its CA bundle, client certificate and token (docs/install.md)
    local credentials=/etc/nmip-agent/platform
    in_root install -d -o nmip-agent -g nmip-agent -m 0700 "$credentials"  # as README.md makes it
    install -o root -g root -m 0644 "$(platform_setting ca_bundle)" "$ROOT$credentials/ca.pem"
    install -o root -g root -m 0644 "$(platform_setting client_certificate)" "$ROOT$credentials/client.pem"
    install -m 0600 "$(platform_setting client_key)" "$ROOT$credentials/client.key"
    install -m 0600 "$(platform_setting token_file)" "$ROOT$credentials/token"
    in_root chown nmip-agent:nmip-agent "$credentials/client.key" "$credentials/token"
    set_config platform dicomweb_url "$(platform_setting dicomweb_url)"
    set_config platform manifest_url "$(platform_setting manifest_url)"
    set_config platform ca_bundle "$credentials/ca.pem"
    set_config platform client_certificate "$credentials/client.pem"
    set_config platform client_key "$credentials/client.key"
    set_config platform token_file "$credentials/token"
}

wait_platform() {  # $1: what the platform's last line must say
    for _ in $(seq 120); do
        [ "$(sed -n 's/^platform: holds/holds/p' "$WORK/platform.log" | tail -n 1)" = "$1" ] && return
        sleep 0.5
    done
    cat "$WORK/platform.log" >&2
    die "the platform never said: $1"
}

platform_off() {  # nothing delivered from now on: studies wait, in the state they are
    set_config platform dicomweb_url '""'
    set_config platform manifest_url '""'
    set_config platform ca_bundle null
    set_config platform client_certificate null
    set_config platform client_key null
    set_config platform token_file null
}

# Agents that know opt-outs deliver nothing before a list is imported: an empty one, here.
import_empty_optout_list() {
    if as_agent nmip-agent optout --help >/dev/null 2>&1; then
        : > "$ROOT/tmp/deb-check/optouts.txt"
        chmod 0644 "$ROOT/tmp/deb-check/optouts.txt"
        as_agent nmip-agent optout import /tmp/deb-check/optouts.txt --allow-empty --config "$CONFIG" | sed 's/^/  | /'
    fi
}

# ---------------------------------------------------------------------------------------------
# Packages.

step "build the package (scripts/build-deb.sh)"
mkdir -p "$WORK" "$CACHE"
remove_tree "$ROOT"
rm -f "$WORK"/*.log "$WORK"/*.json "$WORK"/*.txt
if [ "${NMIP_DEB_CHECK_REUSE:-0}" = 1 ] && [ -f "$DEB_OUT/nmip-agent_$("$REPO/scripts/build-deb.sh" --print-version)_$(dpkg --print-architecture).deb" ]; then
    say "NMIP_DEB_CHECK_REUSE=1: the packages in $DEB_OUT"
else
    "$REPO/scripts/build-deb.sh" | sed 's/^/  /'
fi
VERSION=$("$REPO/scripts/build-deb.sh" --print-version)
DEB=$DEB_OUT/nmip-agent_${VERSION}_$(dpkg --print-architecture).deb
[ -f "$DEB" ] || die "no $DEB"
UPSTREAM=${VERSION%%[~+-]*}
# What was packaged (the working tree may change while this runs: others edit it).
PACKAGED=$REPO/build/deb/$VERSION/nmip-agent-$VERSION
[ -f "$PACKAGED/packaging/config.yaml" ] || die "no $PACKAGED/packaging/config.yaml"

ARCH=$(dpkg --print-architecture)
PREV_DEBS=()
build_previous() {  # $1: a commit, or "" for this package repacked
    local ref=$1 version deb source cached
    if [ -n "$ref" ] && git -C "$REPO" cat-file -e "$ref^{commit}" 2>/dev/null; then
        version="$VERSION~git$(git -C "$REPO" rev-parse --short=7 "$ref")"
        deb=$DEB_OUT/nmip-agent_${version}_$ARCH.deb
        # An old commit's package changes only with the packaging: cached by both.
        cached=$CACHE/previous/$( { cat "$REPO/scripts/build-deb.sh"; find "$REPO/packaging/debian" -type f -print0 \
            | sort -z | xargs -0 cat; } | sha256sum | cut -c1-12)/$(basename "$deb")
        if [ "${NMIP_DEB_CHECK_REUSE:-0}" = 1 ] && [ -f "$deb" ]; then
            PREV_DEBS+=("$deb")
            return
        fi
        if [ -f "$cached" ]; then
            step "the previous package $version (commit $ref): cached"
            cp "$cached" "$deb"
            PREV_DEBS+=("$deb")
            return
        fi
        step "build the previous package $version (commit $ref, packaged by this tree's packaging/debian)"
        source=$WORK/prev-source
        git -C "$REPO" worktree remove --force "$source" >/dev/null 2>&1 || true
        rm -rf "$source"
        git -C "$REPO" worktree prune
        git -C "$REPO" worktree add --detach --quiet "$source" "$ref"
        NMIP_DEB_SOURCE=$source DEB_VERSION=$version NMIP_DEB_COMPRESSION=zstd "$REPO/scripts/build-deb.sh" | sed 's/^/  /'
        git -C "$REPO" worktree remove --force "$source"
        mkdir -p "$(dirname "$cached")"
        cp "$deb" "$cached.part" && mv "$cached.part" "$cached"
    else
        version="$VERSION~prev"
        deb=$DEB_OUT/nmip-agent_${version}_$ARCH.deb
        step "the previous package: this one repacked as $version"
        [ -z "$ref" ] || say "commit $ref is not in this clone (a shallow clone?): no older source to build"
        rm -rf "$WORK/repack"
        dpkg-deb --raw-extract "$DEB" "$WORK/repack"
        sed -i "s/^Version: .*/Version: $version/" "$WORK/repack/DEBIAN/control"
        dpkg-deb --root-owner-group -Zzstd --build "$WORK/repack" "$deb" >/dev/null
        rm -rf "$WORK/repack"
    fi
    dpkg --compare-versions "$version" lt "$VERSION" || die "$version is not lower than $VERSION"
    PREV_DEBS+=("$deb")
}
if [ -z "$PREV_REFS" ]; then
    build_previous ""
else
    for ref in $PREV_REFS; do build_previous "$ref"; done
fi

# ---------------------------------------------------------------------------------------------
# The clean root, from the cache.

detect_mirror() {
    local found
    found=$(awk '/^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "'$SUITE'") print uri }' \
                /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 1p)
    if [ -z "$found" ]; then
        found=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                    | awk '$1 == "deb" && $3 == "'$SUITE'" { print $2; exit }')
    fi
    echo "${found:-http://deb.debian.org/debian}"
}
MIRROR=${DEBIAN_MIRROR:-$(detect_mirror)}

# What the packages depend on (first of each alternative, no versions), and systemd for
# systemd-analyze verify (the unit's dependencies, sysinit.target and the like, come from it).
INCLUDES=$( { for deb in "$DEB" "${PREV_DEBS[@]}"; do dpkg-deb --field "$deb" Depends; echo ","; done; echo systemd; } \
    | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/:any//; s/[[:space:]]//g' | grep -v '^$' | sort -u | paste -sd, -)
KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "$INCLUDES" "$(dpkg --print-architecture)" | sha256sum | cut -c1-12)
TARBALL=$CACHE/debootstrap-$SUITE-minbase-$KEY.tar.zst

step "a clean $SUITE root"
if [ -f "$TARBALL" ]; then
    say "cached: $TARBALL"
else
    say "debootstrap --variant=minbase --include=$INCLUDES $SUITE from $MIRROR (once; cached in $TARBALL)"
    DEBOOTSTRAP_TMP=$CACHE/.debootstrap.$$
    remove_tree "$DEBOOTSTRAP_TMP"
    debootstrap --variant=minbase --include="$INCLUDES" "$SUITE" "$DEBOOTSTRAP_TMP" "$MIRROR" \
        > "$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed ($WORK/debootstrap.log)"; }
    unmount_under "$DEBOOTSTRAP_TMP"
    chroot "$DEBOOTSTRAP_TMP" apt-get clean
    tar --zstd --numeric-owner -C "$DEBOOTSTRAP_TMP" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    remove_tree "$DEBOOTSTRAP_TMP"
    DEBOOTSTRAP_TMP=""
    say "cached $(du -h "$TARBALL" | cut -f1)"
fi

fresh_root() {
    remove_tree "$ROOT"
    mkdir -p "$ROOT"
    tar --zstd --numeric-owner -xpf "$TARBALL" -C "$ROOT"
    mkdir -p "$ROOT/tmp/deb-check"
    cp "$DEB" "${PREV_DEBS[@]}" "$ROOT/tmp/deb-check/"
    mount_root
}

install_deb() {  # $1: the .deb; the rest: dpkg options
    local deb=$1 log
    shift
    log=$WORK/dpkg-$(basename "$deb" .deb).log
    in_root dpkg "$@" -i "/tmp/deb-check/$(basename "$deb")" < /dev/null > "$log" 2>&1 \
        || { cat "$log" >&2; die "dpkg -i $(basename "$deb") failed"; }
    sed 's/^/  | /' "$log"
}

expect_mode() {  # path, owner:group, mode
    local found
    found=$(in_root stat -c '%U:%G %a' "$1")
    [ "$found" = "$2 $3" ] || die "$1 is $found, expected $2 $3"
    ok "$1 $2 $3"
}

# ---------------------------------------------------------------------------------------------
step "install $(basename "$DEB") into the clean root"
fresh_root
install_deb "$DEB"

[ "$(in_root dpkg-query -W -f='${Status} ${Version}' nmip-agent)" = "install ok installed $VERSION" ] \
    || die "nmip-agent $VERSION is not installed"
IFS=: read -r _ _ uid _ _ home shell < <(in_root getent passwd nmip-agent) || die "no nmip-agent user"
[ "$uid" -lt 1000 ] && [ "$home" = "$STATE" ] && [ "$shell" = /usr/sbin/nologin ] \
    || die "nmip-agent user: uid $uid, home $home, shell $shell"
ok "system user nmip-agent (uid $uid, home $home, shell $shell)"
expect_mode /etc/nmip-agent root:nmip-agent 750
expect_mode "$CONFIG" root:nmip-agent 640
expect_mode "$STATE" nmip-agent:nmip-agent 700
in_root dpkg-query -W -f='${Conffiles}\n' nmip-agent | grep "^ $CONFIG " >/dev/null || die "$CONFIG is not a conffile"
cmp -s "$ROOT$CONFIG" "$PACKAGED/packaging/config.yaml" || die "$CONFIG is not packaging/config.yaml"
ok "$CONFIG is a conffile, as packaging/config.yaml"
cmp -s "$ROOT/lib/systemd/system/nmip-agent.service" "$PACKAGED/systemd/nmip-agent.service" \
    || die "/lib/systemd/system/nmip-agent.service is not systemd/nmip-agent.service"
ok "/lib/systemd/system/nmip-agent.service"
[ "$(readlink "$ROOT/usr/bin/nmip-agent")" = /opt/nmip-agent/bin/nmip-agent ] || die "/usr/bin/nmip-agent"
[ "$(readlink "$ROOT/opt/nmip-agent/bin/python3")" = /usr/bin/python3 ] \
    && grep -qx 'home = /usr/bin' "$ROOT/opt/nmip-agent/pyvenv.cfg" || die "the venv is not Debian's python3's"
ok "/usr/bin/nmip-agent -> /opt/nmip-agent/bin/nmip-agent, a venv of /usr/bin/python3"
leftover=$(grep -rl --fixed-strings "$REPO" "$ROOT/opt/nmip-agent" || true)
[ -z "$leftover" ] || die "build paths left in: $(echo "$leftover" | sed -n 1,5p | tr '\n' ' ')"
ok "no build path in /opt/nmip-agent's scripts or byte code"
found=$(as_agent nmip-agent --version)
[ "$found" = "nmip-agent $UPSTREAM" ] || die "nmip-agent --version: $found (expected nmip-agent $UPSTREAM)"
ok "nmip-agent --version: $found"

if systemd-analyze verify --root="$ROOT" nmip-agent.service > "$WORK/verify.log" 2>&1; then
    ok "systemd-analyze verify --root: nmip-agent.service$( [ -s "$WORK/verify.log" ] && echo " ($(wc -l < "$WORK/verify.log") note(s): $WORK/verify.log)")"
else
    cat "$WORK/verify.log" >&2
    die "systemd-analyze verify --root=$ROOT nmip-agent.service"
fi
systemd-analyze security --offline=yes --root="$ROOT" nmip-agent.service > "$WORK/security.log" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for nmip-agent\.service: \([0-9.]*\).*/\1/p' "$WORK/security.log")
[ -n "$score" ] || { cat "$WORK/security.log" >&2; die "systemd-analyze security gave no score"; }
"$HOST_PYTHON" -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)" \
    || die "systemd-analyze security: exposure $score > 2.0"
ok "systemd-analyze security --offline --root: exposure $score (<= 2.0)"

# The packaged configuration names a key that does not exist yet: config check says so.
rc=0; as_agent nmip-agent config check --config "$CONFIG" > "$WORK/config-check-nokey.txt" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q '^error *pipeline.key_file' "$WORK/config-check-nokey.txt" \
    || { cat "$WORK/config-check-nokey.txt" >&2; die "config check without a key: exit $rc, no pipeline.key_file error"; }
ok "config check before keys init: exit 2, pipeline.key_file named"
as_agent nmip-agent keys init --key-file "$STATE/site.key" | sed 's/^/  | /'
expect_mode "$STATE/site.key" nmip-agent:nmip-agent 600
KEY_SHA=$(sha256sum < "$ROOT$STATE/site.key")

# The administrator's edits: a free port on the loopback (the chroot shares the host's network),
# monitoring off, a short quiet period so a study is de-identified within the check.
PORT=$(free_port)
set_config receive bind_address 127.0.0.1
set_config receive port "$PORT"
set_config observe port 0
set_config pipeline quiet_period_s 5
rc=0; as_agent nmip-agent config check --config "$CONFIG" > "$WORK/config-check.txt" 2>&1 || rc=$?
sed 's/^/  | /' "$WORK/config-check.txt"
[ "$rc" -le 1 ] && ! grep -q '^error' "$WORK/config-check.txt" || die "config check: exit $rc"
grep -q '^ok *pipeline.profile' "$WORK/config-check.txt" || die "config check: the profile does not load"
ok "config check after keys init: exit $rc (warnings only: no platform configured)"

# Samples, written by the package's own pydicom (public CT_small.dcm, made-up names).
cp "$REPO/scripts/deb-check-samples.py" "$ROOT/tmp/deb-check/"
in_root /opt/nmip-agent/bin/python /tmp/deb-check/deb-check-samples.py /tmp/deb-check/samples
rm -rf "$WORK/samples"
mv "$ROOT/tmp/deb-check/samples" "$WORK/samples"
SAMPLES=$WORK/samples

# Delivery to the test platform, over HTTPS with the site's CA bundle, certificate and token: one study
# delivered (the identifiable copies then purged), one held in quarantine.
start_platform
platform_on
import_empty_optout_list
rc=0; as_agent nmip-agent config check --config "$CONFIG" --platform > "$WORK/config-check-platform.txt" 2>&1 || rc=$?
sed 's/^/  | /' "$WORK/config-check-platform.txt"
[ "$rc" -le 1 ] && ! grep -q '^error' "$WORK/config-check-platform.txt" || die "config check --platform: exit $rc"
grep -q '^ok *platform.dicomweb_url: TLS handshake done' "$WORK/config-check-platform.txt" \
    || die "config check --platform made no TLS handshake with the platform"
ok "config check --platform: exit $rc, TLS handshake with the platform done"

start_agent install-serve
send "$SAMPLES/queued-1" "$SAMPLES/quarantined"
wait_status 's["daemon"]["running"] and sum(s["instances"].values()) == 4'
wait_status 's["studies"] == {"purged": 1, "quarantined": 1} and s["instances"] == {"purged": 2, "quarantined": 2}'
wait_platform "holds 2 instance(s) of 1 study(ies); 1 manifest(s); identifiers: none"
ok "delivered over HTTPS with mTLS and the token: the platform holds 2 de-identified instances and the manifest; the study purged on site"
stop_agent

step "purge keeps the key and the data"
data_files "$WORK/install-data-before-purge.txt"
in_root dpkg --purge nmip-agent > "$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log" >&2; die "dpkg --purge failed"; }
sed 's/^/  | /' "$WORK/purge.log"
for gone in /opt/nmip-agent /usr/bin/nmip-agent /lib/systemd/system/nmip-agent.service "$CONFIG"; do
    [ ! -e "$ROOT$gone" ] && [ ! -L "$ROOT$gone" ] || die "$gone is still there after purge"
done
ok "purged: /opt/nmip-agent, /usr/bin/nmip-agent, the unit and $CONFIG removed"
[ "$(sha256sum < "$ROOT$STATE/site.key")" = "$KEY_SHA" ] || die "the site key changed or went"
[ -f "$ROOT$STATE/state.sqlite" ] || die "the state database went"
data_files "$WORK/install-data-after-purge.txt"
cmp -s "$WORK/install-data-before-purge.txt" "$WORK/install-data-after-purge.txt" \
    || die "files under $STATE changed with the purge"
grep -q "NOT removed" "$WORK/purge.log" && grep -q "$STATE/site.key" "$WORK/purge.log" && grep -q "rm -rf" "$WORK/purge.log" \
    && grep -q "/etc/nmip-agent/platform/token" "$WORK/purge.log" || die "purge did not say what it kept and how to remove it"
[ -f "$ROOT/etc/nmip-agent/platform/token" ] || die "purge removed the site's platform credentials"
ok "purge kept $STATE (key, state database, $(wc -l < "$WORK/install-data-after-purge.txt") data files) and said where"
[ -z "$(in_root dpkg-statoverride --list | grep nmip-agent || true)" ] || die "statoverrides left after purge"

install_deb "$DEB"
expect_mode "$STATE" nmip-agent:nmip-agent 700
wait_status 's["studies"] == {"purged": 1, "quarantined": 1}' 5
ok "reinstalled after purge: the agent finds its state again"

# The maintainer scripts' service handling, under a stand-in for systemd: /run/systemd/system
# exists and systemctl records what it is asked (deb-systemd-invoke, the real one, calls it).
step "maintainer scripts with systemd running (a stand-in systemctl)"
mkdir -p "$ROOT/run/systemd/system"
cat > "$ROOT/usr/bin/systemctl" <<'STUB'
#!/bin/sh
echo "$*" >> /tmp/deb-check/systemctl.log
for word in "$@"; do case "$word" in -*) ;; *) verb=$word; break ;; esac; done
case "$verb" in
    is-active) [ -e /tmp/deb-check/active ] ;;
    is-enabled) echo enabled ;;
    start|restart) touch /tmp/deb-check/active ;;
    stop) rm -f /tmp/deb-check/active ;;
esac
STUB
chmod 0755 "$ROOT/usr/bin/systemctl"
systemctl_calls() { sed -n 's/^\(--[a-z]* \)*\(stop\|start\|restart\|try-restart\) .*nmip-agent.*/\2/p' "$ROOT/tmp/deb-check/systemctl.log" | paste -sd' ' -; }
touch "$ROOT/tmp/deb-check/active"
: > "$ROOT/tmp/deb-check/systemctl.log"
install_deb "$DEB"
[ "$(systemctl_calls)" = "stop start" ] && [ -e "$ROOT/tmp/deb-check/active" ] \
    || die "upgrade with the service running: systemctl was asked '$(systemctl_calls)', not 'stop start'"
[ ! -e "$ROOT/run/nmip-agent.restart-after-upgrade" ] || die "the restart flag was left in /run"
ok "upgrade with the service running: preinst stops it before unpacking, postinst starts it again"
rm -f "$ROOT/tmp/deb-check/active"
: > "$ROOT/tmp/deb-check/systemctl.log"
install_deb "$DEB"
[ -z "$(systemctl_calls)" ] || die "upgrade with the service stopped: systemctl was asked '$(systemctl_calls)'"
ok "upgrade with the service stopped: it stays stopped"
touch "$ROOT/tmp/deb-check/active"
: > "$ROOT/tmp/deb-check/systemctl.log"
in_root dpkg --remove nmip-agent > "$WORK/remove.log" 2>&1 || { cat "$WORK/remove.log" >&2; die "dpkg --remove failed"; }
[ "$(systemctl_calls)" = "stop" ] || die "remove: systemctl was asked '$(systemctl_calls)', not 'stop'"
ok "remove stops the service"
: > "$ROOT/tmp/deb-check/systemctl.log"
install_deb "$DEB"
[ -z "$(systemctl_calls)" ] || die "first install: systemctl was asked '$(systemctl_calls)' (the service must not start before the key exists)"
ok "install (after remove): the service is neither enabled nor started"
unmount_under "$ROOT"

# ---------------------------------------------------------------------------------------------
upgrade_from() {  # $1: the previous package
    local prev_deb=$1 prev_version label key_sha packaged_prev_config old_schema new_schema rc
    local -a dpkg_options=()
    prev_version=$(dpkg-deb --field "$prev_deb" Version)
    label=upgrade-${prev_version##*~}
    step "upgrade from $prev_version: its agent's studies in every state it knows, then $VERSION over it"
    fresh_root
    install_deb "$prev_deb"
    [ "$(in_root dpkg-query -W -f='${Version}' nmip-agent)" = "$prev_version" ] || die "$prev_version not installed"
    as_agent nmip-agent keys init --key-file "$STATE/site.key" | sed 's/^/  | /'
    key_sha=$(sha256sum < "$ROOT$STATE/site.key")
    PORT=$(free_port)
    packaged_prev_config=$WORK/$label-packaged-config.yaml
    cp "$ROOT$CONFIG" "$packaged_prev_config"
    set_config receive bind_address 127.0.0.1
    set_config receive port "$PORT"
    if grep -q '^observe:' "$ROOT$CONFIG"; then set_config observe port 0; fi
    set_config pipeline quiet_period_s 5
    printf '# Edited by the site: loopback only, a free port, a short quiet period.\n' >> "$ROOT$CONFIG"

    # Delivered (and purged on site) while the platform is configured; then the site takes the
    # platform out of its configuration, so what follows waits on site, in the state it is.
    platform_on
    import_empty_optout_list
    start_agent "$label-serve-prev-1"
    send "$SAMPLES/queued-1"
    wait_status 's["studies"] == {"purged": 1}' 120
    stop_agent
    platform_off
    start_agent "$label-serve-prev-2"
    send "$SAMPLES/queued-2" "$SAMPLES/quarantined" "$SAMPLES/excluded"
    # Settled: four studies, none still arriving (a version without scope rules quarantines the
    # Secondary Capture instead of excluding it).
    wait_status 'sum(s["studies"].values()) == 4 and not set(s["studies"]) & {"receiving", "stable"}' 120
    stop_agent
    # A study still arriving: a long quiet period, so it is never stable before the upgrade.
    set_config pipeline quiet_period_s 3600
    start_agent "$label-serve-prev-3"
    send "$SAMPLES/queued-3"
    wait_status 's["studies"].get("receiving") == 1 and s["instances"].get("received") == 2'
    stop_agent
    
    dump_state "$WORK/$label-state-before.json"
    status_json "$WORK/$label-status-before.json"
    data_files "$WORK/$label-data-before.txt"
    cp "$ROOT$CONFIG" "$WORK/$label-config-before.yaml"
    "$HOST_PYTHON" - "$WORK/$label-state-before.json" <<'PY'
import collections, json, sys
state = json.load(open(sys.argv[1]))
print("deb-check: before the upgrade: state database schema", state["schema"],
      "studies", dict(collections.Counter(state["studies"].values())),
      "instances", dict(collections.Counter(state["instances"].values())))
PY
    for required in purged queued quarantined receiving; do
        grep -q "\"$required\"" "$WORK/$label-state-before.json" || die "the previous agent made no $required study"
    done

    if ! cmp -s "$packaged_prev_config" "$PACKAGED/packaging/config.yaml"; then
        # The packaged configuration changed and the site edited theirs: dpkg asks; the answer an
        # unattended upgrade gives is to keep the site's, with the new one beside it (.dpkg-dist).
        dpkg_options=(--force-confold)
    fi
    install_deb "$DEB" "${dpkg_options[@]}"
    [ "$(in_root dpkg-query -W -f='${Version}' nmip-agent)" = "$VERSION" ] || die "$VERSION not installed"
    cmp -s "$ROOT$CONFIG" "$WORK/$label-config-before.yaml" || die "the upgrade changed the edited $CONFIG"
    if [ "${#dpkg_options[@]}" -gt 0 ]; then
        cmp -s "$ROOT$CONFIG.dpkg-dist" "$PACKAGED/packaging/config.yaml" || die "no $CONFIG.dpkg-dist with the new default"
        ok "the site's edited $CONFIG kept (the packaged one changed: the new one is beside it, $CONFIG.dpkg-dist)"
    else
        ok "the site's edited $CONFIG kept"
    fi
    [ "$(sha256sum < "$ROOT$STATE/site.key")" = "$key_sha" ] || die "the site key changed"
    ok "site key unchanged (same bytes)"
    data_files "$WORK/$label-data-after.txt"
    cmp -s "$WORK/$label-data-before.txt" "$WORK/$label-data-after.txt" || die "files under $STATE changed with the upgrade"
    ok "every file under $STATE unchanged by the upgrade ($(wc -l < "$WORK/$label-data-before.txt") files: key, spool, outbox, quarantine)"
    expect_mode /etc/nmip-agent root:nmip-agent 750
    expect_mode "$CONFIG" root:nmip-agent 640
    expect_mode "$STATE" nmip-agent:nmip-agent 700

    new_schema=$(as_agent /opt/nmip-agent/bin/python -c 'from agent.spool.state import SCHEMA_VERSION; print(SCHEMA_VERSION)')
    old_schema=$("$HOST_PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["schema"])' "$WORK/$label-state-before.json")
    if [ "$old_schema" != "$new_schema" ]; then
        rc=0; as_agent nmip-agent status --config "$CONFIG" > "$WORK/$label-status-old-schema.txt" 2>&1 || rc=$?
        [ "$rc" -ne 0 ] && grep -q "restart the service" "$WORK/$label-status-old-schema.txt" \
            || { cat "$WORK/$label-status-old-schema.txt" >&2; die "status on the old schema: exit $rc, no 'restart the service'"; }
        ok "before the restart, status asks for it (schema $old_schema, the agent's $new_schema)"
    fi
    rc=0; as_agent nmip-agent config check --config "$CONFIG" > "$WORK/$label-config-check.txt" 2>&1 || rc=$?
    sed 's/^/  | /' "$WORK/$label-config-check.txt"
    [ "$rc" -le 1 ] || die "config check of the site's configuration after the upgrade: exit $rc"
    ok "config check of the kept configuration by the new agent: exit $rc"

    start_agent "$label-serve-new"
    tr '\0' ' ' < "/proc/$AGENT_PID/cmdline" | grep "^/opt/nmip-agent/bin/python " >/dev/null \
        || die "the agent does not run from /opt/nmip-agent: $(tr '\0' ' ' < "/proc/$AGENT_PID/cmdline")"
    wait_status 's["daemon"]["running"]'
    dump_state "$WORK/$label-state-after.json"
    status_json "$WORK/$label-status-after.json"
    "$HOST_PYTHON" - "$WORK/$label" "$new_schema" <<'PY' || die "studies changed with the upgrade"
import json, sys
prefix, schema = sys.argv[1], int(sys.argv[2])
before = json.load(open(f"{prefix}-state-before.json"))
after = json.load(open(f"{prefix}-state-after.json"))
status_before = json.load(open(f"{prefix}-status-before.json"))
status_after = json.load(open(f"{prefix}-status-after.json"))
problems = []
if after["schema"] != schema:
    problems.append(f"schema {after['schema']} after the restart, the agent's is {schema}")
for kind in ("studies", "instances"):
    if after[kind] != before[kind]:
        gone = set(before[kind]) - set(after[kind])
        changed = {k: (v, after[kind].get(k)) for k, v in before[kind].items() if after[kind].get(k) != v}
        problems.append(f"{kind}: {len(gone)} gone, changed (before, after): {changed}")
for key in ("studies", "instances"):
    if status_after[key] != status_before[key]:
        problems.append(f"status {key}: {status_before[key]} before, {status_after[key]} after")
def held(report):
    return sorted((q["study_key"], q["reason"], q["instances"]) for q in report["quarantine"])
if held(status_after) != held(status_before):
    problems.append(f"quarantine: {held(status_before)} before, {held(status_after)} after")
if problems:
    print("deb-check: after the upgrade:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"deb-check: ok: after the upgrade and the restart: schema {before['schema']} -> {after['schema']}; "
      f"{len(after['studies'])} studies and {len(after['instances'])} instances, each in the state it was "
      f"(studies {status_after['studies']}); quarantine {[(r, n) for _, r, n in held(status_after)]}")
PY
    if [ "$old_schema" != "$new_schema" ]; then
        expect_mode "$STATE/state.sqlite.v$old_schema" nmip-agent:nmip-agent 600
    fi
    # The upgraded agent receives: a new study arrives (and waits for its quiet period).
    send "$SAMPLES/queued-4"
    wait_status 's["studies"].get("receiving") == 2'
    stop_agent

    # The platform back in the configuration: the study the old agent queued is delivered by the
    # new one (and the opt-out list it needs first: an empty one).
    platform_on
    import_empty_optout_list
    start_agent "$label-serve-deliver"
    wait_status 's["studies"].get("queued", 0) == 0 and s["studies"].get("purged") == 2' 120
    ok "the study the previous version queued is delivered by the new one, and purged on site"
    stop_agent
    unmount_under "$ROOT"
}

for prev_deb in "${PREV_DEBS[@]}"; do
    upgrade_from "$prev_deb"
done
last=$(sed -n 's/^platform: holds/holds/p' "$WORK/platform.log" | tail -n 1)
[ "${last##*identifiers: }" = none ] || die "the platform received a sample's identifier: $last"
ok "the platform $last (every version's deliveries)"

step "passed in $((SECONDS - START)) s: $(basename "$DEB"), installed, purged, and upgraded from ${#PREV_DEBS[@]} earlier version(s)"
