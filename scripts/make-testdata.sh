#!/usr/bin/env bash
# Regenerate the small fixed duplicity repositories under testdata/repos/<name>/ and, for each
# repository and backup time T, the tree that upstream `duplicity restore --time T` produces,
# as testdata/expected/<name>/<T>.tree (format: tests/support/tree_snapshot.py).
#
# Written by upstream duplicity 0.8.22 (`duplicity` on PATH) and 3.2.1
# ($DUPMIRROR_DUPLICITY3, default /opt/dup3/bin/duplicity); run scripts/install-deps.sh first.
# Run as root, so that owners, fifos and permissions are what the expected trees say.
#
# Deterministic: backup times are pinned with --current-time (T = 1700000000 + k*1000), every
# file gets a fixed mtime and seeded content, directories get the step's mtime. File names and
# expected trees come out identical on every run; volume bytes do not (gzip headers, host name
# in manifests), so rerunning shows changed repository files in git.
#
# Usage: scripts/make-testdata.sh            (rewrites testdata/repos and testdata/expected)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DUP08=$(command -v duplicity || true)
DUP3=${DUPMIRROR_DUPLICITY3:-/opt/dup3/bin/duplicity}
PY=${PYTHON:-python3}
SNAP="$ROOT/tests/support/tree_snapshot.py"
T0=1700000000

die() { echo "make-testdata: ERROR: $*" >&2; exit 1; }
log() { echo "make-testdata: $*" >&2; }
[ -n "$DUP08" ] && "$DUP08" --version | grep -q '^duplicity 0\.8\.' || die "need duplicity 0.8 on PATH"
"$DUP3" --version | grep -q '^duplicity 3\.' || die "need duplicity 3.x at $DUP3"
[ "$(id -u)" -eq 0 ] || log "warning: not root; owners in the expected trees will be $(id -u)"

WORK=$(mktemp -d /tmp/mktd.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
REPOS="$ROOT/testdata/repos"
EXPECTED="$ROOT/testdata/expected"
rm -rf "$REPOS" "$EXPECTED"
mkdir -p "$REPOS" "$EXPECTED"

t() { echo $((T0 + $1 * 1000)); }

# --- building source trees ---------------------------------------------------------------------
# All paths are relative to the current source directory ($S).
M=0                      # mtime for what the current step writes
S=""                     # current source directory

step() { M=$(($(t "$1") - 100)); }
put() {                  # put PATH CONTENT: a regular file with mtime $M
    mkdir -p "$S/$(dirname "$1")"
    rm -rf "${S:?}/$1"
    printf '%s' "$2" >"$S/$1"
    touch -h -d "@$M" "$S/$1"
}
rnd() {                  # rnd PATH SEED SIZE: seeded pseudo-random bytes
    mkdir -p "$S/$(dirname "$1")"
    rm -rf "${S:?}/$1"
    "$PY" -c 'import random,sys; sys.stdout.buffer.write(random.Random(int(sys.argv[1])).randbytes(int(sys.argv[2])))' "$2" "$3" >"$S/$1"
    touch -h -d "@$M" "$S/$1"
}
patch_rnd() {            # patch_rnd PATH OFFSET SEED SIZE: overwrite a region in place
    "$PY" - "$S/$1" "$2" "$3" "$4" <<'PYEOF'
import random, sys
path, off, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path, "r+b") as f:
    f.seek(off)
    f.write(random.Random(seed).randbytes(size))
PYEOF
    touch -h -d "@$M" "$S/$1"
}
dir() { mkdir -p "$S/$1"; }
lnk() { mkdir -p "$S/$(dirname "$1")"; rm -rf "${S:?}/$1"; ln -s "$2" "$S/$1"; touch -h -d "@$M" "$S/$1"; }
fifo() { mkdir -p "$S/$(dirname "$1")"; rm -rf "${S:?}/$1"; mkfifo "$S/$1"; touch -h -d "@$M" "$S/$1"; }
del() { rm -rf "${S:?}/$1"; }
settle() { find "$S" -type d -exec touch -d "@$M" {} +; }   # directories get the step's mtime

# --- upstream ------------------------------------------------------------------------------------
# backup DUP NAME full|incremental K [options...]: back up $S into testdata/repos/NAME at t(K)
backup() {
    local dup=$1 name=$2 kind=$3 k=$4
    shift 4
    settle
    # A relative source path keeps the temp dir out of the manifests' Localdir line.
    (cd "$WORK" && env ${BACKUP_ENV:-} "$dup" "$kind" "$@" --no-encryption \
        --current-time "$(t "$k")" --archive-dir "$WORK/arch" --name "$name" \
        "src/$name" "file://$REPOS/$name") >"$WORK/log" 2>&1 || { cat "$WORK/log" >&2; die "backup $name $kind $k failed"; }
}

