#!/usr/bin/env bash
# weft idle liveness cost: what an idle mesh of N hosts sends per host on the underlay, with the
# fast path (`--datapath auto`) and with the sleeve alone (`--datapath sleeve`).
#
#   bash bench/idle.sh [--hosts N] [--seconds S] [--only MODES] [--settle S]
#
#   --hosts N       hosts in the mesh (default 25)
#   --seconds S     length of the measurement (default 30)
#   --only MODES    comma-separated subset of: auto,sleeve (default both, in that order)
#   --settle S      seconds to wait once the mesh is complete before measuring (default 15)
#
# Environment: WEFT_BENCH_TIMEOUT (seconds for the mesh to form, default 300), WEFT_BENCH_BIN
# (measure this binary, skip the build), WEFT_BENCH_ROUTER_ARGS (more `weft router` flags, e.g.
# `--heartbeat-interval 1`), CARGO_TARGET_DIR. Needs root. Routers run with their default
# timers and no password; no pods, no traffic but weft's own.
set -euo pipefail

MODES_ALL=(auto sleeve)
PREFIX=wbidle$$-
SWITCH=${PREFIX}sw
UNDERLAY=10.214.0 # host i = .i on one switch (a bridge in its own namespace)
STATUS_ADDR=127.0.0.1:6784

hosts=25
seconds=30
settle=15
timeout=${WEFT_BENCH_TIMEOUT:-300}
only=""

usage() { sed -n '2,16s/^# \{0,1\}//p' "$0"; }

while (($#)); do
    case "$1" in
    --hosts | --seconds | --only | --settle)
        [[ $# -ge 2 ]] || { usage >&2; exit 2; }
        case "$1" in
        --hosts) hosts=$2 ;;
        --seconds) seconds=$2 ;;
        --only) only=$2 ;;
        --settle) settle=$2 ;;
        esac
        shift 2
        ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in hosts seconds settle timeout; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]]; then
        echo "bench: $v must be a whole number (got '${!v}')" >&2
        exit 2
    fi
done
((hosts >= 2 && hosts <= 250)) || { echo "bench: --hosts must be 2..250" >&2; exit 2; }
((seconds >= 1)) || { echo "bench: --seconds must be at least 1" >&2; exit 2; }
modes=()
for m in "${MODES_ALL[@]}"; do
    if [[ -z "$only" || ",$only," == *",$m,"* ]]; then modes+=("$m"); fi
