#!/usr/bin/env bash
# dupmirror's benchmark (issue 7): dupmirror side by side with what a mirror admin would use
# instead, on the same deterministic data, in one run. Not part of the test suite.
#
# Usage: scripts/bench.sh [--quick] [--reps N] [--only LIST] [--work DIR] [--tmpfs DIR]
#                         [--writer 0.8|3] [--dupmirror BIN] [--baseline BIN] [--no-install]
#                         [--out FILE]
#
#   --quick       small corpora (1,000 files / 10 MB, big file 256 MiB): a smoke test of a few
#                 minutes. Default: the issue's sizes (50,000 files / ~1 GB, 10x = 500,000
#                 files, a 4 GiB file); the first run spends most of its time on backups.
#   --reps N      timed runs per figure (default 3); tables show medians and min-max.
#   --only LIST   comma-separated subset of: bootstrap,freshext4,incremental,scaling,catchup,
#                 memory,newfull,atomic,million
#   --work DIR    disk scratch (default /var/tmp/dupmirror-bench): corpora and repositories
#                 are cached there by parameters, so later runs skip generation and backups.
#   --tmpfs DIR   tmpfs scratch for the tmpfs bootstrap (default /dev/shm/dupmirror-bench)
#   --writer V    upstream duplicity that writes the backups (default 0.8 = /usr/bin/duplicity)
#   --dupmirror B measure this binary instead of building the worktree
#   --baseline B  also time this other dupmirror binary (--no-fsync rows of sections 1-3),
#                 round-robin with the rest: before/after figures under the same load
#   --no-install  do not apt-get/pip anything (fail if a tool is missing)
#   --out FILE    also write the markdown report to FILE (e.g. docs/bench.md)
#
# What is measured (wall, CPU user+sys and peak RSS from /usr/bin/time -v; medians of N):
#   1. bootstrap: `dupmirror sync` into an empty DEST (with and without --no-fsync) vs
#      `duplicity restore` (0.8.22 and 3.2.1) vs `tar -xzf` of the same full's volumes, one
#      after the other (the decompression ceiling), on disk and on tmpfs;
#   2. incremental: one set with 1% of the files changed (70% rewritten, 15% deleted, 15%
#      new) vs `rsync -a --delete` from the changed tree and `rsync --read-batch` of a batch
#      written for the same change;
#   3. scaling: the same change on a tree with 10x the files (the extra files are untouched);
#   4. catch-up: 10 pending incrementals in one run (one merged commit) vs ten runs, one set
#      each, vs one set, on three histories: random 1% changes, the same 1% rewritten by every
#      set (target: one run <= 2x one set), disjoint 1% slices (target: one run <= 1.2x one
#      set holding all ten slices);
#   5. memory: peak RSS on the largest corpus (bootstrap, incremental and verify, on tmpfs)
#      and on one sparse file of several GB (bootstrap and an incremental that patches it);
#   6. new full chain (issue 4): bytes read by a host moving to a new full after a 1% change,
#      as a fraction of the full's size;
#   7. atomic (issue 14): the 1% incremental with `sync --atomic` vs in place: the standby one
#      generation behind (two sets, the steady state), and the standby at the live tree's
#      backup (one set), on the base corpus and on the 10x-files corpus.
#   8. bootstrap on a fresh ext4 (issue 15 item 3): dupmirror vs `tar -xzf`, each run on a
#      file system made for it and each command ending in `sync -f` (see fresh_ext4_group).
#   9. million: peak RSS of bootstrap, incremental and verify on a tree of 1,000,000 entries
#      (issue 15 item 2: memory must not grow with the number of files), on tmpfs.
# Between runs DEST is reset untimed, then `sync` flushes the previous run's dirty pages so no
# run pays for another's writeback. Caches stay warm (repositories are read from the page
# cache); every dupmirror result is checked against the source tree (rsync -c dry run) before
# it is timed.
#
# Resets never delete on disk: on an ext4 without a journal (as on these machines), creating
# an inode skips every inode of its group deleted in the last 60 s (up to 6 min while the
# inode table is dirty), one buffer lookup each (find_inode_bit -> recently_deleted), so a
# run right after `rm -rf` of the previous 50,000-file DEST spends most of its time in that
# scan (quadratic: seen as 25 s of system time for tar). A first sync into a new disk never
# pays it. So old outputs are renamed into a trash folder (rsync resets use --backup-dir),
# which is emptied after a group, followed by `sync` and a 65 s pause (not with --quick).
# Emptying is slow here (the file system is mounted with `discard`): minutes per group.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/scripts/bench"
QUICK=0 REPS=3 ONLY="bootstrap,freshext4,incremental,scaling,catchup,memory,newfull,atomic,million" INSTALL=1 OUT="" DM="" BASELINE=""
WORK=/var/tmp/dupmirror-bench TMPFS=/dev/shm/dupmirror-bench WRITER=0.8
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --work) WORK=$2; shift ;;
        --tmpfs) TMPFS=$2; shift ;;
        --writer) WRITER=$2; shift ;;
        --dupmirror) DM=$(realpath "$2"); shift ;;
        --baseline) BASELINE=$(realpath "$2"); shift ;;
        --no-install) INSTALL=0 ;;
        --out) OUT=$(realpath -m "$2"); shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf 'bench %(%H:%M:%S)T: %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
case "$WORK$TMPFS" in *[[:space:]]*) die "--work and --tmpfs must not contain whitespace" ;; esac

if [ "$QUICK" = 1 ]; then
    BASE_FILES=1000 BASE_BYTES=10000000 VOLSIZE=1 CHANGES=10 INCS=10
    EXTRA_FILES=9000 EXTRA_BYTES=10000000 BIG_BYTES=$((256 << 20))
    MILLION_EXTRA_FILES=49000 MILLION_EXTRA_BYTES=20000000
else
    BASE_FILES=50000 BASE_BYTES=1070000000 VOLSIZE=50 CHANGES=500 INCS=10
    EXTRA_FILES=450000 EXTRA_BYTES=900000000 BIG_BYTES=$((4 << 30))
    MILLION_EXTRA_FILES=950000 MILLION_EXTRA_BYTES=950000000
