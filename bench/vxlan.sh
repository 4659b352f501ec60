#!/usr/bin/env bash
# weft fast-path benchmark: weft's VXLAN fast path against a hand-made kernel VXLAN, with the
# sleeve rows (plain and encrypted) in the same table.
#
#   bash bench/vxlan.sh [--quick] [--rounds N] [--only CONFIGS] [--datapath auto|vxlan]
#
#   --quick            1 s runs, fewer pings (a smoke test)
#   --rounds N         measure every configuration N times, round after round (default 1): the
#                      table shows medians, a ratio is the median of the per-round ratios
#   --only CONFIGS     comma-separated subset of:
#                      vxlan,weft-fast,weft-fast-masq,ovs-hand,weft-ovs,sleeve-plain,
#                      sleeve-encrypted (ovs-hand, an Open vSwitch datapath made by hand with
#                      ovs-dpctl, and weft-ovs need the openvswitch module: run them in the
#                      kernel VM with bench/ovs-vm.sh)
#   --datapath MODE    the weft-fast rows' `weft router --datapath` (default vxlan)
#
# weft-fast runs the routers with `--masquerade false`: masquerading (pod traffic leaving the
# range) registers NAT hooks, which turn on conntrack for every packet the bridge passes to
# netfilter (bridge-nf-call-iptables is 1 in every namespace here), a cost of the node's
# firewall, not of the datapath, that a Kubernetes node pays anyway for kube-proxy.
# weft-fast-masq is the same with the router's defaults, to show that cost.
#
# WEFT_BENCH_PAUSE_ROUTERS=1 pauses the fast rows' routers (SIGSTOP) while their pod traffic is
# measured: the kernel forwards it alone (bench/ovs-vm.sh sets it; see there).
# WEFT_BENCH_PROFILE=1 profiles the UDP run system-wide with perf (self time per kernel symbol).
# WEFT_BENCH_DROP_GUARD=1 (with paused routers) deletes the port guard's nftables table first: an
# experiment that shows what its bridge-wide hook costs.
# Environment: WEFT_BENCH_ROUNDS (as --rounds), WEFT_BENCH_SECONDS (length of each iperf3 run,
# default 5), WEFT_BENCH_PINGS (default 50), WEFT_BENCH_TIMEOUT (seconds to wait for routers and
# pods, default 60), WEFT_BENCH_BIN (measure this binary, skip the build), CARGO_TARGET_DIR.
# Needs root: it builds two hosts out of network namespaces on this machine.
set -euo pipefail

CONFIGS_ALL=(vxlan weft-fast weft-fast-masq ovs-hand weft-ovs sleeve-plain sleeve-encrypted)
PREFIX=wbvx$$-
H1=${PREFIX}host1
H2=${PREFIX}host2
P1=${PREFIX}pod1
P2=${PREFIX}pod2
UNDERLAY=10.213.43 # host1 .1, host2 .2 (a veth pair between the two host namespaces)
POD_NET=10.250.0   # pod1 .1, pod2 .2
STATUS_ADDR=127.0.0.1:6784

seconds=${WEFT_BENCH_SECONDS:-5}
pings=${WEFT_BENCH_PINGS:-50}
timeout=${WEFT_BENCH_TIMEOUT:-60}
rounds=${WEFT_BENCH_ROUNDS:-1}
quick=0
only=""
fast_mode=vxlan

usage() { sed -n '2,15s/^# \{0,1\}//p' "$0"; }

while (($#)); do
    case "$1" in
    --quick) quick=1; shift ;;
    --only | --datapath | --rounds)
        [[ $# -ge 2 ]] || { usage >&2; exit 2; }
        case "$1" in
        --only) only=$2 ;;
        --datapath) fast_mode=$2 ;;
        --rounds) rounds=$2 ;;
        esac
        shift 2
        ;;
    --only=*) only=${1#--only=}; shift ;;
    --rounds=*) rounds=${1#--rounds=}; shift ;;
    --datapath=*) fast_mode=${1#--datapath=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$fast_mode" in
auto | vxlan) ;;
*) echo "bench: --datapath must be auto or vxlan (got '$fast_mode')" >&2; exit 2 ;;
esac
if ((quick)); then
    seconds=1
    pings=10
