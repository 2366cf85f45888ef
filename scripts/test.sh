#!/usr/bin/env bash
# The one command that runs dupmirror's whole test suite: installs the dependencies (upstream
# duplicity 0.8 and 3.x are the oracle), checks formatting and lints, then runs every test
# target. A formatting or lint failure fails the run (after the tests, so they still report).
# Upstream duplicity is required here: a missing oracle fails the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
bash scripts/install-deps.sh

export DUPMIRROR_REQUIRE_ORACLE=1
export DUPMIRROR_DUPLICITY3="${DUPMIRROR_DUP3_VENV:-/opt/dup3}/bin/duplicity"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# Formatting and lints are part of the suite, so CI enforces them. rustfmt and clippy ship
# with most toolchains; add them only when missing (works offline when they are there).
for tool in fmt:rustfmt clippy:clippy; do
    if ! cargo "${tool%%:*}" --version >/dev/null 2>&1; then
        echo "test.sh: rustup component add ${tool#*:}" >&2
        rustup component add "${tool#*:}"
    fi
done
status=0
echo "test.sh: cargo fmt --check" >&2
cargo fmt --check || { echo "test.sh: cargo fmt --check failed (run cargo fmt)" >&2; status=1; }
echo "test.sh: cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets -- -D warnings || { echo "test.sh: clippy failed" >&2; status=1; }

echo "test.sh: cargo test --all-targets --no-fail-fast" >&2
cargo test --all-targets --no-fail-fast "$@" || status=$?
echo "test.sh: finished in $(( $(date +%s) - start ))s with status $status" >&2
exit "$status"
