#!/usr/bin/env bash
# CNI ADD and DEL latency through cnitool (the reference libcni client): median and p99 of N
# ADD + DEL cycles for each plugin chain, Debian's reference bridge + host-local always
# measured in the same run as the comparison row.
#
#   bash bench/cni.sh [--n N] [--warmup K] [--conflist NAME=FILE]...
#                     [--weft-bin PATH] [--weft-router PATH] [--weft-conflist FILE]
#
#   --n N                cycles per row (default 100, or WEFT_BENCH_CNI_N)
#   --warmup K           cycles before measuring, not counted (default 3)
#   --conflist NAME=FILE one more row: a conflist of plugins in /usr/lib/cni (its "name" is
#                        replaced by NAME; @STATE@ in it becomes a scratch dir, e.g. for
#                        host-local's dataDir)
#   --weft-bin PATH      the weft-cni plugin: adds the weft-cni row
#   --weft-router PATH   the weft binary whose router the plugin talks to (default: `weft`
#                        next to the plugin); it runs in the bench's host netns
#   --weft-conflist FILE the weft row's conflist (default: one weft-cni plugin, see
#                        WEFT_CONFLIST below); @STATE@ is replaced as above
#
# Environment: WEFT_BENCH_ROUTER_ARGS (more `weft router` flags, space separated),
# WEFT_BENCH_TIMEOUT (seconds to wait for the router, default 30). Needs root and
# tests/clients/setup.sh (run here, instant when warm).
#
# Each row runs in a fresh "host" netns (wcnib<pid>-h, eth0 on a dummy underlay) with one
# container netns (wcnib<pid>-c); cnitool is run inside the host netns by a Python loop, so a
# time is one cnitool process: exec, libcni, the plugin chain, cnitool's result cache. If the
# weft plugin or router is missing, or the router does not come up, the weft row says why it
# was skipped and the bench still succeeds. Everything is removed on exit (trap).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=wcnib$$-
HOST=${PREFIX}h
CTR=${PREFIX}c
STATUS_ADDR=127.0.0.1:6784

n=${WEFT_BENCH_CNI_N:-100}
warmup=3
extra=()
weft_bin=""
weft_router=""
weft_conflist=""
timeout=${WEFT_BENCH_TIMEOUT:-30}

usage() { sed -n '2,24s/^# \{0,1\}//p' "$0"; }
need() { [[ $# -ge 2 ]] || { usage >&2; exit 2; }; }
while (($#)); do
    case "$1" in
    --n) need "$@"; n=$2; shift 2 ;;
    --warmup) need "$@"; warmup=$2; shift 2 ;;
    --conflist) need "$@"; extra+=("$2"); shift 2 ;;
    --weft-bin) need "$@"; weft_bin=$2; shift 2 ;;
    --weft-router) need "$@"; weft_router=$2; shift 2 ;;
    --weft-conflist) need "$@"; weft_conflist=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --n must be a positive whole number" >&2; exit 2; }
[[ "$warmup" =~ ^[0-9]+$ ]] || { echo "bench: --warmup must be a whole number" >&2; exit 2; }
((EUID == 0)) || { echo "bench: needs root (it creates network namespaces)" >&2; exit 1; }

die() {
    echo "bench: $*" >&2
    exit 1
}

W=$(mktemp -d "${TMPDIR:-/tmp}/wcnib.XXXXXX")
RESULTS=$W/results.tsv
: >"$RESULTS"
router_pid=""