fi
SEED=7
T0=1700000000
tk() { echo $((T0 + $1 * 3600)); }

# --- tools -----------------------------------------------------------------------------------
DUP3_VENV="${DUPMIRROR_DUP3_VENV:-/opt/dup3}"
if [ "$INSTALL" = 1 ]; then
    # duplicity 0.8.22, rsync, pigz and the duplicity 3.2.1 venv: the project's installer.
    bash "$ROOT/scripts/install-deps.sh"
    if [ ! -x /usr/bin/time ]; then
        log "apt: installing time"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q time
    fi
fi
DUP08=/usr/bin/duplicity
DUP3="$DUP3_VENV/bin/duplicity"
for t in "$DUP08" "$DUP3" /usr/bin/time rsync tar gzip python3 mkfs.ext4 losetup; do
    command -v "$t" >/dev/null || die "$t is missing (run without --no-install)"
done
case "$WRITER" in
    0.8) DUPW=$DUP08 ;;
    3) DUPW=$DUP3 ;;
    *) die "--writer must be 0.8 or 3" ;;
esac
if [ -z "$DM" ]; then
    log "building dupmirror (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin dupmirror)
    DM="${CARGO_TARGET_DIR:-$ROOT/target}/release/dupmirror"
fi
[ -x "$DM" ] || die "no dupmirror binary at $DM"

# Scratch of this run only (suffixed with its pid): two bench.sh at once on one machine must
# not reset or remove each other's DEST and state mid-run (the likeliest origin of issue 15's
# one-off ENOENT). Scratch left by runs that are gone is removed at the start.
RUN="$WORK/run.$$" TRUN="$TMPFS/run.$$" TRASH="$WORK/trash.$$"
for old in "$WORK"/run.* "$WORK"/trash.*; do
    if [ -e "$old" ] && ! kill -0 "${old##*.}" 2>/dev/null; then mkdir -p "$TRASH" && mv "$old" "$TRASH/"; fi
done
for old in "$TMPFS"/run.*; do
    if [ -e "$old" ] && ! kill -0 "${old##*.}" 2>/dev/null; then rm -rf "$old"; fi
done
mkdir -p "$RUN" "$TRUN"
RESULTS="$WORK/results-$(date -u +%Y%m%dT%H%M%SZ).tsv"
TF="$WORK/time.out.$$" CMDLOG="$WORK/cmd.log.$$"
FEXT_IMG="$RUN/fresh-ext4.img" FEXT_MNT="$RUN/fresh-ext4"
# The fresh ext4 (its section) unmounted, its loop device detached and its image removed.
FEXT_RELEASE="if mountpoint -q $FEXT_MNT; then umount $FEXT_MNT; fi; losetup -j $FEXT_IMG | cut -d: -f1 | xargs -r -n1 losetup -d; rm -f $FEXT_IMG"
fresh_ext4_release() { [ ! -e "$FEXT_IMG" ] || bash -c "$FEXT_RELEASE"; }
trap 'fresh_ext4_release; rm -rf "$TRUN" "$TRASH" "$RUN" "$TF" "$CMDLOG"' EXIT
: >"$RESULTS"

