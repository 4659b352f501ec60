#!/usr/bin/env bash
# shellcheck disable=SC2317 # stage functions are called indirectly
# weft's whole test suite: what CI runs (.ci/run), and what a developer runs before pushing.
#
#   scripts/test.sh
#
# Stages, in order, stopping at the first that fails:
#   deps    system packages (scripts/deps.sh)
#   fmt     cargo fmt --all --check
#   chart   scripts/check-chart.sh (helm lint, renderings validated against Kubernetes 1.29 to 1.35)
#   clippy  cargo clippy --workspace --all-targets -- -D warnings
#   build   cargo build --workspace --all-targets
#   image   scripts/image.sh (as root only: the image router/tests/chart_cri.rs runs)
#   test    cargo test --workspace (unit, integration and doc tests)
#   vm      the kernel-datapath tests (`kernel_*`) in the kernel VM (tests/kernel-vm/run-kernel-tests:
#           Debian's 6.1 kernel under qemu, which has Open vSwitch; one boot for all of them)
#   fuzz    scripts/fuzz.sh (every cargo-fuzz target, WEFT_FUZZ_SECONDS each, default 20)
#
# The multi-host integration tests create network namespaces and need root; without root they
# skip themselves (and pass). CI runs as root. WEFT_TEST_TIMEOUT (seconds, default 1500) bounds
# the test stage. WEFT_KERNEL_VM_TIMEOUT (seconds, default 900) bounds the vm stage; without a
# kernel VM (no run-in-kernel-vm, no qemu) the vm stage fails in CI (CI=true) and skips elsewhere.
#
# Kernel limits: a test with more than ~30 hosts on one bridge would need a bigger neighbour
# table (sysctl net.ipv4.neigh.default.gc_thresh3, 1024 by default). No test needs it now;
# raise it here, only for such a test, if one is added.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    PATH=$HOME/.cargo/bin:$PATH
fi

TEST_TIMEOUT=${WEFT_TEST_TIMEOUT:-1500}
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/weft-test.XXXXXX")
trap 'rm -rf "$LOG_DIR"' EXIT

declare -a stage_names=() stage_secs=()
suite_start=$SECONDS

summary() {
    local i
    echo
    echo "==> stage times"
    for i in "${!stage_names[@]}"; do
        printf '    %-7s %5ss\n' "${stage_names[$i]}" "${stage_secs[$i]}"
    done
    printf '    %-7s %5ss\n' total "$((SECONDS - suite_start))"
}

# stage NAME COMMAND...: runs one stage, times it, and stops the suite if it fails.
stage() {
    local name=$1 start=$SECONDS rc=0
    shift
    echo
    echo "==> [$name] $*"
    "$@" || rc=$?
    stage_names+=("$name")
    stage_secs+=("$((SECONDS - start))")
    if ((rc != 0)); then
        summary
        echo
        echo "test.sh: FAILED at stage '$name' (exit $rc): $*" >&2
        exit "$rc"
    fi
    echo "<== [$name] ok ($((SECONDS - start))s)"
}

deps() {
    # shellcheck source=scripts/deps.sh
    source "$ROOT/scripts/deps.sh"
    # Called as `stage deps deps`, i.e. in an `||` context where errexit is off: check each step.
    weft_deps || return 1
    weft_kernel_vm_prepare || return 1
    cargo --version && cargo clippy --version && cargo fmt --version || return 1
    if ((EUID != 0)); then
        echo "note: not root: the multi-host integration tests will skip themselves"
    fi
}

fmt_check() {
    if ! cargo fmt --all --check; then
        echo "formatting differs: run 'cargo fmt --all'" >&2
        return 1
    fi
}

# Runs cargo test (all test binaries and doctests, not stopping at the first failing binary)
# and sums up the "test result:" lines into one closing line.
run_tests() {
    local rc=0
    timeout --signal=TERM --kill-after=30 "$TEST_TIMEOUT" \
        cargo test --workspace --no-fail-fast 2>&1 | tee "$LOG_DIR/test.log" || rc=${PIPESTATUS[0]}
    if ((rc == 124)); then
        echo "test.sh: cargo test did not finish within ${TEST_TIMEOUT}s (WEFT_TEST_TIMEOUT)" >&2
    fi
    # "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; ..."
    read -r TEST_PASSED TEST_FAILED TEST_IGNORED TEST_BINARIES < <(
        awk '/^test result:/ {
                for (i = 1; i <= NF; i++) {
                    if ($(i+1) ~ /^passed/) p += $i
                    if ($(i+1) ~ /^failed/) f += $i
                    if ($(i+1) ~ /^ignored/) s += $i
                }
                n++
             }
             END { printf "%d %d %d %d\n", p, f, s, n }' "$LOG_DIR/test.log"
    )
    # The slowest test binaries, to keep an eye on the suite's time.
    awk '/^ *Running / {
            name = $0
            sub(/.*\/deps\//, "", name); sub(/-[0-9a-f]+\)$/, "", name)
            label = ($2 == "unittests") ? name " (unit tests)" : name " (" $2 ")"
         }
         /^ *Doc-tests / { label = $2 " (doc tests)" }
         /^test result:/ && match($0, /finished in [0-9.]+s/) {
            t = substr($0, RSTART + 12, RLENGTH - 13) + 0
            if (t >= 10) printf "%8.1fs  %s\n", t, label
         }' "$LOG_DIR/test.log" | sort -rn | head -n 5 >"$LOG_DIR/slow.txt"
    if ((rc != 0)); then
        echo
        echo "failed tests:"
        grep -E '^test .* FAILED$' "$LOG_DIR/test.log" | sed 's/^/    /' || true
        # A crash or timeout counts as a failure even when no test reported one.
        ((TEST_FAILED > 0)) || TEST_FAILED=1
    fi
    return "$rc"
}