done
((${#modes[@]} > 0)) || { echo "bench: --only selected nothing (known: ${MODES_ALL[*]})" >&2; exit 2; }

if ((EUID != 0)); then
    echo "bench: needs root (it creates network namespaces): sudo bash $0 $*" >&2
    exit 1
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

# More than ~30 hosts overflow the neighbour tables (global across namespaces, 1024 entries by
# default): raise them for the run and restore them on exit.
SYSCTLS_SAVED=()
raise_neighbour_tables() {
    local want=$((hosts * hosts)) family n factor key path old new
    for family in ipv4 ipv6; do
        for n in 1 2 3; do
            factor=$((n == 3 ? 4 : n))
            key=net.$family.neigh.default.gc_thresh$n
            path=/proc/sys/${key//.//}
            old=$(cat "$path")
            new=$((want * factor > old ? want * factor : old))
            if ((new != old)); then
                SYSCTLS_SAVED+=("$path=$old")
                echo "$new" >"$path"
                echo "  $key: $old -> $new (restored on exit)" >&2
            fi
        done
    done
}
bench_on_exit() {
    local entry
    for entry in "${SYSCTLS_SAVED[@]}"; do
        echo "${entry#*=}" >"${entry%%=*}" || echo "bench: cannot restore ${entry%%=*}" >&2
    done
    SYSCTLS_SAVED=()
}

bench_init
# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"
weft_deps
bench_build
((hosts <= 30)) || raise_neighbour_tables

# The split of what a host sends on its underlay, by weft's ports (IP bytes).
COUNTERS_NFT='
table inet wbidle {
    counter control {}
    counter sleeve {}
    counter vxlan {}
    counter other {}
    chain out {
        type filter hook output priority 0; policy accept;
        oifname "eth0" tcp dport 6783 counter name "control" accept
        oifname "eth0" tcp sport 6783 counter name "control" accept
        oifname "eth0" udp dport 6783 counter name "sleeve" accept
        oifname "eth0" udp dport 6784 counter name "vxlan" accept
        oifname "eth0" counter name "other"
    }
}'

host_ns() { echo "${PREFIX}h$1"; }

make_mesh_hosts() {
    local i ns
    ip netns add "$SWITCH"
    ip -n "$SWITCH" link add br0 type bridge
    ip -n "$SWITCH" link set br0 up
    for i in $(seq "$hosts"); do
        ns=$(host_ns "$i")
        ip netns add "$ns"
        ip -n "$SWITCH" link add "v$i" type veth peer name eth0 netns "$ns"
        ip -n "$SWITCH" link set "v$i" master br0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "$UNDERLAY.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip netns exec "$ns" nft -f - <<<"$COUNTERS_NFT"
    done
}

# start_mesh DIR MODE: a router on every host, hosts 2.. told about host1.
start_mesh() {
    local dir=$1 mode=$2 i
    local -a extra=()
    read -r -a extra <<<"${WEFT_BENCH_ROUTER_ARGS:-}"
    for i in $(seq "$hosts"); do
        mkdir -p "$dir/host$i"
        local -a args=(router
            --data-dir "$dir/host$i/data"
            --cni-socket "$dir/host$i/cni.sock"
            --name "$(printf '02:77:69:00:%02x:%02x' $((i / 256)) $((i % 256)))"
            --nickname "host$i"
            --mesh-id wbidle
            --status-addr "$STATUS_ADDR"
            --datapath "$mode"
            --underlay-mtu 1500
            "${extra[@]}")
        ((i == 1)) || args+=("$UNDERLAY.1")
        (
            while read -r v; do unset "$v"; done < <(compgen -e | grep '^WEFT_' || true)
            exec ip netns exec "$(host_ns "$i")" "$WEFT" "${args[@]}"
        ) </dev/null >"$dir/host$i/router.log" 2>&1 &
    done
}

# mesh_state MODE: how many hosts are settled: every other host connected, and each connection
# on vxlan (auto) or with its sleeve link up (sleeve).
mesh_state() {
    local mode=$1 i ready=0 state
    for i in $(seq "$hosts"); do
        state=$(ip netns exec "$(host_ns "$i")" "$WEFT" status --json --status-addr "$STATUS_ADDR" 2>/dev/null |
            python3 -c '
import json, sys
r, mode, n = json.load(sys.stdin), sys.argv[1], int(sys.argv[2])
up = [c for c in r["connections"] if c["state"] == "established"]
paths = [c.get("datapath") or {} for c in up]
ok = len(up) == n - 1 and all(
    (p.get("datapath") == "vxlan") if mode == "auto" else (p.get("health") == "up") for p in paths)
print("ok" if ok else "%d/%d" % (len(up), n - 1))' "$mode" "$hosts" 2>/dev/null || echo down)
        [[ "$state" != ok ]] || ready=$((ready + 1))
    done
    echo "$ready"
}

# sample OUT: per host, eth0's tx_bytes and tx_packets and the nft counters (bytes).
sample() {
    local out=$1 i ns
    : >"$out"
    for i in $(seq "$hosts"); do
        ns=$(host_ns "$i")
        printf '%s %s %s %s\n' "$i" \
            "$(ip netns exec "$ns" cat /sys/class/net/eth0/statistics/tx_bytes)" \
            "$(ip netns exec "$ns" cat /sys/class/net/eth0/statistics/tx_packets)" \
            "$(ip netns exec "$ns" nft -j list counters table inet wbidle |
                python3 -c 'import json,sys; c={o["counter"]["name"]: o["counter"]["bytes"] for o in json.load(sys.stdin)["nftables"] if "counter" in o}; print(*(c[k] for k in ("control","sleeve","vxlan","other")))')" \
            >>"$out"
    done
}

HEADER=$(
    echo "weft idle liveness cost"
    echo "  commit   $(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    echo "  kernel   $(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
    echo "  binary   $WEFT ${WEFT_BENCH_ROUTER_ARGS:+(+ $WEFT_BENCH_ROUTER_ARGS)}"
    echo "  runs     $hosts hosts on one switch, no password, no pods; ${settle}s after the mesh is complete, ${seconds}s measured"
)
echo "$HEADER" >&2

for mode in "${modes[@]}"; do
    log "--datapath $mode, $hosts hosts"
    make_mesh_hosts
    dir=$STATE_DIR/$mode
    mkdir -p "$dir"
    start=$SECONDS
    start_mesh "$dir" "$mode"
    while :; do
        ready=$(mesh_state "$mode")
        ((ready == hosts)) && break
        ((SECONDS - start < timeout)) || die "$ready of $hosts hosts settled after ${timeout}s"
        echo "  $ready of $hosts hosts settled after $((SECONDS - start))s" >&2
        sleep 2
    done
    echo "  mesh complete after $((SECONDS - start))s; settling ${settle}s" >&2
    sleep "$settle"
    sample "$dir/before"
    sleep "$seconds"
    sample "$dir/after"
    ready=$(mesh_state "$mode")
    echo "  measured ${seconds}s; $ready of $hosts hosts still settled at the end" >&2
    python3 - "$mode" "$seconds" "$dir/before" "$dir/after" "$ready" "$hosts" >>"$RESULTS" <<'EOF'
import sys
mode, secs, before, after, ready, n = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
read = lambda p: {int(l.split()[0]): [int(x) for x in l.split()[1:]] for l in open(p)}
b, a = read(before), read(after)
rates = [[(a[h][k] - b[h][k]) / secs for k in range(6)] for h in sorted(a)]
mean = lambda k: sum(r[k] for r in rates) / len(rates)
tx = [r[0] for r in rates]
print("\t".join([mode, n, "%.3f" % (mean(0) / 1e3), "%.3f" % (min(tx) / 1e3), "%.3f" % (max(tx) / 1e3),
                 "%.1f" % mean(1)] + ["%.3f" % (mean(k) / 1e3) for k in (2, 3, 4, 5)] + [ready]))
EOF
    teardown
done

echo
echo "$HEADER"
echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$RESULTS" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print("sent per host on the underlay, KB/s (1 KB = 1000 bytes); the split by port is IP bytes, the")
print("total is eth0's tx_bytes (with Ethernet headers)")
print("%-8s %5s %8s %15s %9s %16s %16s %16s %8s %8s" % ("mode", "hosts", "KB/s", "(min-max)", "pkts/s",
      "control tcp/6783", "sleeve udp/6783", "vxlan udp/6784", "other", "settled"))
for mode, n, mean, lo, hi, pkts, ctl, slv, vx, other, ready in rows:
    ip_total = sum(float(x) for x in (ctl, slv, vx, other)) or float("nan")
    pct = lambda x: "%6.3f (%3.0f%%)" % (float(x), 100 * float(x) / ip_total)
    print("%-8s %5s %8s %15s %9s %16s %16s %16s %8s %8s" % (mode, n, mean, "(%s-%s)" % (lo, hi), pkts,
          pct(ctl), pct(slv), pct(vx), other, "%s/%s" % (ready, n)))
EOF
