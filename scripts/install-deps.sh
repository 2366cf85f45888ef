#!/usr/bin/env bash
# Install what dupmirror's build and test suite need on a fresh Debian bookworm machine that has
# only Rust. Idempotent: a rerun on a prepared machine skips apt and pip and takes a second.
# Runs as root (or with sudo available).
#
#   apt: duplicity (upstream 0.8.22, the oracle; brings python3 and rsync), strace (the crash and
#        I/O-error tests kill or fail dupmirror at chosen syscalls), libgpgme-dev (for
#        the gpgme crate), libisal-dev (ISA-L, which inflates gzip), gnupg, rsync,
#        nginx-light (HTTP tests), python3-pyftpdlib (FTP tests), python3-openssl
#        (pyftpdlib's FTPS), openssl (test certificates, htpasswd), pigz, openssh-server
#        (SFTP tests: sshd with its own config on 127.0.0.1); for the fleet tests:
#        prometheus (promtool checks the metrics file), systemd (systemd-analyze verifies
#        the units), man-db and groff (the man page renders without
#        warnings), zsh and fish (the completion scripts parse), dpkg-dev (the .deb is built
#        and inspected), util-linux (flock holds a lock in the exit-status test); time (GNU
#        time: the peak memory of a run, for the memory-bound tests)
#   venv: upstream duplicity 3.2.1 at ${DUPMIRROR_DUP3_VENV:-/opt/dup3}
#   venv: moto's S3 server, boto3 and duplicity 3.2.1 at ${DUPMIRROR_MOTO_VENV:-/opt/moto}
#         (S3 tests: upstream duplicity writes straight into moto_server)
set -euo pipefail

VENV="${DUPMIRROR_DUP3_VENV:-/opt/dup3}"
MOTO_VENV="${DUPMIRROR_MOTO_VENV:-/opt/moto}"
DUP3_VERSION=3.2.1
APT_PACKAGES=(duplicity strace libgpgme-dev libisal-dev pkg-config gnupg rsync nginx-light python3-pyftpdlib python3-openssl openssl pigz
              openssh-server prometheus systemd man-db groff zsh fish dpkg-dev util-linux time)

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "must run as root (or have sudo)"
    SUDO=(sudo)
fi

# --- Debian packages -------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    log "apt: all of ${APT_PACKAGES[*]} already installed"
else
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
dup08=$(command -v duplicity) || die "duplicity not on PATH after apt install"
log "upstream 0.8: $("$dup08" --version) at $dup08"

# --- duplicity 3.x in a venv -----------------------------------------------------------------
have_dup3() {
    [ -x "$VENV/bin/duplicity" ] && "$VENV/bin/duplicity" --version 2>/dev/null | grep -q "^duplicity $DUP3_VERSION"
}
if have_dup3; then
    log "venv: duplicity $DUP3_VERSION already at $VENV"
else
    # Any CPython 3 with a working venv module will do: the wheel bundles its own librsync.
    py=""
    for cand in python3 /usr/bin/python3; do
        c=$(command -v "$cand" || true)
        [ -n "$c" ] || continue
        if "$c" -c 'import venv, ensurepip' 2>/dev/null; then py=$c; break; fi
    done
    if [ -z "$py" ]; then
        log "apt: no python3 with venv/ensurepip; installing python3-venv"
        "${SUDO[@]}" apt-get update -q
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
        py=/usr/bin/python3
    fi
    log "venv: creating $VENV with $py ($("$py" --version 2>&1))"
    "${SUDO[@]}" rm -rf "$VENV"
    "${SUDO[@]}" "$py" -m venv "$VENV"
    log "venv: pip install --no-deps duplicity==$DUP3_VERSION fasteners>=0.19"
    "${SUDO[@]}" "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
        "duplicity==$DUP3_VERSION" 'fasteners>=0.19'
    have_dup3 || die "duplicity $DUP3_VERSION does not run from $VENV"
fi
log "upstream 3.x: $("$VENV/bin/duplicity" --version) at $VENV/bin/duplicity"

# --- moto (an S3 server), boto3 and duplicity 3.x in a second venv ---------------------------
# duplicity's boto3 backend needs boto3 in the same interpreter, so this venv has its own
# duplicity, installed without its dependencies (some of its other backends' dependencies no
# longer build): the boto3 backend needs only boto3 and fasteners.
have_moto() {
    [ -x "$MOTO_VENV/bin/moto_server" ] && [ -x "$MOTO_VENV/bin/duplicity" ] &&
        "$MOTO_VENV/bin/python" -c 'import boto3, moto' 2>/dev/null &&
        "$MOTO_VENV/bin/duplicity" --version 2>/dev/null | grep -q "^duplicity $DUP3_VERSION"
}
if have_moto; then
    log "venv: moto, boto3 and duplicity $DUP3_VERSION already at $MOTO_VENV"
else
    py=$(command -v /usr/bin/python3 || command -v python3)
    log "venv: creating $MOTO_VENV with $py"
    "${SUDO[@]}" rm -rf "$MOTO_VENV"
    "${SUDO[@]}" "$py" -m venv "$MOTO_VENV"
    log "venv: pip install moto[server] boto3 fasteners; duplicity==$DUP3_VERSION --no-deps"
    "${SUDO[@]}" "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check \
        'moto[server]' boto3 'fasteners>=0.19'
    "${SUDO[@]}" "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
        "duplicity==$DUP3_VERSION"
    have_moto || die "moto_server, boto3 or duplicity $DUP3_VERSION missing from $MOTO_VENV"
fi
log "s3 server: $MOTO_VENV/bin/moto_server"
log "done"