fi
for v in seconds pings timeout rounds; do
    if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
        echo "bench: $v must be a positive whole number (got '${!v}')" >&2
        exit 2
    fi
done
configs=()
if [[ -n "$only" ]]; then
    IFS=, read -r -a wanted <<<"$only"
    for c in "${wanted[@]}"; do
        case " ${CONFIGS_ALL[*]} " in
        *" $c "*) ;;
        *) echo "bench: unknown configuration '$c' (known: ${CONFIGS_ALL[*]})" >&2; exit 2 ;;
        esac
    done
    for c in "${CONFIGS_ALL[@]}"; do # always in this order: vxlan first, as the reference
        case ",$only," in *",$c,"*) configs+=("$c") ;; esac
    done
else
    configs=("${CONFIGS_ALL[@]}")
fi
((${#configs[@]} > 0)) || { echo "bench: --only selected nothing" >&2; exit 2; }

if ((EUID != 0)); then
    echo "bench: needs root (it creates network namespaces): sudo bash $0 $*" >&2
    exit 1
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init

# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"
weft_deps
bench_build

# A fast row is only worth its name when pod traffic takes the kernel fast path: count what its
# VXLAN device (weft-vxlan, or the Open vSwitch datapath's VXLAN vport weft-ovs-vx) carried
# during the measurements against the pod's own traffic.
fast_device() {
    case "$1" in
    weft-fast*) echo weft-vxlan ;;
    weft-ovs) echo weft-ovs-vx ;;
    esac
}
fast_kind() {
    case "$1" in
    weft-fast*) echo vxlan ;;
    weft-ovs) echo ovs ;;
    esac
}
measure_extra() {
    local device sent pod_sent
    device=$(fast_device "$1")
    [[ -n "$device" ]] || return 0
    sent=$(ip netns exec "$H1" cat "/sys/class/net/$device/statistics/tx_bytes" 2>/dev/null || echo 0)
    pod_sent=$(ip netns exec "$P1" cat /sys/class/net/eth0/statistics/tx_bytes)
    echo "  $device on host1 sent $((sent / 1000000)) MB of pod1's $((pod_sent / 1000000)) MB so far" >&2
    if ((sent < pod_sent / 2)); then
        echo "  WARNING: pod traffic did not take the fast path" >&2
        record "$1" note "pod traffic did not take the fast path ($device sent $sent bytes, pod1 $pod_sent)"
    fi
}

# The hand-made Open vSwitch row's flows name the pods' MACs: put them once the pods exist.
after_attach() {
    [[ "$1" != ovs-hand ]] || ovs_hand_flows
}

HEADER=$(bench_header "weft fast-path benchmark (weft-fast: weft router --datapath $fast_mode)")
echo "$HEADER" >&2

