#!/usr/bin/env bash
# Run one coverage-guided fuzz target for a given time:
#
#   scripts/fuzz.sh TARGET SECONDS [extra libFuzzer options...]
#   scripts/fuzz.sh all SECONDS          # each target in turn, SECONDS each
#
# TARGET: names | manifest | records | delta (fuzz/fuzz_targets/*.rs).
#
# The machine has only stable Rust, so `cargo fuzz` (which wants nightly for its sanitizer
# flags) is not used: this builds the same libfuzzer-sys targets with the same coverage
# instrumentation flags cargo-fuzz passes (-Cpasses=sancov-module ..., all stable), without a
# sanitizer (safe Rust needs none; librsync's C code is exercised but not instrumented).
# `cargo fuzz run TARGET` works too where a nightly toolchain exists.
#
# Seeds: fuzz/seeds/TARGET (committed), plus the files of testdata/repos/* when present.
# The growing corpus lives in fuzz/corpus/TARGET (not committed); crashes go to
# fuzz/artifacts/TARGET/. Each crash found must become a regression unit test (see
# docs/reliability.md). Prints a summary line: target, seconds, executions, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,8p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
target=$1 secs=$2
shift 2
targets=(names manifest records delta)
if [ "$target" = all ]; then
    overall=0
    for t in "${targets[@]}"; do "$0" "$t" "$secs" "$@" || overall=1; done
    exit "$overall"
fi
printf '%s\n' "${targets[@]}" | grep -qx "$target" || usage

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS (the instrumentation) off the build scripts.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --quiet --release --manifest-path fuzz/Cargo.toml --target "$triple" --bin "$target"
bin="$CARGO_TARGET_DIR/$triple/release/$target"

corpus=fuzz/corpus/$target artifacts=fuzz/artifacts/$target/
mkdir -p "$corpus" "$artifacts"
seeds=(fuzz/seeds/"$target")
# Seeds from committed test repositories, when another part of the project provides them.
if compgen -G "testdata/repos/*" >/dev/null; then
    extra=$(mktemp -d)
    trap 'rm -rf "$extra"' EXIT
    for f in testdata/repos/*/*; do
        [ -f "$f" ] || continue
        base=$(basename "$f")
        case "$target" in
        names) printf '%s' "$base" >"$extra/$(printf '%s' "$base" | sha1sum | cut -c1-16)" ;;
        manifest) case "$base" in *.manifest) cp "$f" "$extra/" ;; esac ;;
        records)
            case "$base" in
            *.difftar.gz) { printf '\001'; cat "$f"; } >"$extra/$base" ;;
            *.difftar) { printf '\000'; cat "$f"; } >"$extra/$base" ;;
            esac ;;
        esac
    done
    seeds+=("$extra")
fi

# Small inputs keep executions fast; larger seeds (whole test volumes) are cut to this size,
# which still leaves their headers and first entries for the fuzzer to work from.
case "$target" in
records | delta) max_len=65536 ;;
*) max_len=4096 ;;
esac
log=$(mktemp)
status=0
"$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -max_len="$max_len" \
    -artifact_prefix="$artifacts" -print_final_stats=1 "$@" "$corpus" "${seeds[@]}" \
    2>"$log" || status=$?
runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || true)
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
crashes=$(find "$artifacts" -type f | wc -l)
tail -n 25 "$log" >&2
echo "fuzz.sh: target=$target seconds=$secs executions=${execs:-${runs:-?}} status=$status artifacts=$crashes"
rm -f "$log"
exit "$status"