# --- corpora ---------------------------------------------------------------------------------
# make_corpus NAME FILES BYTES EXTRA_FILES EXTRA_BYTES INCS: a tree, its history of INCS
# mutation steps, and a duplicity repository with a full at T0 and one incremental per step.
# Keeps tree0/ (the full's state), tree1/ (after step 1) and src/ (the last state); with
# KEEP_TREES=0 only src/ (the million-entry corpus: each copy costs GBs of inodes). Cached
# under a key of every parameter and of the generator's source.
# corpus_lock: true when $CORPUS is complete; otherwise holds $CORPUS.lock (a second bench.sh
# generating the same corpus waits for the first instead of removing its half-made copy).
corpus_lock() {
    exec {CORPUS_LOCK}>"$CORPUS.lock"
    flock "$CORPUS_LOCK"
    [ -e "$CORPUS/complete" ] && corpus_unlock
}
corpus_unlock() { exec {CORPUS_LOCK}>&-; }
dup_backup() { # KIND SRC NAME TIME [DUPLICITY OPTION...]
    "$DUPW" "$1" --no-encryption --volsize "$VOLSIZE" --archive-dir "$CORPUS/cache" --name bench \
        --current-time "$4" -v error --no-print-statistics "${@:5}" "$2" "file://$CORPUS/repo" >/dev/null
}
make_corpus() {
    local name=$1 files=$2 bytes=$3 xfiles=$4 xbytes=$5 incs=$6
    local key
    key=$(printf '%s ' "$@" "$SEED" "$VOLSIZE" "$CHANGES" "$WRITER" "$(cat "$HERE/corpus.py")" | sha1sum | cut -c1-10)
    CORPUS="$WORK/corpus-$name-$key"
    corpus_lock && return
    log "corpus $name: generating $files(+$xfiles) files, backing up with $DUPW (once; cached)"
    rm -rf "$CORPUS" && mkdir -p "$CORPUS"
    python3 "$HERE/corpus.py" init "$CORPUS/src" --files "$files" --bytes "$bytes" --seed "$SEED" \
        --volsize "$VOLSIZE" --extra-files "$xfiles" --extra-bytes "$xbytes"
    [ "${KEEP_TREES:-1}" = 0 ] || cp -a "$CORPUS/src" "$CORPUS/tree0"
    dup_backup full "$CORPUS/src" bench "$T0"
    for ((k = 1; k <= incs; k++)); do
        python3 "$HERE/corpus.py" mutate "$CORPUS/src" --step "$k" --changes "$CHANGES" --seed "$SEED"
        [ "$k" != 1 ] || [ "${KEEP_TREES:-1}" = 0 ] || cp -a "$CORPUS/src" "$CORPUS/tree1"
        dup_backup incremental "$CORPUS/src" bench "$(tk "$k")"
    done
    touch "$CORPUS/complete" && corpus_unlock
}
make_big_corpus() {
    local key
    key=$(printf '%s ' "$BIG_BYTES" "$SEED" "$VOLSIZE" "$WRITER" "$(cat "$HERE/corpus.py")" | sha1sum | cut -c1-10)
    CORPUS="$WORK/corpus-big-$key"
    corpus_lock && return
    log "corpus big: one sparse file of $BIG_BYTES bytes, backing up (once; cached)"
    rm -rf "$CORPUS" && mkdir -p "$CORPUS/src"
    python3 "$HERE/corpus.py" bigfile "$CORPUS/src/big.img" --size "$BIG_BYTES" --seed "$SEED"
    dup_backup full "$CORPUS/src" bench "$T0"
    python3 "$HERE/corpus.py" bigmutate "$CORPUS/src/big.img" --step 1 --seed "$SEED"
    dup_backup incremental "$CORPUS/src" bench "$(tk 1)"
    touch "$CORPUS/complete" && corpus_unlock
}
describe_corpus() { # TITLE [TREE]
    local n v b i tree=${2:-$CORPUS/tree0}
    n=$(find "$tree/" | wc -l)
    b=$(du -sb "$tree/" | cut -f1)
    v=$(find "$CORPUS/repo" -name 'duplicity-full.*.vol*' | wc -l)
    i=$(find "$CORPUS/repo" -name "duplicity-inc.*.to.$(date -u -d @"$(tk 1)" +%Y%m%dT%H%M%SZ).*vol*" -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    echo "$1: $n entries, $((b / 1000000)) MB in the full ($v volumes of --volsize $VOLSIZE), first incremental $((i / 1000)) kB ($CHANGES files changed)"
}

# --- measuring -------------------------------------------------------------------------------
# add LABEL PREPARE CMD queues a command; run_group SECTION runs the queue round-robin, REPS
# times (so load that drifts during the group hits every tool alike), and appends one `run`
# line per timed run to RESULTS. PREPARE runs untimed before each run, then `sync`.
LABELS=() PREPS=() CMDS=()
add() { LABELS+=("$1"); PREPS+=("$2"); CMDS+=("$3"); }
run_group() {
    local section=$1 r i load
    for ((r = 1; r <= REPS; r++)); do
        for i in "${!LABELS[@]}"; do
            bash -c "${PREPS[$i]}" >"$CMDLOG" 2>&1 || { cat "$CMDLOG" >&2; die "preparing ${LABELS[$i]} failed"; }
            sync
            load=$(cut -d' ' -f1 /proc/loadavg)
            if ! /usr/bin/time -f '%e\t%U\t%S\t%M' -o "$TF" bash -c "${CMDS[$i]}" >"$CMDLOG" 2>&1; then
                tail -20 "$CMDLOG" >&2
                die "${LABELS[$i]} failed: ${CMDS[$i]}"
            fi
            printf 'run\t%s\t%s\t%s\t%s\n' "$section" "${LABELS[$i]}" "$(tail -1 "$TF")" "$load" >>"$RESULTS"
            log "$section | ${LABELS[$i]} | run $r: $(tail -1 "$TF" | cut -f1) s"
        done
    done
    LABELS=() PREPS=() CMDS=()
}
meta() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >>"$RESULTS"; }
verify() { # EXPECTED_TREE DEST: content (checksums), names, types, modes, mtimes
    local diff
    diff=$(rsync -anc --delete -i "$1/" "$2/" | head -5)
    [ -z "$diff" ] || die "DEST $2 differs from $1: $diff"
}
# discard_cmd PATH...: a command that gets PATHs out of the way: renamed into the trash on
# disk (no inode is freed, see the top), removed on tmpfs.
discard_cmd() {
    if [ "$(stat -f -c %T "$(dirname "$1")")" = tmpfs ]; then
        echo "rm -rf $*"
    else
        echo "mkdir -p $TRASH && t=\$(mktemp -d $TRASH/XXXXXX) && for p in $*; do if [ -e \$p ]; then mv \$p \$t/; fi; done"
    fi
}
# reset_cmd TREE DEST STATE: a command that brings DEST back to TREE and the state directory
# back to STATE.0, moving what it replaces or deletes into the trash.
reset_cmd() {
    echo "mkdir -p $TRASH && rsync -a --delete --backup --backup-dir=\$(mktemp -d $TRASH/XXXXXX) $1/ $2/ && rm -rf $3 && cp -a $3.0 $3"
}
empty_trash() { # after a group on disk: free the inodes, then let them age (see the top)
    [ -d "$TRASH" ] || return 0
    log "emptying the trash"
    rm -rf "$TRASH"
    sync
    # The quick corpora are too small for the skipped inodes to matter.
    [ "$QUICK" = 1 ] || { log "waiting 65 s for ext4 to stop skipping freed inodes" && sleep 65; }
}
sync_cmd() { # DEST STATE TIME [FLAGS]: a dupmirror sync command line (of $BIN, if set)
    echo "${BIN:-$DM} sync -q --time $3 --state-dir $2 ${4:-} $CORPUS/repo $1"
}
add_baseline() { # LABEL PREPARE DEST STATE TIME: the --baseline binary's --no-fsync row
    [ -z "$BASELINE" ] || add "$1" "$2" "$(BIN=$BASELINE sync_cmd "$3" "$4" "$5" --no-fsync)"
}
full_volumes() { find "$CORPUS/repo" -name 'duplicity-full.*.vol*.difftar.gz' | sort -V | tr '\n' ' '; }

# bootstrap_group SECTION DIR: every way of getting the full into an empty DIR/dest
bootstrap_group() {
    local section=$1 d=$2 tarx
    mkdir -p "$d"
    local clean
    clean=$(discard_cmd "$d/dest" "$d/state" "$d/x")
    bash -c "$clean && $(sync_cmd "$d/dest" "$d/state" "$T0" --no-fsync)"
    verify "$CORPUS/tree0" "$d/dest"
    tarx="mkdir $d/x && for v in $(full_volumes); do tar -xzf \$v -C $d/x; done"
    add "dupmirror" "$clean" "$(sync_cmd "$d/dest" "$d/state" "$T0")"
    add "dupmirror --no-fsync" "$clean" "$(sync_cmd "$d/dest" "$d/state" "$T0" --no-fsync)"
    add_baseline "baseline --no-fsync" "$clean" "$d/dest" "$d/state" "$T0"
    add "tar -xzf" "$clean" "$tarx"
    if [ "${WITH_DUPLICITY:-1}" = 1 ]; then
        add "duplicity 0.8.22 restore" "$clean" \
            "$DUP08 restore --no-encryption --archive-dir $CORPUS/cache08 --name bench --time $T0 -v error file://$CORPUS/repo $d/x"
        add "duplicity 3.2.1 restore" "$clean" \
            "$DUP3 restore --no-encryption --archive-dir $CORPUS/cache3 --name bench --time $T0 -v error file://$CORPUS/repo $d/x"
    fi
    meta refs "$section" "tar -xzf,duplicity 0.8.22 restore"
    run_group "$section"
    bash -c "$clean"
    empty_trash
}

