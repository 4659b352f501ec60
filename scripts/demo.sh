#!/usr/bin/env bash
# weft demo: an encrypted mesh of N hosts on this machine.
#
#   scripts/demo.sh [--hosts N] [--keep]   build, start N hosts (default 5), show the mesh, clean up
#   scripts/demo.sh --clean                remove what a --keep run left behind
#
# Each host is a network namespace (weftdemo-host1 ...) with its own hostname (a UTS namespace)
# and an eth0 plugged into a bridge in a "switch" namespace (weftdemo-switch). Every host runs
# `weft router` with the same password file, as a Kubernetes Secret would provide it. Hosts
# 2..N are told only about host1; they find each other through gossip. Needs root.
set -euo pipefail

PREFIX=weftdemo-
SWITCH=${PREFIX}switch
SUBNET=10.213.0 # hosts are 10.213.0.1 ... 10.213.0.N, only inside the demo's namespaces
STATE_DIR=${TMPDIR:-/tmp}/weftdemo
CONVERGE_TIMEOUT=${WEFT_DEMO_TIMEOUT:-60}

hosts=5
keep=0
clean_only=0
args=("$@")

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "$0"
}

while (($#)); do
    case "$1" in
    --hosts)
        [[ $# -ge 2 ]] || { usage >&2; exit 2; }
        hosts=$2
        shift 2
        ;;
    --hosts=*) hosts=${1#--hosts=}; shift ;;
    --keep) keep=1; shift ;;
    --clean) clean_only=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "demo: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$hosts" =~ ^[0-9]+$ ]] || ((hosts < 2 || hosts > 200)); then
    echo "demo: --hosts must be a number from 2 to 200" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WEFT=${CARGO_TARGET_DIR:-target}/release/weft # relative to $ROOT, where the demo runs
WEFT_CNI=${CARGO_TARGET_DIR:-target}/release/weft-cni

if ((EUID != 0)); then
    echo "demo: needs root (it creates network namespaces): sudo $0 ${args[*]}" >&2
    exit 1
fi

log() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
[[ -t 1 ]] || log() { printf '\n==> %s\n' "$*"; }

# Every namespace the demo owns, from this run or an earlier one.
demo_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep "^${PREFIX}" || true
}

# Stops the routers and removes the namespaces and the state directory. Safe to run any time.
clean() {
    local ns pids
    for ns in $(demo_namespaces); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [[ -z "$pids" ]] || kill $pids 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for ns in $(demo_namespaces); do
            [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] || alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for ns in $(demo_namespaces); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$STATE_DIR"
}

if ((clean_only)); then
    left=$(demo_namespaces | wc -l)
    clean
    echo "demo: removed ${left} namespace(s) and $STATE_DIR"
    exit 0
fi

# A new demo replaces whatever an earlier --keep (or killed) run left behind.
if [[ -n "$(demo_namespaces)" ]]; then
    echo "demo: removing leftovers of an earlier run"
fi
clean

# --- build ---------------------------------------------------------------------------------
# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"
weft_deps
# Under sudo, root's PATH may lack the invoking user's toolchain.
for dir in "$HOME/.cargo/bin" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin"}; do
    command -v cargo >/dev/null 2>&1 && break
    [[ -x "$dir/cargo" ]] && PATH=$dir:$PATH
done
command -v cargo >/dev/null 2>&1 || { echo "demo: cargo not found (install a Rust toolchain)" >&2; exit 1; }
log "building weft (cargo build --release -p weft-router -p weft-cni)"
cargo build --release -p weft-router -p weft-cni

# --- set up --------------------------------------------------------------------------------

finished=0
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    # On a failure (not Ctrl-C) the routers' logs usually tell why.
    if ((rc != 0 && rc != 130 && rc != 143)) && ((finished == 0)); then
        echo >&2
        echo "demo: FAILED (exit $rc); router logs:" >&2
        local f
        for f in "$STATE_DIR"/host*.log; do
            [[ -f "$f" ]] || continue
            echo "--- $f (last 25 lines)" >&2
            tail -n 25 "$f" >&2
        done
    fi
    if ((keep)) && ((rc == 0)); then
        return
    fi
    clean
    echo "demo: cleaned up (namespaces and $STATE_DIR removed)"
    exit "$rc"
}
trap on_exit EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT
trap 'echo "demo: terminated" >&2; exit 143' TERM

