#!/usr/bin/env bash
# Install what the test suite's real servers need (see devtools/servers.py):
#   * Debian packages cyrus-imapd, cyrus-caldav, sasl2-bin  -> Cyrus CalDAV server + saslpasswd2
#   * Azurite (npm azurite@3) into .testrun/node             -> Azure Table/Queue/Blob emulator
#   * checkov 3.3.x in its own venv, .testrun/checkov        -> policy checks of infra/*.bicep
#     (it pins many packages, so it stays out of .venv; tests/test_infra.py runs it)
# Radicale, Xandikos and pycep-parser come from the venv (requirements-dev.txt).
#
# Idempotent and fast when everything is present (no apt/npm call at all then).
# Works on a fresh Debian 12 as root, or as a user with passwordless sudo; never
# reads stdin (CI has none).  The package's own Cyrus daemon is NOT started: the
# tests run a private Cyrus on random ports with their own config.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_PREFIX="$ROOT/.testrun/node"
AZURITE_BIN="$NODE_PREFIX/node_modules/.bin/azurite"
DEB_PACKAGES=(cyrus-imapd cyrus-caldav sasl2-bin)
CHECKOV_VENV="$ROOT/.testrun/checkov"
CHECKOV_SPEC="checkov>=3.3,<3.4"

log() { printf 'install_test_deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a command as root: directly, or through non-interactive sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" </dev/null || die "need root for: $* (sudo -n failed; run as root or allow passwordless sudo)"
    else
        die "need root for: $* (not root and no sudo)"
    fi
}

deb_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

cyrus_present() {
    # Debian layout; other layouts are accepted if the binaries exist (devtools/servers.py searches them).
    local d
    for d in /usr/lib/cyrus/bin /usr/libexec/cyrus-imapd /usr/lib/cyrus-imapd; do
        if [ -x "$d/master" ] && [ -x "$d/httpd" ]; then
            return 0
        fi
    done
    return 1
}

saslpasswd2_present() {
    command -v saslpasswd2 >/dev/null 2>&1 || [ -x /usr/sbin/saslpasswd2 ]
}

# apt-get update only when the package lists don't know a package we need.
apt_update_if_needed() {
    local pkg
    for pkg in "$@"; do
        if ! apt-cache show "$pkg" >/dev/null 2>&1; then
            log "apt-get update (package lists don't know $pkg)"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
            return
        fi
    done
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get: install them by hand"
    apt_update_if_needed "$@"
    # A policy-rc.d that answers 101 keeps maintainer scripts (invoke-rc.d /
    # deb-systemd-invoke) from starting the system cyrus (and the MTA it pulls in)
    # during installation.  Docker images already ship one; keep theirs if present.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\n# temporary, from davbridge install_test_deps.sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
        # shellcheck disable=SC2064
        trap "as_root rm -f $policy" EXIT
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" </dev/null
    if [ -n "$added_policy" ]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
    # Belt and braces: if a system cyrus got started anyway (e.g. a systemd host
    # ignoring policy-rc.d), stop it and keep it from starting at boot -- the tests
    # never use it.  Only done here, i.e. when *we* just installed the packages.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now cyrus-imapd.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/cyrus-imapd ]; then
        as_root /etc/init.d/cyrus-imapd stop >/dev/null 2>&1 || true
    fi
}

# ---------------------------------------------------------------- Debian packages
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${DEB_PACKAGES[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
elif ! cyrus_present || ! saslpasswd2_present; then
    die "Cyrus IMAP with CalDAV (master, httpd) and saslpasswd2 are required; this is not a Debian system -- install them by hand"
fi
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
cyrus_present || die "Cyrus master/httpd not found after installing ${DEB_PACKAGES[*]}"
saslpasswd2_present || die "saslpasswd2 not found after installing sasl2-bin"
getent passwd cyrus >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ] || die "no 'cyrus' user (the cyrus-common package creates it)"

# ---------------------------------------------------------------- Azurite (npm)
if [ ! -x "$AZURITE_BIN" ]; then
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        log "node/npm missing: installing Debian's nodejs + npm"
        apt_install nodejs npm
    fi
    log "npm install azurite@3 into $NODE_PREFIX"
    mkdir -p "$NODE_PREFIX"
    npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --no-update-notifier --loglevel=error \
        azurite@3 </dev/null
    [ -x "$AZURITE_BIN" ] || die "npm finished but $AZURITE_BIN is missing"
fi

# ---------------------------------------------------------------- checkov (own venv)
# The stamp holds the requirement it was installed for: a changed pin reinstalls.
if [ "$(cat "$CHECKOV_VENV/.installed" 2>/dev/null || true)" != "$CHECKOV_SPEC" ]; then
    venv_python="$ROOT/.venv/bin/python"
    [ -x "$venv_python" ] || venv_python="$(command -v python3.11 || command -v python3 || true)"
    [ -n "$venv_python" ] || die "no Python to create $CHECKOV_VENV with"
    log "pip install '$CHECKOV_SPEC' into $CHECKOV_VENV"
    rm -rf "$CHECKOV_VENV"
    "$venv_python" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install -q --disable-pip-version-check "$CHECKOV_SPEC" </dev/null
    "$CHECKOV_VENV/bin/checkov" --version >/dev/null || die "checkov does not run from $CHECKOV_VENV"
    printf '%s' "$CHECKOV_SPEC" >"$CHECKOV_VENV/.installed"
fi

azurite_version="$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$NODE_PREFIX/node_modules/azurite/package.json" 2>/dev/null | head -n1)"
log "ok: cyrus $(dpkg-query -W -f='${Version}' cyrus-imapd 2>/dev/null || echo '(present)'), azurite ${azurite_version:-(present)}, $(cat "$CHECKOV_VENV/.installed")"