# fresh_ext4_group SECTION: the bootstrap on a real disk without any history. Before every
# run (untimed) a new ext4 is made: a sparse image on the disk, its inode tables and journal
# written by mkfs (no lazy init running under the timed command), attached with direct I/O
# (so `sync` means on the disk, not in the page cache of the image file) and mounted. Every
# command ends with `sync -f` of that file system: each tool pays for its own writeback, and
# no run meets another's freed inodes (see the top). The full's volumes are read once more
# just before (untimed): the page cache of this machine was once seen to have lost some of
# them, and its decoders then waited 0.7 s for the disk.
fresh_ext4_group() {
    local section=$1 m=$FEXT_MNT prep size
    size=$(( ($(du -sb "$CORPUS/tree0" | cut -f1) * 2 >> 20) + 512 ))M # whole MiB for losetup
    prep="$FEXT_RELEASE && truncate -s $size $FEXT_IMG"
    prep+=" && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 $FEXT_IMG"
    prep+=" && mkdir -p $m && mount \$(losetup -f --show --direct-io=on $FEXT_IMG) $m"
    prep+=" && cat $(full_volumes) >/dev/null"
    bash -c "$prep && $(sync_cmd "$m/dest" "$m/state" "$T0" --no-fsync)"
    verify "$CORPUS/tree0" "$m/dest"
    add "dupmirror" "$prep" "$(sync_cmd "$m/dest" "$m/state" "$T0") && sync -f $m"
    add "dupmirror --no-fsync" "$prep" "$(sync_cmd "$m/dest" "$m/state" "$T0" --no-fsync) && sync -f $m"
    [ -z "$BASELINE" ] || add "baseline --no-fsync" "$prep" \
        "$(BIN=$BASELINE sync_cmd "$m/dest" "$m/state" "$T0" --no-fsync) && sync -f $m"
    add "tar -xzf" "$prep" "mkdir $m/x && for v in $(full_volumes); do tar -xzf \$v -C $m/x; done && sync -f $m"
    meta refs "$section" "tar -xzf"
    run_group "$section"
    fresh_ext4_release
}

# incremental_group SECTION: DEST at T0, one incremental to T1, vs rsync from tree1
incremental_group() {
    local section=$1 d=$RUN/inc
    bash -c "$(discard_cmd "$d")" && mkdir -p "$d"
    bash -c "$(sync_cmd "$d/dest" "$d/state" "$T0" --no-fsync)"
    cp -a "$d/state" "$d/state.0"
    rsync -a --delete --write-batch="$d/batch" "$CORPUS/tree1/" "$d/dest/" >/dev/null
    local reset
    reset=$(reset_cmd "$CORPUS/tree0" "$d/dest" "$d/state")
    bash -c "$reset && $(sync_cmd "$d/dest" "$d/state" "$(tk 1)" --no-fsync)"
    verify "$CORPUS/tree1" "$d/dest"
    add "dupmirror" "$reset" "$(sync_cmd "$d/dest" "$d/state" "$(tk 1)")"
    add "dupmirror --no-fsync" "$reset" "$(sync_cmd "$d/dest" "$d/state" "$(tk 1)" --no-fsync)"
    add_baseline "baseline --no-fsync" "$reset" "$d/dest" "$d/state" "$(tk 1)"
    add "rsync -a --delete" "$reset" "rsync -a --delete $CORPUS/tree1/ $d/dest/"
    add "rsync --read-batch" "$reset" "rsync -a --delete --read-batch=$d/batch $d/dest/"
    meta refs "$section" "rsync -a --delete,rsync --read-batch"
    run_group "$section"
    bash -c "$(discard_cmd "$d")"
    empty_trash
}