teardown_row() {
    local ns pid
    if [[ -n "$router_pid" ]]; then
        kill "$router_pid" 2>/dev/null || true
        wait "$router_pid" 2>/dev/null || true
        router_pid=""
    fi
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || echo "bench: cannot delete netns $ns" >&2
    done
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    teardown_row
    rm -rf "$W"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools ------------------------------------------------------------------------------------
bash "$ROOT/tests/clients/setup.sh" >"$W/setup.env" 2>"$W/setup.log" ||
    { cat "$W/setup.log" >&2; die "tests/clients/setup.sh failed"; }
# shellcheck source=/dev/null
source "$W/setup.env"

# --- rows ---------------------------------------------------------------------------------------
make_host() {
    ip netns add "$HOST"
    ip netns add "$CTR"
    ip -n "$HOST" link set lo up
    ip -n "$HOST" link add eth0 type veth peer name underlay # no dummy driver everywhere
    ip -n "$HOST" link set underlay up
    ip -n "$HOST" addr add 10.213.43.1/24 dev eth0
    ip -n "$HOST" link set eth0 up
}

# conflist_for NAME FILE: FILE with its "name" set to NAME and @STATE@ replaced.
conflist_for() {
    python3 - "$1" "$2" "$W/state-$1" <<'EOF'
import json, sys
name, path, state = sys.argv[1:4]
conf = json.loads(open(path).read().replace("@STATE@", state))
conf["name"] = name
print(json.dumps(conf, indent=1))
EOF
}

# measure ROW CNI_PATH CONFLIST-FILE: N cycles of cnitool add + del in the host netns.
# ROW labels the table; the network is named row1, row2... (CNI names allow [A-Za-z0-9_.-]).
rows=0
measure() {
    local row=$1 cni_path=$2 file=$3 net
    rows=$((rows + 1))
    net=row$rows
    mkdir -p "$W/net-$net"
    conflist_for "$net" "$file" >"$W/net-$net/10-$net.conflist"
    ip netns exec "$HOST" env CNI_PATH="$cni_path" NETCONFPATH="$W/net-$net" \
        python3 - "$WEFT_CNITOOL" "$net" "/run/netns/$CTR" "$n" "$warmup" >"$W/$net.out" 2>"$W/$row.err" <<'EOF' || return 1
import subprocess, sys, time
cnitool, net, netns, n, warmup = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def run(verb):
    t0 = time.perf_counter()
    p = subprocess.run([cnitool, verb, net, netns], capture_output=True, text=True)
    dt = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        sys.exit(f"cnitool {verb} {net} failed (exit {p.returncode}): {p.stderr.strip()} {p.stdout.strip()}")
    return dt

for _ in range(warmup):
    run("add"), run("del")
for _ in range(n):
    print("%.3f\t%.3f" % (run("add"), run("del")))
EOF
    python3 - "$row" "$W/$net.out" >>"$RESULTS" <<'EOF'
import math, statistics, sys
row, path = sys.argv[1], sys.argv[2]
adds, dels = zip(*(map(float, l.split()) for l in open(path)))
def p99(v):
    s = sorted(v)
    return s[math.ceil(0.99 * len(s)) - 1]
print("\t".join([row, str(len(adds)), "%.1f" % statistics.median(adds), "%.1f" % p99(adds),
                 "%.1f" % statistics.median(dels), "%.1f" % p99(dels)]))
EOF
}

skip() { printf '%s\tskipped: %s\n' "$1" "$2" >>"$RESULTS"; echo "  $1 skipped: $2" >&2; }

REF_CONFLIST=$W/ref.conflist
cat >"$REF_CONFLIST" <<'EOF'
{ "cniVersion": "1.0.0", "name": "ref",
  "plugins": [
    { "type": "bridge", "bridge": "cnibench0", "isGateway": true, "ipMasq": false,
      "ipam": { "type": "host-local", "ranges": [[{"subnet": "10.96.20.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "@STATE@/ipam" } } ] }
EOF

run_row() { # run_row NAME CNI_PATH CONFLIST
    echo "==> $1" >&2
    make_host
    if ! measure "$@"; then
        cat "$W/$1.err" >&2
        teardown_row
        return 1
    fi
    teardown_row
}

commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
{
    echo "weft CNI latency benchmark (cnitool ADD then DEL, $n cycles per row after $warmup warm-up)"
    echo "  commit   $commit"
    echo "  kernel   $(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
    echo "  cnitool  $WEFT_CNITOOL; reference plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins) in $WEFT_REF_CNI_DIR"
} >"$W/header"
cat "$W/header" >&2

run_row bridge+host-local "$WEFT_REF_CNI_DIR" "$REF_CONFLIST" || die "the reference row failed"

for spec in "${extra[@]}"; do
    name=${spec%%=*} file=${spec#*=}
    [[ "$name" != "$spec" && -f "$file" ]] || die "--conflist wants NAME=FILE (got $spec)"
    run_row "$name" "$WEFT_REF_CNI_DIR" "$file" || skip "$name" "cnitool failed (above)"
done

# --- weft-cni -----------------------------------------------------------------------------------
# The weft row's default conflist: the plugin alone, talking to the bench's own router (its
# socket is @SOCKET@, so a router already running on this machine is never touched); cniVersion
# 1.0.0 because cnitool's libcni 1.1 cannot parse a 1.1.0 result.
WEFT_CONFLIST='{ "cniVersion": "1.0.0", "name": "weft", "plugins": [ { "type": "weft-cni", "socket": "@SOCKET@" } ] }'

weft_row() {
    if [[ -z "$weft_bin" ]]; then
        skip weft-cni "no --weft-bin given"
        return 0
    fi
    [[ -x "$weft_bin" ]] || { skip weft-cni "weft-cni binary $weft_bin not found"; return 0; }
    weft_bin=$(cd "$(dirname "$weft_bin")" && pwd)/$(basename "$weft_bin") # absolute, links kept
    [[ -n "$weft_router" ]] || weft_router=$(dirname "$weft_bin")/weft
    [[ -x "$weft_router" ]] || { skip weft-cni "no weft router binary ($weft_router); pass --weft-router"; return 0; }
    local bin=$W/weft-bin
    mkdir -p "$bin" "$W/weft"
    chmod 0755 "$W/weft" # holds the CNI socket: root-owned, writable by root only
    ln -sf "$weft_bin" "$bin/weft-cni"
    local conflist=$W/weft.conflist
    if [[ -n "$weft_conflist" ]]; then
        cp "$weft_conflist" "$conflist"
    else
        echo "${WEFT_CONFLIST//@SOCKET@/$W/weft/cni.sock}" >"$conflist"
    fi

    echo "==> weft-cni" >&2
    make_host
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/weft/machine-id"
    local -a args=(router --data-dir "$W/weft/data" --machine-id-file "$W/weft/machine-id"
        --nickname bench --status-addr "$STATUS_ADDR" --datapath sleeve
        --cni-socket "$W/weft/cni.sock")
    # shellcheck disable=SC2206
    args+=(${WEFT_BENCH_ROUTER_ARGS:-})
    (
        while read -r v; do unset "$v"; done < <(compgen -e | grep '^WEFT_' || true)
        exec ip netns exec "$HOST" "$weft_router" "${args[@]}"
    ) </dev/null >"$W/weft/router.log" 2>&1 &
    router_pid=$!
    local start=$SECONDS
    until ip netns exec "$HOST" "$weft_router" status --status-addr "$STATUS_ADDR" >/dev/null 2>&1; do
        if ! kill -0 "$router_pid" 2>/dev/null || ((SECONDS - start >= timeout)); then
            tail -n 20 "$W/weft/router.log" >&2
            teardown_row
            skip weft-cni "the router did not come up (log above)"
            return 0
        fi
        sleep 0.2
    done
    # The plugin first, then Debian's plugins for anything it delegates to.
    if ! measure weft-cni "$bin:$WEFT_REF_CNI_DIR" "$conflist"; then
        cat "$W/weft-cni.err" >&2
        tail -n 20 "$W/weft/router.log" >&2
        teardown_row
        skip weft-cni "cnitool failed (above)"
        return 0
    fi
    teardown_row
}
weft_row

# --- report -------------------------------------------------------------------------------------
echo
cat "$W/header"
echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  times in ms, each one cnitool process (exec + libcni + the plugin chain), run inside the host netns"
echo
printf '%-22s %5s %11s %9s %11s %9s\n' "plugin chain" N "ADD median" "ADD p99" "DEL median" "DEL p99"
while IFS=$'\t' read -r row rest; do
    if [[ "$rest" == skipped:* ]]; then
        printf '%-22s %s\n' "$row" "$rest"
    else
        IFS=$'\t' read -r cnt am ap dm dp <<<"$rest"
        printf '%-22s %5s %11s %9s %11s %9s\n' "$row" "$cnt" "$am" "$ap" "$dm" "$dp"
    fi
done <"$RESULTS"
