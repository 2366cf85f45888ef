#!/usr/bin/env bash
# The one command that runs dupmirror's whole test suite: installs the dependencies (upstream
# duplicity 0.8 and 3.x are the oracle), then runs every test target. Upstream duplicity is
# required here: a missing oracle fails the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
bash scripts/install-deps.sh

export DUPMIRROR_REQUIRE_ORACLE=1
export DUPMIRROR_DUPLICITY3="${DUPMIRROR_DUP3_VENV:-/opt/dup3}/bin/duplicity"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

echo "test.sh: cargo test --all-targets --no-fail-fast" >&2
status=0
cargo test --all-targets --no-fail-fast "$@" || status=$?
echo "test.sh: finished in $(( $(date +%s) - start ))s with status $status" >&2
exit "$status"