# atomic_group SECTION: one 1% incremental with --atomic vs in place (issue 14). The trees
# are reset by rsync into the same folders (the state records their identities) and the
# link is put back, so every run starts from the same layout:
#   in place T0->T1                      DEST at T0, one set (as section 2)
#   atomic, standby at T0: T0->T1        live tree a and standby b both at T0: b takes one
#                                        set, then the switch
#   in place T1->T2                      DEST at T1, one set
#   atomic, standby one behind: T1->T2   live b at T1, standby a at T0 (the steady state
#                                        after a switch): a takes two sets, then the switch
# The last two need a second incremental (the 10x corpus has one).
atomic_group() {
    local section=$1 d=$RUN/atomic flags lab
    local trees=$d/.adest.dupmirror-trees trash="mkdir -p $TRASH && rsync -a --delete --backup --backup-dir=\$(mktemp -d $TRASH/XXXXXX)"
    bash -c "$(discard_cmd "$d")" && mkdir -p "$d"
    bash -c "$(sync_cmd "$d/dest" "$d/state" "$T0" --no-fsync)"
    cp -a "$d/state" "$d/state.0"
    local reset0 reset_a
    reset0=$(reset_cmd "$CORPUS/tree0" "$d/dest" "$d/state")
    bash -c "$(sync_cmd "$d/adest" "$d/astate" "$T0" "--no-fsync --atomic")"
    bash -c "$(sync_cmd "$trees/b" "$d/astate/tree-b" "$T0" --no-fsync)"
    cp -a "$d/astate" "$d/astate.0"
    reset_a="$trash $CORPUS/tree0/ $trees/a/ && $trash $CORPUS/tree0/ $trees/b/ && rm -rf $d/astate && cp -a $d/astate.0 $d/astate && ln -sfn .adest.dupmirror-trees/a $d/adest"
    bash -c "$reset_a && $(sync_cmd "$d/adest" "$d/astate" "$(tk 1)" --no-fsync)"
    verify "$CORPUS/tree1" "$d/adest"
    for flags in "" "--no-fsync"; do
        lab="${flags:+ $flags}"
        add "in place T0->T1$lab" "$reset0" "$(sync_cmd "$d/dest" "$d/state" "$(tk 1)" "$flags")"
        add "atomic, standby at T0: T0->T1$lab" "$reset_a" "$(sync_cmd "$d/adest" "$d/astate" "$(tk 1)" "$flags")"
    done
    if [ "$(find "$CORPUS/repo" -name 'duplicity-inc.*.manifest' | wc -l)" -ge 2 ]; then
        local reset1 reset_s
        bash -c "$(sync_cmd "$d/dest1" "$d/state1" "$(tk 1)" --no-fsync)"
        cp -a "$d/state1" "$d/state1.0"
        reset1=$(reset_cmd "$CORPUS/tree1" "$d/dest1" "$d/state1")
        # The steady state: the run above left live b at T1 and standby a at T0.
        bash -c "$reset_a && $(sync_cmd "$d/adest" "$d/astate" "$(tk 1)" "--no-fsync --grace 0")"
        cp -a "$d/astate" "$d/astate.1"
        reset_s="$trash $CORPUS/tree0/ $trees/a/ && $trash $CORPUS/tree1/ $trees/b/ && rm -rf $d/astate && cp -a $d/astate.1 $d/astate && ln -sfn .adest.dupmirror-trees/b $d/adest"
        bash -c "$reset_s && $(sync_cmd "$d/adest" "$d/astate" "$(tk 2)" "--no-fsync --grace 0")"
        [ "$(readlink "$d/adest")" = .adest.dupmirror-trees/a ] || die "the steady-state run did not switch to tree a"
        for flags in "" "--no-fsync"; do
            lab="${flags:+ $flags}"
            add "in place T1->T2$lab" "$reset1" "$(sync_cmd "$d/dest1" "$d/state1" "$(tk 2)" "$flags")"
            add "atomic, standby one behind: T1->T2$lab" "$reset_s" "$(sync_cmd "$d/adest" "$d/astate" "$(tk 2)" "$flags --grace 0")"
        done
    fi
    meta refs "$section" "in place T0->T1,in place T0->T1 --no-fsync"
    run_group "$section"
    bash -c "$(discard_cmd "$d")"
    empty_trash
}

# tree_memory_group SECTION DIR: the runs that meet every path of a large tree, in DIR (on
# tmpfs: the point is memory, and 500,000 files per run on this disk would take minutes to
# create and many more to delete, see the top): a bootstrap, the incremental, a verify of
# its result (for dupmirror and the --baseline binary), and `tar -xzf` of the full. Only one
# copy of the tree exists at a time (a million entries take some 5 GB of tmpfs): the
# incremental's DEST is reset by an untimed bootstrap, not copied from a kept one. The
# bootstrap is checked at the latest set only (KEEP_TREES=0 keeps no tree of the full).
tree_memory_group() {
    local section=$1 d=$2 clean bin lab
    clean="rm -rf $d/dest $d/state $d/x"
    bash -c "$clean" && mkdir -p "$d"
    bash -c "$(sync_cmd "$d/dest" "$d/state" "$(tk 1)" --no-fsync)"
    verify "$CORPUS/src" "$d/dest"
    for bin in "$DM" ${BASELINE:+"$BASELINE"}; do
        lab=$([ "$bin" = "$DM" ] && echo dupmirror || echo baseline)
        add "$lab --no-fsync: bootstrap" "$clean" "$(BIN=$bin sync_cmd "$d/dest" "$d/state" "$T0" --no-fsync)"
        add "$lab --no-fsync: incremental" "$clean && $(BIN=$bin sync_cmd "$d/dest" "$d/state" "$T0" --no-fsync)" \
            "$(BIN=$bin sync_cmd "$d/dest" "$d/state" "$(tk 1)" --no-fsync)"
        add "$lab verify" "true" "$bin verify --state-dir $d/state $CORPUS/repo $d/dest"
    done
    add "tar -xzf" "$clean" "mkdir $d/x && for v in $(full_volumes); do tar -xzf \$v -C $d/x; done"
    meta refs "$section" "tar -xzf"
    run_group "$section"
    bash -c "$clean"
}

HOST_NOTE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem/ {print $2}') GiB RAM, kernel $(uname -r); disk: $(df -hT "$WORK" | awk 'NR==2 {print $1" "$2", "$3}'); tmpfs: $(df -hT "$TMPFS" | awk 'NR==2 {print $2" "$3}')"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date +%s)


empty_trash # what runs that are gone left behind (above)

if wants bootstrap || wants freshext4 || wants incremental || wants catchup || wants scaling || wants newfull || wants atomic; then
    make_corpus base "$BASE_FILES" "$BASE_BYTES" 0 0 "$INCS"
    BASE=$CORPUS
fi

if wants bootstrap; then
    CORPUS=$BASE
    meta title bootstrap-disk "1. Bootstrap on disk: the full into an empty DEST"
    meta note bootstrap-disk "$(describe_corpus Corpus)"
    bootstrap_group bootstrap-disk "$RUN/boot"
    meta title bootstrap-tmpfs "1. Bootstrap on tmpfs (same corpus; repository on disk, page-cached)"
    bootstrap_group bootstrap-tmpfs "$TRUN/boot"
fi

if wants freshext4; then
    CORPUS=$BASE
    meta title fresh-ext4 "Bootstrap on a fresh ext4 (issue 15 item 3: a new file system per run, each command ending in sync)"
    meta note fresh-ext4 "$(describe_corpus Corpus)"
    fresh_ext4_group fresh-ext4
fi

if wants incremental; then
    CORPUS=$BASE
    meta title incremental "2. Incremental: one set with $CHANGES files changed (1%)"
    meta note incremental "$(describe_corpus Corpus)"
    incremental_group incremental
fi

if wants atomic; then
    CORPUS=$BASE
    meta title atomic "7. Atomic: the 1% incremental with sync --atomic vs in place"
    meta note atomic "$(describe_corpus Corpus). Trees reset untimed; the atomic rows include the live tree's dry run and the switch."
    atomic_group atomic