mkdir -p "$STATE_DIR"
chmod 700 "$STATE_DIR"
# The mesh password, as a Kubernetes Secret would hold it. Each router reads it from the file.
head -c 24 /dev/urandom | base64 >"$STATE_DIR/password"
chmod 600 "$STATE_DIR/password"
# The hosts share this machine's kernel; give them a machine id of their own (the peer name is
# derived from machine id + hostname, and /etc/machine-id may be missing in a container).
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE_DIR/machine-id"

log "creating $hosts hosts (network namespaces ${PREFIX}host1..${hosts}) on a bridge in $SWITCH"
ip netns add "$SWITCH"
ip -n "$SWITCH" link add br0 type bridge
ip -n "$SWITCH" link set br0 up
for i in $(seq "$hosts"); do
    ns=${PREFIX}host$i
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Both ends are created directly inside their namespaces: nothing touches the real host.
    ip link add "port$i" netns "$SWITCH" type veth peer name eth0 netns "$ns"
    ip -n "$SWITCH" link set "port$i" master br0 up
    ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    echo "  host$i  $SUBNET.$i"
done

log "starting weft router on every host (encryption on; hosts 2..$hosts know only host1 = $SUBNET.1)"
for i in $(seq "$hosts"); do
    ns=${PREFIX}host$i
    mkdir -p "$STATE_DIR/host$i"
    chmod 0755 "$STATE_DIR/host$i" # holds the CNI socket: root-owned, writable by root only
    peers=""
    ((i == 1)) || peers=$SUBNET.1
    # shellcheck disable=SC2016
    ip netns exec "$ns" unshare --uts sh -c 'hostname "$1"; shift; exec "$@"' sh "host$i" \
        "$WEFT" router \
        --data-dir "$STATE_DIR/host$i" \
        --password-file "$STATE_DIR/password" \
        --mesh-id weftdemo \
        --machine-id-file "$STATE_DIR/machine-id" \
        --heartbeat-interval 2 \
        --gossip-interval 5 \
        --datapath sleeve \
        --cni-socket "$STATE_DIR/host$i/cni.sock" \
        $peers \
        </dev/null >"$STATE_DIR/host$i.log" 2>&1 &
    echo "  host$i: weft router $peers  (log: $STATE_DIR/host$i.log)"
done

# Prints "peers reachable established" for one host, or nothing while its router is not up.
host_state() {
    ip netns exec "${PREFIX}host$1" "$WEFT" status --json 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
est = sum(1 for c in r["connections"] if c["state"] == "established")
print(len(r["peers"]), len(r["routes"]), est)
' 2>/dev/null || true
}

log "waiting for the mesh to converge (every host: $hosts peers, $((hosts - 1)) encrypted connections; timeout ${CONVERGE_TIMEOUT}s)"
start=$SECONDS
while :; do
    done_hosts=0
    line=""
    for i in $(seq "$hosts"); do
        # A router that died will not come back: fail now rather than at the deadline.
        if [[ -z "$(ip netns pids "${PREFIX}host$i" 2>/dev/null)" ]]; then
            echo "demo: the router on host$i exited" >&2
            exit 1
        fi
        read -r p r e <<<"$(host_state "$i")" || true
        if [[ -z "${p:-}" ]]; then
            line+=" host$i:starting"
            continue
        fi
        line+=" host$i:${p}p/${e}c"
        if ((p == hosts && r == hosts - 1 && e == hosts - 1)); then
            done_hosts=$((done_hosts + 1))
        fi
    done
    elapsed=$((SECONDS - start))
    if ((hosts <= 10)); then
        printf '  %3ss  %d/%d hosts converged  (peers/connections:%s)\n' "$elapsed" "$done_hosts" "$hosts" "$line"
    else
        printf '  %3ss  %d/%d hosts converged\n' "$elapsed" "$done_hosts" "$hosts"
    fi
    ((done_hosts == hosts)) && break
    if ((elapsed >= CONVERGE_TIMEOUT)); then
        echo "demo: the mesh did not converge within ${CONVERGE_TIMEOUT}s" >&2
        exit 1
    fi
    sleep 1
done
echo "  converged in $((SECONDS - start))s"

# --- show ----------------------------------------------------------------------------------
run() { # run HOST COMMAND...: show and run a command inside a host
    local h=$1
    shift
    printf '\n$ ip netns exec %shost%s %s\n' "$PREFIX" "$h" "$*"
    ip netns exec "${PREFIX}host$h" "$@"
}

