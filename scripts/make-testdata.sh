#!/usr/bin/env bash
# Regenerate the small fixed duplicity repositories under testdata/repos/<name>/ and, for each
# repository and backup time T, the tree that upstream `duplicity restore --time T` produces,
# as testdata/expected/<name>/<T>.tree (format: tests/it/support/tree.rs).
#
# The generator is the ignored test `testdata_gen::repos` in tests/it/testdata_gen.rs: it
# builds the source trees with the test harness's own builder, has upstream duplicity 0.8.22
# (`duplicity` on PATH) and 3.2.1 ($DUPMIRROR_DUPLICITY3, default /opt/dup3/bin/duplicity)
# write and restore the repositories, and requires both versions to restore the same trees.
# Run scripts/install-deps.sh first, and run as root, so that owners, fifos and permissions
# are what the expected trees say.
#
# Deterministic: backup times are pinned with --current-time (T = 1700000000 + k*1000), every
# file gets a fixed mtime and seeded content, directories get the step's mtime. File names and
# expected trees come out identical on every run; volume bytes do not (gzip headers, host name
# in manifests), so rerunning shows changed repository files in git.
#
# Usage: scripts/make-testdata.sh            (rewrites testdata/repos and testdata/expected)
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "make-testdata: ERROR: $*" >&2; exit 1; }
command -v duplicity >/dev/null && duplicity --version | grep -q '^duplicity 0\.8\.' \
    || die "need duplicity 0.8 on PATH"
export DUPMIRROR_DUPLICITY3=${DUPMIRROR_DUPLICITY3:-/opt/dup3/bin/duplicity}
"$DUPMIRROR_DUPLICITY3" --version | grep -q '^duplicity 3\.' \
    || die "need duplicity 3.x at $DUPMIRROR_DUPLICITY3"
export DUPMIRROR_MAKE_TESTDATA=1 DUPMIRROR_REQUIRE_ORACLE=1
cargo test --test it -- --ignored --exact testdata_gen::repos --nocapture
du -sh testdata >&2