TEST_PASSED=0 TEST_FAILED=0 TEST_IGNORED=0 TEST_BINARIES=0
stage deps deps
stage fmt fmt_check
stage chart bash scripts/check-chart.sh
stage clippy cargo clippy --workspace --all-targets -- -D warnings
stage build cargo build --workspace --all-targets
# The container image (scripts/image.sh: release weft, static weft-cni, the cached Debian base):
# router/tests/chart_cri.rs runs the chart from it through containerd. Built here, as a stage of
# its own with its time, and handed to the tests; without root they skip, so neither is done.
if ((EUID == 0)); then
    stage image bash scripts/image.sh
    WEFT_IMAGE_ARCHIVE="$ROOT/target/image/weft-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1).oci.tar"
    export WEFT_IMAGE_ARCHIVE
fi

# The tests that need a kernel the host does not have (Open vSwitch), in the kernel VM: the test
# binaries the test stage built, the tests named kernel_* in them (they skip themselves on the
# host). Exit 125 means the VM cannot run here at all.
vm_tests() {
    local rc=0
    WEFT_KERNEL_VM=$(weft_kernel_vm) bash tests/kernel-vm/run-kernel-tests \
        --timeout "${WEFT_KERNEL_VM_TIMEOUT:-900}" -p weft-datapath -p weft-router --test ovs || rc=$?
    if ((rc == 125)) && [[ "${CI:-}" != true ]]; then
        echo "test.sh: SKIPPED stage 'vm': the kernel VM cannot run here (see above); CI runs it" >&2
        VM_SKIPPED=1
        return 0
    fi
    if ((rc == 125)); then
        echo "test.sh: the kernel VM cannot run here (exit 125, see above): CI must run the kernel datapath tests" >&2
    elif ((rc == 124)); then
        echo "test.sh: the kernel VM tests did not finish within ${WEFT_KERNEL_VM_TIMEOUT:-900}s (WEFT_KERNEL_VM_TIMEOUT)" >&2
    fi
    return "$rc"
}

test_rc=0 failed_stage=test VM_SKIPPED=0
test_start=$SECONDS
echo
echo "==> [test] cargo test --workspace --no-fail-fast (timeout ${TEST_TIMEOUT}s)"
run_tests || test_rc=$?
stage_names+=(test)
stage_secs+=("$((SECONDS - test_start))")
if ((test_rc == 0)); then
    vm_start=$SECONDS
    echo
    echo "==> [vm] tests/kernel-vm/run-kernel-tests -p weft-datapath -p weft-router --test ovs"
    if ! vm_tests; then
        test_rc=1 failed_stage=vm
        TEST_FAILED=$((TEST_FAILED + 1))
    fi
    stage_names+=(vm)
    stage_secs+=("$((SECONDS - vm_start))")
    ((VM_SKIPPED == 0)) || stage_names[-1]=vm-skip
    echo "<== [vm] $( ((test_rc == 0)) && echo ok || echo FAILED) ($((SECONDS - vm_start))s wall)"
fi
summary
echo
if [[ -s "$LOG_DIR/slow.txt" ]]; then
    echo "slowest test binaries (10 s or more):"
    cat "$LOG_DIR/slow.txt"
fi
echo "test binaries: $TEST_BINARIES (unit, integration and doc tests); skipped = #[ignore]d"
if ((test_rc != 0)); then
    echo "test.sh: FAILED at stage '$failed_stage' (exit $test_rc)" >&2
else
    # Decoders and state machines that take network input are fuzzed on every run, briefly.
    fuzz_start=$SECONDS
    if ! bash scripts/fuzz.sh "${WEFT_FUZZ_SECONDS:-20}"; then
        echo "test.sh: FAILED at stage 'fuzz'" >&2
        test_rc=1
        TEST_FAILED=$((TEST_FAILED + 1))
    fi
    echo "fuzz stage: $((SECONDS - fuzz_start))s"
fi
echo "tests: $TEST_PASSED passed, $TEST_FAILED failed, $TEST_IGNORED skipped"
exit "$test_rc"