log "weft status, on every host"
for i in $(seq "$hosts"); do
    run "$i" "$WEFT" status
    run "$i" "$WEFT" status connections
done

log "routes and peers, as host$hosts sees them"
run "$hosts" "$WEFT" status routes
run "$hosts" "$WEFT" status peers

if ((hosts > 2)); then
    log "a control-plane echo across the mesh: host$hosts -> host2 (neither was told about the other)"
    run "$hosts" "$WEFT" ping host2
else
    log "a control-plane echo: host2 -> host1"
    run 2 "$WEFT" ping host1
fi

log "pods: one per host, added by the weft-cni plugin (CNI ADD, as kubelet's runtime calls it)"
# Each host's plugin talks to its own router (hosts share this machine's /run, so each router
# has its own socket); in a cluster the config is just {"type": "weft-cni"}.
declare -a pod_ip
for i in $(seq "$hosts"); do
    pod=${PREFIX}pod$i
    ip netns add "$pod"
    conf=$STATE_DIR/host$i/weft.conf
    printf '{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":"%s"}\n' \
        "$STATE_DIR/host$i/cni.sock" >"$conf"
    if ! result=$(ip netns exec "${PREFIX}host$i" env CNI_COMMAND=ADD CNI_CONTAINERID="demo-pod$i" \
        CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH="$(dirname "$WEFT_CNI")" \
        "$WEFT_CNI" <"$conf"); then
        echo "demo: CNI ADD for pod$i on host$i failed: $result" >&2
        exit 1
    fi
    pod_ip[i]=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])' <<<"$result")
    summary=$(python3 -c '
import json, sys
r = json.load(sys.stdin)
ip = r["ips"][0]
print("%s gw %s, host end %s, mtu %s" % (ip["address"], ip["gateway"], r["interfaces"][0]["name"], r["interfaces"][1]["mtu"]))' <<<"$result")
    echo "  pod$i on host$i: $summary"
done
printf '\n  ping matrix (row pings column):\n         '
for j in $(seq "$hosts"); do printf ' pod%-3s' "$j"; done
echo
ping_failures=0
for i in $(seq "$hosts"); do
    printf '  pod%-4s' "$i"
    for j in $(seq "$hosts"); do
        if ((i == j)); then
            printf '   -   '
        elif ip netns exec "${PREFIX}pod$i" ping -c 2 -i 0.2 -W 2 -q "${pod_ip[j]}" >/dev/null 2>&1; then
            printf '   ok  '
        else
            printf '  FAIL '
            ping_failures=$((ping_failures + 1))
        fi
    done
    echo
done
if ((ping_failures > 0)); then
    echo "demo: $ping_failures pod pairs could not reach each other" >&2
    exit 1
fi
if command -v iperf3 >/dev/null; then
    ip netns exec "${PREFIX}pod1" iperf3 -s -1 -D >/dev/null 2>&1
    sleep 0.5
    rate=$(ip netns exec "${PREFIX}pod2" iperf3 -c "${pod_ip[1]}" -t 3 -J 2>/dev/null |
        python3 -c 'import json,sys; print("%.2f Gbit/s" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))' 2>/dev/null || echo "n/a")
    echo "  throughput pod2 -> pod1 (iperf3 TCP, 3 s, encrypted sleeve): $rate"
fi
run 1 "$WEFT" status

log "address management: the cluster range split among the hosts, no external store"
run 1 "$WEFT" ipam
run "$hosts" "$WEFT" ipam check

log "metrics (host1, excerpt)"
printf '\n$ ip netns exec %shost1 curl -s 127.0.0.1:6784/metrics | grep ...\n' "$PREFIX"
ip netns exec "${PREFIX}host1" curl -sf "http://127.0.0.1:6784/metrics" |
    grep -E '^weft_(peers|connections|handshake_failures|frames_rejected|ipam_(allocations|owned_addresses|unreachable_owners))' || true

finished=1
if ((keep)); then
    log "the mesh keeps running (--keep)"
    cat <<EOF
  Inspect it:
    ip netns exec ${PREFIX}host1 $WEFT status
    ip netns exec ${PREFIX}host1 $WEFT status peers
    ip netns exec ${PREFIX}host$hosts $WEFT ping host1
    ip netns exec ${PREFIX}host1 curl -s 127.0.0.1:6784/report
  Logs:      $STATE_DIR/host*.log
  Clean up:  scripts/demo.sh --clean
EOF
else
    log "done: the demo mesh of $hosts hosts converged, answered, and carried pod traffic"
fi