fi

if wants scaling || wants memory || wants atomic; then
    make_corpus scale "$BASE_FILES" "$BASE_BYTES" "$EXTRA_FILES" "$EXTRA_BYTES" 1
    SCALE=$CORPUS
fi
if wants scaling; then
    CORPUS=$SCALE
    meta title scaling "3. Scaling: the same $CHANGES-file change on a tree with 10x the files"
    meta note scaling "$(describe_corpus Corpus). The base part and the change are byte-identical to section 2's; the extra files are untouched."
    incremental_group scaling
fi

if wants atomic; then
    CORPUS=$SCALE
    meta title atomic-scaling "7. Atomic on the tree with 10x the files (the extra files untouched)"
    meta note atomic-scaling "$(describe_corpus Corpus)"
    atomic_group atomic-scaling
fi

# --- 4. catch-up (issue 15, item 1) ----------------------------------------------------------
# make_catchup_corpus MODE: the base corpus's full (its files copied, not backed up again) and
# INCS incrementals of scripts/bench/catchup.py MODE (`same`: the same 1% of the files
# rewritten by every set; `disjoint`: a new 1% slice per set). For `disjoint` also union/: the
# same full and ONE incremental holding every slice (what the INCS sets write, as one set).
# Cached like make_corpus.
make_catchup_corpus() {
    local mode=$1 c key
    key=$(printf '%s ' "$mode" "$(basename "$BASE")" "$INCS" "$CHANGES" "$SEED" "$(cat "$HERE/catchup.py")" | sha1sum | cut -c1-10)
    c="$WORK/corpus-catchup-$mode-$key"
    CORPUS=$c
    [ -e "$c/complete" ] && return
    log "corpus catch-up $mode: $INCS incrementals over the base full (once; cached)"
    rm -rf "$c" && mkdir -p "$c/repo"
    cp -a "$BASE/tree0" "$c/src"
    ln -s "$BASE/tree0" "$c/tree0"
    cp -al "$BASE"/repo/duplicity-full* "$c/repo/"
    for ((k = 1; k <= INCS; k++)); do
        python3 "$HERE/catchup.py" "$mode" "$c/src" --step "$k" --changes "$CHANGES" --seed "$SEED"
        dup_backup incremental "$c/src" bench "$(tk "$k")" --allow-source-mismatch
    done
    if [ "$mode" = disjoint ]; then
        mkdir -p "$c/union/repo"
        cp -al "$BASE"/repo/duplicity-full* "$c/union/repo/"
        CORPUS=$c/union dup_backup incremental "$c/src" bench "$(tk 1)" --allow-source-mismatch
    fi
    touch "$c/complete"
}
# catchup_group SECTION: a host at T0 (the full) catches up: one set; the INCS sets in one
# run (merged into one commit); INCS runs of one set each; with union/, the one set holding
# what the INCS sets write. The merged run's --json figures go into the section's note.
catchup_group() {
    local section=$1 d=$RUN/catchup reset steps flags lab merged
    bash -c "$(discard_cmd "$d")" && mkdir -p "$d"
    bash -c "$(sync_cmd "$d/dest" "$d/state" "$T0" --no-fsync)"
    cp -a "$d/state" "$d/state.0"
    reset=$(reset_cmd "$CORPUS/tree0" "$d/dest" "$d/state")
    bash -c "$reset"
    merged=$("$DM" sync "$CORPUS/repo" "$d/dest" --state-dir "$d/state" --time "$(tk "$INCS")" --no-fsync --json |
        python3 -c 'import json, sys; m = json.load(sys.stdin).get("merged") or {}; g = lambda k: m.get(k, 0); print("%d sets merged into one commit, %d writes saved (%.1f MB of staged files freed before the commit)" % (g("sets"), g("writes_saved"), g("bytes_saved") / 1e6))')
    verify "$CORPUS/src" "$d/dest"
    meta note "$section" "$(describe_corpus Corpus). Merged catch-up (--json): $merged."
    if [ -d "$CORPUS/union" ]; then
        local u=$d/union
        mkdir -p "$u"
        (CORPUS=$CORPUS/union && bash -c "$(sync_cmd "$u/dest" "$u/state" "$T0" --no-fsync)")
        cp -a "$u/state" "$u/state.0"
        local ureset
        ureset=$(reset_cmd "$CORPUS/tree0" "$u/dest" "$u/state")
        bash -c "$ureset && $(CORPUS=$CORPUS/union sync_cmd "$u/dest" "$u/state" "$(tk 1)" --no-fsync)"
        verify "$CORPUS/src" "$u/dest"
    fi
    for flags in "" "--no-fsync"; do
        lab="dupmirror${flags:+ $flags}" steps=""
        for ((k = 1; k <= INCS; k++)); do steps+="$(sync_cmd "$d/dest" "$d/state" "$(tk "$k")" "$flags") && "; done
        add "$lab: one set" "$reset" "$(sync_cmd "$d/dest" "$d/state" "$(tk 1)" "$flags")"
        add "$lab: $INCS sets in one run" "$reset" "$(sync_cmd "$d/dest" "$d/state" "$(tk "$INCS")" "$flags")"
        add "$lab: $INCS runs of one set" "$reset" "${steps% && }"
        if [ -d "$CORPUS/union" ]; then
            add "$lab: one set holding all $INCS slices" "$ureset" "$(CORPUS=$CORPUS/union sync_cmd "$u/dest" "$u/state" "$(tk 1)" "$flags")"
        fi
        # The --baseline binary beside it: one set and the merged run.
        if [ -n "$BASELINE" ]; then
            lab="baseline${flags:+ $flags}"
            add "$lab: one set" "$reset" "$(BIN=$BASELINE sync_cmd "$d/dest" "$d/state" "$(tk 1)" "$flags")"
            add "$lab: $INCS sets in one run" "$reset" "$(BIN=$BASELINE sync_cmd "$d/dest" "$d/state" "$(tk "$INCS")" "$flags")"
        fi
    done
    meta refs "$section" "dupmirror: one set,dupmirror --no-fsync: one set"
    run_group "$section"
    bash -c "$(discard_cmd "$d")"
    empty_trash
}