# expect NAME K [restore options...]: restore at t(K) with 0.8.22 and 3.2.1 (3.2.1 skipped
# when NO_DUP3_RESTORE=1: it cannot restore past an incomplete set), require identical trees,
# and write testdata/expected/NAME/<t(K)>.tree
expect() {
    local name=$1 k=$2
    shift 2
    local time out tree v dup
    time=$(t "$k")
    mkdir -p "$EXPECTED/$name"
    tree="$EXPECTED/$name/$time.tree"
    for v in 08 3; do
        [ "$v" = 3 ] && [ "${NO_DUP3_RESTORE:-0}" = 1 ] && continue
        dup=$DUP08
        [ "$v" = 3 ] && dup=$DUP3
        out="$WORK/restore-$v"
        rm -rf "$out" "$WORK/rarch"
        env ${BACKUP_ENV:-} "$dup" restore "$@" --no-encryption --time "$time" \
            --archive-dir "$WORK/rarch" --name r "file://$REPOS/$name" "$out" >"$WORK/log" 2>&1 \
            || { cat "$WORK/log" >&2; die "restore $name at $time with $v failed"; }
        "$PY" "$SNAP" "$out" "$WORK/tree-$v"
    done
    if [ "${NO_DUP3_RESTORE:-0}" != 1 ]; then
        diff -u "$WORK/tree-08" "$WORK/tree-3" >&2 || die "0.8 and 3.x restore $name at $time differently"
    fi
    cp "$WORK/tree-08" "$tree"
}

new_repo() {             # new_repo NAME: fresh source dir $S and archive dir
    S="$WORK/src/$1"
    rm -rf "$S" "$WORK/arch"
    mkdir -p "$S"
    log "repository $1"
}

options() {              # options NAME OPTION...: dupmirror/duplicity options for NAME
    mkdir -p "$EXPECTED/$1"
    local n=$1
    shift
    printf '%s\n' "$@" >"$EXPECTED/$n/options"
}

# --- the basic tree: full + 3 incrementals -----------------------------------------------------
basic0() {
    put README.txt "dupmirror test repository
"
    put docs/a.txt "alpha
"
    put docs/b.txt "bravo
"
    put bin/tool "#!/bin/sh
echo tool
"
    chmod 0755 "$S/bin/tool"
    lnk link docs/a.txt
    rnd data.bin 1 20000
}
basic1() {
    put docs/a.txt "alpha, changed at step 1
"
    put docs/c.txt "charlie
"
    chmod 0700 "$S/bin/tool"
}
basic2() {
    del docs/b.txt
    patch_rnd data.bin 5000 2 300
    lnk link docs/c.txt
}
basic3() {
    del bin
    put docs/sub/d.txt "delta
"
    dir var/empty
    chmod 0600 "$S/README.txt"
}

basic_repo() {           # basic_repo NAME DUP [backup options...]
    local name=$1 dup=$2
    shift 2
    new_repo "$name"
    step 0; basic0; backup "$dup" "$name" full 0 "$@"
    step 1; basic1; backup "$dup" "$name" incremental 1 "$@"
    step 2; basic2; backup "$dup" "$name" incremental 2 "$@"
    step 3; basic3; backup "$dup" "$name" incremental 3 "$@"
}

basic_repo gz-08 "$DUP08"
for k in 0 1 2 3; do expect gz-08 $k; done

basic_repo gz-3 "$DUP3" --jsonstat
for k in 0 1 2 3; do expect gz-3 $k; done

small_repo() {           # small_repo NAME DUP [backup options...]: full + 2 incrementals
    local name=$1 dup=$2
    shift 2
    new_repo "$name"
    step 0; basic0; backup "$dup" "$name" full 0 "$@"
    step 1; basic1; backup "$dup" "$name" incremental 1 "$@"
    step 2; basic2; backup "$dup" "$name" incremental 2 "$@"
}

small_repo plain-08 "$DUP08" --no-compression
for k in 0 1 2; do expect plain-08 $k; done
small_repo plain-3 "$DUP3" --no-compression
for k in 0 1 2; do expect plain-3 $k; done

small_repo short-08 "$DUP08" --short-filenames
for k in 0 1 2; do expect short-08 $k; done

BACKUP_ENV="TZ=America/New_York" small_repo old-08 "$DUP08" --old-filenames
for k in 0 1 2; do BACKUP_ENV="TZ=America/New_York" expect old-08 $k; done

PREFIXES=(--file-prefix=P_ --file-prefix-archive=A_ --file-prefix-manifest=M_ --file-prefix-signature=S_)
for v in 08 3; do
    dup=$DUP08
    [ $v = 3 ] && dup=$DUP3
    small_repo prefix-$v "$dup" "${PREFIXES[@]}"
    options prefix-$v "${PREFIXES[@]}"
    for k in 0 1 2; do expect prefix-$v $k "${PREFIXES[@]}"; done
done

