#!/usr/bin/env bash
# Regenerate testdata/encrypted/: a small symmetrically encrypted duplicity repository (a full
# and two incrementals, written by upstream duplicity 0.8.22 with gpg's defaults: AES256, ZIP,
# MDC) and, for each backup time T, the tree `duplicity restore --time T` gives, as
# testdata/encrypted/expected/<T>.tree (format: tests/it/support/tree.rs). Both 0.8.22 and
# 3.2.1 must restore the same trees.
#
# The generator is the ignored test `testdata_gen::encrypted` in tests/it/testdata_gen.rs.
# The passphrase is a test value, committed in testdata/encrypted/passphrase. Regenerating
# changes every repository file (gpg salts and session keys are random), not the trees.
#
# Needs duplicity 0.8 on PATH, 3.x at $DUPMIRROR_DUPLICITY3 (default /opt/dup3/bin/duplicity)
# and gpg: run scripts/install-deps.sh first; run as root so owners are those of the trees.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "make-testdata-gpg: ERROR: $*" >&2; exit 1; }
command -v duplicity >/dev/null && duplicity --version | grep -q '^duplicity 0\.8\.' \
    || die "need duplicity 0.8 on PATH"
export DUPMIRROR_DUPLICITY3=${DUPMIRROR_DUPLICITY3:-/opt/dup3/bin/duplicity}
"$DUPMIRROR_DUPLICITY3" --version | grep -q '^duplicity 3\.' \
    || die "need duplicity 3.x at $DUPMIRROR_DUPLICITY3"
command -v gpg >/dev/null || die "need gpg"
export DUPMIRROR_MAKE_TESTDATA=1 DUPMIRROR_REQUIRE_ORACLE=1
cargo test --test it -- --ignored --exact testdata_gen::encrypted --nocapture
du -sh testdata/encrypted >&2
