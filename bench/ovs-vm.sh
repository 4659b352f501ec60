#!/usr/bin/env bash
# weft's Open vSwitch fast path benchmarked in the kernel VM (this host's kernel has no
# openvswitch module): the same table as bench/vxlan.sh, with the rows
#   vxlan (hand-made kernel VXLAN, the reference), weft-ovs (--datapath fastdp),
#   weft-fast (--datapath vxlan), sleeve-plain
# measured in one boot. The VM emulates its CPU (TCG): absolute figures mean little there, the
# ratios against the hand-made VXLAN measured in the same run are what counts.
#
#   bash bench/ovs-vm.sh [--quick] [--only CONFIGS]   (arguments go to bench/vxlan.sh)
#
# The fast rows' routers are paused (SIGSTOP) while their pods' traffic is measured
# (WEFT_BENCH_PAUSE_ROUTERS=1; set 0 to keep them running): the kernel forwards that traffic
# alone, and under emulation an idle router's threads and timers take a share of the 2 vCPUs
# many times larger than on hardware, a cost the hand-made VXLAN row (no router) does not pay.
# On the host (bench/vxlan.sh, KVM) the routers run throughout.
#
# Environment: WEFT_KERNEL_VM (the run-in-kernel-vm script; default ../shared/kernel-vm/ next
# to the checkout), WEFT_BENCH_SECONDS, WEFT_BENCH_PINGS, WEFT_BENCH_TIMEOUT (default 300 here:
# routers start slowly under emulation).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VM=${WEFT_KERNEL_VM:-$ROOT/../shared/kernel-vm/run-in-kernel-vm}
[[ -x "$VM" ]] || { echo "bench: no kernel VM at $VM (set WEFT_KERNEL_VM)" >&2; exit 1; }
if ((EUID != 0)); then
    echo "bench: needs root (the VM reads the whole filesystem): sudo bash $0 $*" >&2
    exit 1
fi

args=("$@")
((${#args[@]})) || args=(--only vxlan,weft-ovs,weft-fast,sleeve-plain)

# Build on the host: building under emulation takes far too long.
# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"
weft_deps
echo "bench: building weft (cargo build --release -p weft-router)" >&2
cargo build --release -p weft-router
bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/weft

exec "$VM" --mem 2048 --cpus 2 --timeout 3600 -- \
    env WEFT_BENCH_BIN="$bin" WEFT_BENCH_TIMEOUT="${WEFT_BENCH_TIMEOUT:-300}" \
    WEFT_BENCH_PAUSE_ROUTERS="${WEFT_BENCH_PAUSE_ROUTERS:-1}" \
    bash bench/vxlan.sh "${args[@]}"