for ((BENCH_ROUND = 1; BENCH_ROUND <= rounds; BENCH_ROUND++)); do
    for cfg in "${configs[@]}"; do
        if ((rounds > 1)); then log "$cfg (round $BENCH_ROUND of $rounds)"; else log "$cfg"; fi
        make_hosts
        dir=$STATE_DIR/$cfg-$BENCH_ROUND
        mkdir -p "$dir"
        case "$cfg" in
        vxlan)
            setup_vxlan
            mtu=1450
            bridge=vxbr
            ;;
        ovs-hand)
            setup_ovs_hand
            mtu=1450
            bridge=ovsbr
            ;;
        weft-fast | weft-fast-masq | weft-ovs | sleeve-plain | sleeve-encrypted)
            password=$(row_password "$cfg" "$dir")
            if [[ "$cfg" == weft-fast ]]; then
                WEFT_BENCH_ROUTER_ARGS="--masquerade false ${WEFT_BENCH_ROUTER_ARGS:-}" \
                    start_routers "$dir" "$fast_mode" vxlan
            elif [[ "$cfg" == weft-fast-masq ]]; then
                start_routers "$dir" "$fast_mode" vxlan
            elif [[ "$cfg" == weft-ovs ]]; then
                WEFT_BENCH_ROUTER_ARGS="--masquerade false ${WEFT_BENCH_ROUTER_ARGS:-}" \
                    start_routers "$dir" fastdp ovs
            else
                start_routers "$dir" sleeve sleeve "$password"
            fi
            mtu=$(weft_mtu)
            bridge=weft
            ;;
        esac
        attach_pods_and_wait "$cfg" "$bridge" "$mtu"
        kind=$(fast_kind "$cfg")
        if ((${WEFT_BENCH_PAUSE_ROUTERS:-0})) && [[ -n "$kind" ]]; then
            # The kernel forwards a fast row's pod traffic alone; pausing its routers keeps their
            # timers off the CPU the datapaths are compared on (what counts under emulation).
            kill -STOP "${router_pids[@]}"
            echo "  routers paused (SIGSTOP) during the measurement" >&2
            record "$cfg" note "routers paused during the measurement (WEFT_BENCH_PAUSE_ROUTERS=1)"
            if ((${WEFT_BENCH_DROP_GUARD:-0})); then
                # An experiment: what the port guard's bridge-wide hook costs (paused routers
                # cannot put it back; the pods here are not in its set anyway).
                for h in "$H1" "$H2"; do ip netns exec "$h" nft delete table bridge weft; done
                record "$cfg" note "port guard table deleted before the measurement (WEFT_BENCH_DROP_GUARD=1)"
            fi
            measure "$cfg"
            kill -CONT "${router_pids[@]}"
        else
            measure "$cfg"
        fi
        if [[ -n "$kind" ]] && ! ((${WEFT_BENCH_PAUSE_ROUTERS:-0})); then
            # Still on the fast path after the UDP flood?
            state=$(host_report "$H1" '",".join(str((c.get("datapath") or {}).get("datapath")) for c in r["connections"] if c["state"] == "established")')
            echo "  host1's connection after the runs: datapath ${state:-unknown}" >&2
            [[ "$state" == "$kind" ]] || record "$cfg" note "left the fast path during the runs: $state"
        fi
        teardown
    done
done

# --- report ----------------------------------------------------------------------------------
echo
echo "$HEADER"
echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)"
echo
# Targets (issue 11): the fast path against the hand-made VXLAN; the sleeve's from issue 3.
print_tables '{
    "weft-fast": {"tcp1_gbps": [">=", 0.95], "tcp4_gbps": [">=", 0.95], "udp_kpps": [">=", 0.95], "rtt_ms": ["<=", 1.1]},
    "weft-ovs": {"tcp1_gbps": [">=", 0.9], "tcp4_gbps": [">=", 0.9], "udp_kpps": [">=", 0.9]},
    "sleeve-encrypted": {"tcp1_gbps": [">=", 0.07], "tcp4_gbps": [">=", 0.07], "rtt_ms": ["<=", 2.0]},
    "sleeve-plain": {"tcp1_gbps": [">=", 0.20], "tcp4_gbps": [">=", 0.20], "rtt_ms": ["<=", 2.0]}
}' "targets: weft-fast >= 0.95x vxlan throughput (TCP x1, x4, UDP), RTT <= 1.1x; weft-ovs >= 0.9x vxlan (issue 12); sleeve as in issue 3; weft-fast-masq (conntrack on) has none"
if grep -q $'\tnote\t' "$RESULTS"; then
    echo
    grep $'\tnote\t' "$RESULTS" | cut -f1,3 | sed 's/\t/: /'
fi