# --- a file across volumes -------------------------------------------------------------------
new_repo volsize-08
step 0
put a.txt "before the big file
"
rnd big.bin 7 2300000
put z.txt "after the big file
"
backup "$DUP08" volsize-08 full 0 --volsize 1
step 1
patch_rnd big.bin 1100000 8 100000
backup "$DUP08" volsize-08 incremental 1 --volsize 1
for k in 0 1; do expect volsize-08 $k; done

# --- edge cases ----------------------------------------------------------------------------------
edge0() {
    put plain.txt "plain
"
    put "$(printf 'caf\xc3\xa9.txt')" "café
"
    put "$(printf '\xe6\x97\xa5\xe6\x9c\xac')/file" "unicode dir
"
    put "$(printf 'bad\xff\xfename')" "not utf-8
"
    put "$(printf 'n%.0s' $(seq 1 150))" "name of 150 bytes
"
    put "with space.txt" "space
"
    put empty ""
    dir emptydir
    put dir2file/child "becomes a file
"
    put file2dir "becomes a dir
"
    put subtree/a/b/file "deep
"
    put subtree/c "c
"
    lnk link2file plain.txt
    lnk link2dir subtree
    lnk dangling "nowhere at all"
    fifo fifo
    put perms.txt "permissions change
"
    chmod 0644 "$S/perms.txt"
    chmod 0750 "$S/emptydir"
}
edge1() {
    del dir2file
    put dir2file "now a file
"
    del file2dir
    put file2dir/child "now a dir
"
    del subtree
    chmod 4755 "$S/perms.txt"
    chmod 0700 "$S/emptydir"
    put "$(printf 'bad\xff\xfename')" "not utf-8, changed
"
    lnk link2file "$(printf 'caf\xc3\xa9.txt')"
}
edge2() {
    put subtree/a/b/file "deep, recreated
"
    dir subtree/new
    del "$(printf 'n%.0s' $(seq 1 150))"
    put empty "not empty any more
"
    del fifo
    put fifo "fifo became a file
"
}
for v in 08 3; do
    dup=$DUP08
    [ $v = 3 ] && dup=$DUP3
    new_repo edge-$v
    step 0; edge0; backup "$dup" edge-$v full 0
    step 1; edge1; backup "$dup" edge-$v incremental 1
    step 2; edge2; backup "$dup" edge-$v incremental 2
    for k in 0 1 2; do expect edge-$v $k; done
done

# --- two chains: full, inc, full, inc ----------------------------------------------------------
for v in 08 3; do
    dup=$DUP08
    [ $v = 3 ] && dup=$DUP3
    new_repo chains-$v
    step 0; basic0; backup "$dup" chains-$v full 0
    step 1; basic1; backup "$dup" chains-$v incremental 1
    step 2; basic2; backup "$dup" chains-$v full 2
    step 3; basic3; backup "$dup" chains-$v incremental 3
    for k in 0 1 2 3; do expect chains-$v $k; done
done

# --- a set in progress, and an orphaned incremental (0.8 semantics; 3.x cannot restore) -------
sets_of() {              # sets_of NAME K: files of the incremental set ending at t(K)
    local end
    end=$(TZ=UTC date -d "@$(t "$2")" +%Y%m%dT%H%M%SZ)
    (cd "$REPOS/$1" && ls | grep -E "^duplicity-(inc|new-signatures)\..*\.to\.$end\.")
}

new_repo incomplete-08
step 0; basic0; backup "$DUP08" incomplete-08 full 0
step 1; basic1; backup "$DUP08" incomplete-08 incremental 1
step 2; basic2; backup "$DUP08" incomplete-08 incremental 2
# The last backup is still uploading: its volumes and sigtar are there, its manifest is not.
rm "$REPOS/incomplete-08/$(sets_of incomplete-08 2 | grep '\.manifest$')"
for k in 0 1 2; do NO_DUP3_RESTORE=1 expect incomplete-08 $k; done

new_repo orphan-08
step 0; basic0; backup "$DUP08" orphan-08 full 0
step 1; basic1; backup "$DUP08" orphan-08 incremental 1
step 2; basic2; backup "$DUP08" orphan-08 incremental 2
step 3; basic3; backup "$DUP08" orphan-08 incremental 3
# The set t1 -> t2 is gone: the set t2 -> t3 links to no chain.
for f in $(sets_of orphan-08 2); do rm "$REPOS/orphan-08/$f"; done
for k in 0 1 2 3; do NO_DUP3_RESTORE=1 expect orphan-08 $k; done

# The broken repositories must restore like the state before the damage.
cmp -s "$EXPECTED/incomplete-08/$(t 1).tree" "$EXPECTED/incomplete-08/$(t 2).tree" \
    || die "incomplete-08: t2 should restore as t1"
cmp -s "$EXPECTED/orphan-08/$(t 1).tree" "$EXPECTED/orphan-08/$(t 3).tree" \
    || die "orphan-08: t3 should restore as t1"

du -sh "$ROOT/testdata" >&2
log "done"
