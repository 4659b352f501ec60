#!/usr/bin/env bash
# Runs weft's coverage-guided fuzz targets (cargo-fuzz / libFuzzer) for a bounded time each.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# (the only one on this machine) accept them. Crashes are kept in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wire_decode handshake mesh_messages sleeve_decap sleeve_fragments icmp_too_big fast_heartbeat ovs_messages)

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
    echo "== fuzzing $target for ${seconds}s"
    if ! cargo fuzz run -O "$target" -- -max_total_time="$seconds" -max_len=4096 >"$log" 2>&1; then
        tail -40 "$log" >&2
        if compgen -G "artifacts/$target/*" >/dev/null; then
            echo "fuzz target $target failed; a crashing input is kept under fuzz/artifacts/$target/" >&2
        else
            echo "fuzz target $target could not be built or run (see above)" >&2
        fi
        exit 1
    fi
    grep -E '^(#[0-9]+.*DONE|Done)' "$log" || true
done
echo "fuzzing passed: ${targets[*]}"