if wants catchup; then
    CORPUS=$BASE
    meta title catch-up "4. Catch-up: $INCS pending incrementals ($CHANGES files changed each, random)"
    catchup_group catch-up
    make_catchup_corpus same
    meta title catch-up-same "4. Catch-up: $INCS pending incrementals rewriting the same $CHANGES files (1%)"
    catchup_group catch-up-same
    make_catchup_corpus disjoint
    meta title catch-up-disjoint "4. Catch-up: $INCS pending incrementals rewriting disjoint slices of $CHANGES files (1% each)"
    catchup_group catch-up-disjoint
    for pair in "dupmirror --no-fsync|--no-fsync" "dupmirror|syncfs"; do
        lab=${pair%|*} how=${pair#*|}
        meta target "Catch-up, same 1% x$INCS: $INCS sets in one run ÷ one set, $how" \
            "catch-up-same:$lab: $INCS sets in one run" "catch-up-same:$lab: one set" 2
        meta target "Catch-up, disjoint 1% slices x$INCS: $INCS sets in one run ÷ one set holding them all, $how" \
            "catch-up-disjoint:$lab: $INCS sets in one run" "catch-up-disjoint:$lab: one set holding all $INCS slices" 1.2
    done
fi

if wants memory; then
    CORPUS=$SCALE
    meta title memory "5. Memory: bootstrap, incremental and verify of the largest corpus (on tmpfs)"
    meta note memory "$(describe_corpus "Largest corpus" "$CORPUS/src") (sizes after the incremental)"
    tree_memory_group memory "$TRUN/boot"
    make_big_corpus
    d=$RUN/big
    mkdir -p "$d"
    meta title memory-big "5. Memory: one sparse file of $((BIG_BYTES >> 20)) MiB (1 MiB of data every 32 MiB)"
    add "dupmirror --no-fsync: bootstrap" "$(discard_cmd "$d/dest" "$d/state")" "$(sync_cmd "$d/dest" "$d/state" "$T0" --no-fsync)"
    add "dupmirror --no-fsync: incremental patching it" "true" "$(sync_cmd "$d/dest" "$d/state" "$(tk 1)" --no-fsync)"
    run_group memory-big
    cmp "$CORPUS/src/big.img" "$d/dest/big.img" || die "the big file differs after the incremental"
    rm -rf "$d" "$TRASH"
fi

# --- issue 15 item 2: memory on a million entries --------------------------------------------
# The base corpus plus 950,000 small files under bulk/ (--quick: 49,000), one incremental.
# Only the last tree is kept (KEEP_TREES=0: the corpus takes some 9 GB of disk as it is).
# The runs of section 5, on tmpfs.
if wants million; then
    KEEP_TREES=0 make_corpus million "$BASE_FILES" "$BASE_BYTES" "$MILLION_EXTRA_FILES" "$MILLION_EXTRA_BYTES" 1
    meta title million "9. Memory on a million entries: bootstrap, incremental and verify (on tmpfs)"
    meta note million "$(describe_corpus Corpus "$CORPUS/src") (sizes after the incremental)"
    tree_memory_group million "$TRUN/million"
fi

# --- issue 4: bytes fetched for a new full chain with 1% of the files changed -----------------
# The master starts a new chain: a full of the tree after a 1% change, after the base
# corpus's chain. A host at tree0 (the old chain's full) syncs to it; dupmirror compares DEST
# with the new full's signatures and reads only the volumes holding changed files. Two
# changes: step 1's (random files all over the tree: tree1) and a clustered one (files
# consecutive in index order, newfull.py cluster). The optimum (every volume whose manifest
# range holds a path that needs data, no other) comes from newfull.py, which reads the
# manifest and compares the trees itself; dupmirror must read exactly that.
NEWFULL_MD=""
newfull_repo() { # DIR TREE: DIR/repo = the base repository plus a new full of TREE (cached)
    [ -e "$1/complete" ] && return
    log "new full chain: the base repository plus a new full of $(basename "$2") (once; cached)"
    rm -rf "$1" && mkdir -p "$1" && cp -al "$BASE/repo" "$1/repo"
    "$DUPW" full --no-encryption --volsize "$VOLSIZE" --archive-dir "$1/cache" --name bench \
        --current-time "$(tk 1000)" -v error --no-print-statistics "$2" "file://$1/repo" >/dev/null
    touch "$1/complete"
}
if wants newfull; then
    CORPUS=$BASE
    stamp=$(date -u -d "@$(tk 1000)" +%Y%m%dT%H%M%SZ)
    clustered="$WORK/newfull-clustered-$(basename "$BASE")-$(cat "$HERE/newfull.py" | sha1sum | cut -c1-8)"
    if [ ! -e "$clustered/tree.complete" ]; then
        rm -rf "$clustered" && mkdir -p "$clustered"
        cp -a "$BASE/tree0" "$clustered/tree"
        python3 "$HERE/newfull.py" cluster "$clustered/tree" --changes "$CHANGES" --seed "$SEED"
        touch "$clustered/tree.complete"
    fi
    rows=""
    for variant in random clustered; do
        if [ "$variant" = random ]; then
            nf="$WORK/newfull-$(basename "$BASE")" tree="$BASE/tree1"
        else
            nf="$clustered/full" tree="$clustered/tree"
        fi
        newfull_repo "$nf" "$tree"
        d=$RUN/newfull
        bash -c "$(discard_cmd "$d")" && mkdir -p "$d"
        "$DM" sync "$nf/repo" "$d/dest" --state-dir "$d/state" --time "$T0" --no-fsync --quiet
        /usr/bin/time -f '%M' -o "$TF" "$DM" sync "$nf/repo" "$d/dest" --state-dir "$d/state" --no-fsync --json >"$d/report.json"
        verify "$tree" "$d/dest"
        python3 "$HERE/newfull.py" optimum "$nf/repo/duplicity-full.$stamp.manifest" "$BASE/tree0" "$tree" >"$d/optimum.json"
        rows+=$(python3 - "$variant" "$nf/repo" "$stamp" "$d/report.json" "$d/optimum.json" "$(tail -1 "$TF")" <<'PY'
import json, os, sys
variant, repo, stamp, report, optimum, rss_kb = sys.argv[1:7]
report, optimum = json.load(open(report)), json.load(open(optimum))
def size(n):
    return os.path.getsize(os.path.join(repo, f"duplicity-full.{stamp}.vol{n}.difftar.gz"))
vols = [f for f in os.listdir(repo) if f.startswith(f"duplicity-full.{stamp}.vol")]
full = sum(os.path.getsize(os.path.join(repo, f)) for f in vols)
step, read = report["sets"][0], report["bytes_read"]
best = sum(size(n) for n in optimum["volumes"])
at = "yes" if (step["volumes"], read) == (len(optimum["volumes"]), best) else "**no**"
if at != "yes":
    print(f"bench: {variant}: dupmirror read {step['volumes']} volumes ({read} B), the optimum is {optimum['volumes']} ({best} B)", file=sys.stderr)
print(f"| {variant} | {optimum['paths']} | {step['volumes']} of {step['volumes_in_set']} | {len(optimum['volumes'])} | "
      f"{read / 1e6:.1f} | {full / 1e6:.1f} | {read / full:.3f} | {best / full:.3f} | {at} | {int(rss_kb) / 1000:.1f} |")
PY
)$'\n'
        bash -c "$(discard_cmd "$d")"
    done
    NEWFULL_MD="### 6. New full chain with 1% of the files changed (issue 4)

A host holding the old chain's full ($(describe_corpus corpus)) syncs to a new full of the tree after a
1% change: random files all over the tree (step 1 of the history), or files that follow
each other in index order (clustered). The optimum is every volume whose manifest range
holds a path that needs data (new, or another content or type), no other, computed by
\`scripts/bench/newfull.py\` from the manifest and the two trees.

| change | paths needing data | volumes read | optimum volumes | MB read | full MB | fraction read | optimum fraction | at optimum | peak RSS MB |
|---|---|---|---|---|---|---|---|---|---|
${rows%$'\n'}"
    empty_trash
fi

targets() {
    local nf="dupmirror --no-fsync"
    meta target "Bootstrap on disk, dupmirror --no-fsync ÷ tar -xzf" "bootstrap-disk:$nf" "bootstrap-disk:tar -xzf" 0.8
    meta target "Bootstrap on disk, dupmirror (syncfs) ÷ tar -xzf" "bootstrap-disk:dupmirror" "bootstrap-disk:tar -xzf" 0.8
    meta target "Bootstrap on tmpfs, dupmirror --no-fsync ÷ tar -xzf" "bootstrap-tmpfs:$nf" "bootstrap-tmpfs:tar -xzf" 0.8
    meta target "Bootstrap on tmpfs, dupmirror --no-fsync ÷ tar -xzf (issue 15)" "bootstrap-tmpfs:$nf" "bootstrap-tmpfs:tar -xzf" 0.3
    meta target "Bootstrap on a fresh ext4, dupmirror ÷ tar -xzf (issue 15)" "fresh-ext4:dupmirror" "fresh-ext4:tar -xzf" 0.4
    meta target "Bootstrap on a fresh ext4, dupmirror --no-fsync ÷ tar -xzf (issue 15)" "fresh-ext4:$nf" "fresh-ext4:tar -xzf" 0.4
    meta target "Incremental 1%, dupmirror --no-fsync ÷ rsync -a --delete" "incremental:$nf" "incremental:rsync -a --delete" 1.0
    meta target "Incremental 1%, dupmirror (syncfs) ÷ rsync -a --delete" "incremental:dupmirror" "incremental:rsync -a --delete" 1.0
    meta target "Incremental 1%, dupmirror --no-fsync ÷ rsync --read-batch" "incremental:$nf" "incremental:rsync --read-batch" 1.5
    meta target "Incremental 1%, dupmirror (syncfs) ÷ rsync --read-batch" "incremental:dupmirror" "incremental:rsync --read-batch" 1.5
    meta target "Scaling: incremental on 10x files ÷ on 1x, --no-fsync" "scaling:$nf" "incremental:$nf" 1.3
    meta target "Scaling: incremental on 10x files ÷ on 1x, syncfs" "scaling:dupmirror" "incremental:dupmirror" 1.3
    meta target "Atomic 1%, standby one behind ÷ in place, syncfs" "atomic:atomic, standby one behind: T1->T2" "atomic:in place T1->T2" 2.5
    meta target "Atomic 1%, standby one behind ÷ in place, --no-fsync" "atomic:atomic, standby one behind: T1->T2 --no-fsync" "atomic:in place T1->T2 --no-fsync" 2.5
    meta target "Atomic 1% on 10x files ÷ on 1x (standby at T0), syncfs" "atomic-scaling:atomic, standby at T0: T0->T1" "atomic:atomic, standby at T0: T0->T1" 1.3
    meta target "Atomic 1% on 10x files ÷ on 1x (standby at T0), --no-fsync" "atomic-scaling:atomic, standby at T0: T0->T1 --no-fsync" "atomic:atomic, standby at T0: T0->T1 --no-fsync" 1.3
    meta rss "Peak RSS of every dupmirror run" 100 dupmirror
    meta rss "Peak RSS of bootstrap, incremental and verify on the largest and the million-entry tree (issue 15)" 32 dupmirror memory,million
}
targets

REPORT="$WORK/report-$(basename "$RESULTS" .tsv).md"
{
    echo "## dupmirror benchmark"
    echo
    echo "- $(date -u +%Y-%m-%d) on $(hostname): $HOST_NOTE"
    echo "- dupmirror $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?') ($DM); backups written by $("$DUPW" --version | tail -1)"
    [ -z "$BASELINE" ] || echo "- baseline: $BASELINE"
    echo "- load average at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg); $REPS runs per figure; took $(( ($(date +%s) - STARTED) / 60 )) min"
    echo "- mode: $([ "$QUICK" = 1 ] && echo quick || echo full); raw data: $RESULTS"
    echo
    python3 "$HERE/report.py" "$RESULTS"
    [ -z "$NEWFULL_MD" ] || printf '\n%s\n' "$NEWFULL_MD"
} >"$REPORT"
[ -z "$OUT" ] || cp "$REPORT" "$OUT"
cat "$REPORT"
