#!/usr/bin/env bash
# dupmirror's main job on an embedded example, on a fresh Debian machine with Rust:
# installs the build dependencies it lacks, builds dupmirror, then mirrors the small
# duplicity repository committed in testdata/repos/gz-08 (a full and three incrementals
# written by duplicity 0.8.22) the way a mirror host would: an early first sync, a run
# that catches up, a "nothing new" poll, a verify, and a repair of a damaged file; then an
# encrypted repository (testdata/encrypted, symmetric gpg, test passphrase in a file).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libgpgme-dev >/dev/null 2>&1 || missing+=(libgpgme-dev)
dpkg -s libisal-dev >/dev/null 2>&1 || missing+=(libisal-dev)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "== building dupmirror (release)"
cargo build --release --quiet
dm=target/release/dupmirror
repo=testdata/repos/gz-08
work=$(mktemp -d /tmp/dupmirror-demo.XXXXXX)
# A private, short GNUPGHOME (gpg-agent's socket lives in it), stopped on exit.
export GNUPGHOME=$(mktemp -d /tmp/g.XXXXXX)
trap 'gpgconf --homedir "$GNUPGHOME" --kill gpg-agent 2>/dev/null; rm -rf "$work" "$GNUPGHOME"' EXIT
dest=$work/mirror

run() { echo "\$ dupmirror $*" | sed "s|$work|\$WORK|g"; "$dm" "$@" 2>&1 | sed "s|$work|\$WORK|g"; echo; }

echo "== the repository the master publishes"
run status "$repo"
echo "== a host's first sync, made when only the full backup existed"
run sync "$repo" "$dest" --time 2023-11-14T22:13:20Z
echo "== the next run applies only the sets that are new, in one pass"
run sync "$repo" "$dest"
echo "== nothing new: one listing, exit 0"
run sync "$repo" "$dest"
echo "== verify DEST against the backup's signatures (no volume is read)"
run verify "$repo" "$dest"
echo "== someone edits a mirrored file; verify notices, --repair restores just that file"
printf 'tampered' >"$dest/docs/a.txt"
run verify "$repo" "$dest" || true
run verify "$repo" "$dest" --repair
echo "== the mirrored tree (dupmirror's state lives beside it, in .mirror.dupmirror)"
(cd "$dest" && find . | sort)
echo
echo "== an encrypted repository: decrypted as a stream through gpg (gpgme)"
run sync testdata/encrypted/repo "$work/encrypted" --passphrase-file testdata/encrypted/passphrase
run verify testdata/encrypted/repo "$work/encrypted" --passphrase-file testdata/encrypted/passphrase
