#!/usr/bin/env bash
# The long form of the crash and fault tests (the normal suite runs a reduced form):
#
#   scripts/crash-soak.sh [POINTS]
#
# Kills `dupmirror sync` at POINTS syscalls per transition (default: all of them, about a
# thousand in total per duplicity version), on chains written by both upstream duplicity
# 0.8 and 3.x, and injects an I/O error at every point of the I/O-error census. A release
# build is used: it is what runs in production, and it is faster. Expect 30-60 minutes on
# two cores with POINTS=all; POINTS=100 takes about 10.
set -euo pipefail
cd "$(dirname "$0")/.."
points=${1:-all}
bash scripts/install-deps.sh
export DUPMIRROR_REQUIRE_ORACLE=1
export DUPMIRROR_DUPLICITY3="${DUPMIRROR_DUP3_VENV:-/opt/dup3}/bin/duplicity"
export DUPMIRROR_KILL_POINTS=$points
export DUPMIRROR_KILL_DUPLICITY=both
export DUPMIRROR_TEST_TIMEOUT=600
start=$(date +%s)
cargo build --release --quiet
export DUPMIRROR_TEST_BIN=$PWD/${CARGO_TARGET_DIR:-target}/release/dupmirror
log=$(mktemp)
status=0
cargo test --release --test it -- crash_kill:: faults_fs:: --nocapture --test-threads=1 2>&1 |
    tee "$log" >&2 || status=$?
echo "--- summary ---"
grep -E '^(crash_kill|faults_fs):|^test result' "$log" || true
rm -f "$log"
echo "crash-soak.sh: finished in $(( $(date +%s) - start ))s with status $status" >&2
exit "$status"
