#!/usr/bin/env bash
# Regenerate testdata/encrypted/: a small symmetrically encrypted duplicity repository (a full
# and two incrementals, written by upstream duplicity 0.8.22 with gpg's defaults: AES256, ZIP,
# MDC) and, for each backup time T, the tree `duplicity restore --time T` gives, as
# testdata/encrypted/expected/<T>.tree (format: tests/support/tree_snapshot.py). Both 0.8.22
# and 3.2.1 must restore the same trees.
#
# The passphrase is a test value, committed in testdata/encrypted/passphrase. Regenerating
# changes every repository file (gpg salts and session keys are random), not the trees.
#
# Needs duplicity 0.8 on PATH, 3.x at $DUPMIRROR_DUPLICITY3 (default /opt/dup3/bin/duplicity)
# and gpg: run scripts/install-deps.sh first; run as root so owners are those of the trees.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/testdata/encrypted
DUP08=$(command -v duplicity || true)
DUP3=${DUPMIRROR_DUPLICITY3:-/opt/dup3/bin/duplicity}
PY=${PYTHON:-python3}
T0=1700000000

die() { echo "make-testdata-gpg: ERROR: $*" >&2; exit 1; }
[ -n "$DUP08" ] && "$DUP08" --version | grep -q '^duplicity 0\.8\.' || die "need duplicity 0.8 on PATH"
"$DUP3" --version | grep -q '^duplicity 3\.' || die "need duplicity 3.x at $DUP3"
command -v gpg >/dev/null || die "need gpg"

WORK=$(mktemp -d /tmp/mkgpg.XXXXXX)
# A private, short GNUPGHOME (gpg-agent's socket lives in it) that caches nothing.
export GNUPGHOME=$(mktemp -d /tmp/g.XXXXXX)
printf 'default-cache-ttl 0\nmax-cache-ttl 0\n' >"$GNUPGHOME/gpg-agent.conf"
trap 'gpgconf --homedir "$GNUPGHOME" --kill gpg-agent; rm -rf "$WORK" "$GNUPGHOME"' EXIT

rm -rf "$OUT/repo" "$OUT/expected"
mkdir -p "$OUT/repo" "$OUT/expected"
PASSPHRASE=$(head -n 1 "$OUT/passphrase")
export PASSPHRASE

S=$WORK/src/demo
t() { echo $((T0 + $1 * 1000)); }
put() {                  # put MTIME PATH CONTENT
    mkdir -p "$(dirname "$S/$2")"
    printf '%s' "$3" >"$S/$2"
    touch -d "@$1" "$S/$2"
}
backup() {               # backup full|incremental K
    local m=$(($(t "$2") - 100))
    find "$S" -type d -exec touch -d "@$m" {} +
    # A relative source path keeps the temp dir out of the manifests' Localdir line.
    (cd "$WORK" && "$DUP08" "$1" --current-time "$(t "$2")" --archive-dir "$WORK/arch" \
        --name demo src/demo "file://$OUT/repo") >"$WORK/log" 2>&1 || { cat "$WORK/log" >&2; die "backup $1 $2"; }
}

mkdir -p "$S"
m=$(($(t 0) - 100))
put $m README.txt "an encrypted dupmirror test repository; passphrase: testdata/encrypted/passphrase
"
put $m docs/a.txt "alpha
"
put $m docs/b.txt "bravo
"
"$PY" -c 'import random,sys; sys.stdout.buffer.write(random.Random(7).randbytes(30000))' >"$S/data.bin"
touch -d "@$m" "$S/data.bin"
ln -s docs/a.txt "$S/link"
backup full 0

m=$(($(t 1) - 100))
put $m docs/a.txt "alpha, changed at step 1
"
put $m docs/c.txt "charlie
"
backup incremental 1

m=$(($(t 2) - 100))
rm "$S/docs/b.txt"
"$PY" -c 'import random,sys; f=open(sys.argv[1],"r+b"); f.seek(9000); f.write(random.Random(8).randbytes(500))' "$S/data.bin"
touch -d "@$m" "$S/data.bin"
ln -sfn docs/c.txt "$S/link"
backup incremental 2

for k in 0 1 2; do
    time=$(t $k)
    for v in 08 3; do
        dup=$DUP08
        [ $v = 3 ] && dup=$DUP3
        rm -rf "$WORK/restore" "$WORK/rarch"
        "$dup" restore --time "$time" --archive-dir "$WORK/rarch" --name r "file://$OUT/repo" \
            "$WORK/restore" >"$WORK/log" 2>&1 || { cat "$WORK/log" >&2; die "restore $time with $v"; }
        "$PY" "$ROOT/tests/support/tree_snapshot.py" "$WORK/restore" "$WORK/tree-$v"
    done
    diff -u "$WORK/tree-08" "$WORK/tree-3" >&2 || die "0.8 and 3.x restore $time differently"
    cp "$WORK/tree-08" "$OUT/expected/$time.tree"
done
du -sh "$OUT" >&2
