#!/usr/bin/env bash
# weft sleeve benchmark: the kernel's VXLAN against weft's sleeve (plain and encrypted).
#
#   bash bench/sleeve.sh [--quick] [--only CONFIGS] [--no-profile]
#
#   --quick          1 s runs, fewer pings, no profile (a smoke test)
#   --only CONFIGS   comma-separated subset of: vxlan,sleeve-plain,sleeve-encrypted
#   --no-profile     skip the perf profile of the encrypted sleeve
#
# Environment: WEFT_BENCH_SECONDS (length of each iperf3 run, default 5), WEFT_BENCH_PINGS
# (default 50), WEFT_BENCH_PROFILE_SECONDS (default 4), WEFT_BENCH_TIMEOUT (seconds to wait for
# routers and pods, default 60), WEFT_BENCH_BIN (measure this binary, skip the build),
# CARGO_TARGET_DIR. Needs root: it builds two hosts out of network namespaces on this machine.
set -euo pipefail

CONFIGS_ALL=(vxlan sleeve-plain sleeve-encrypted)
PREFIX=wbench$$-
H1=${PREFIX}host1
H2=${PREFIX}host2
P1=${PREFIX}pod1
P2=${PREFIX}pod2
UNDERLAY=10.213.42 # host1 .1, host2 .2 (a veth pair between the two host namespaces)
POD_NET=10.250.0    # pod1 .1, pod2 .2
STATUS_ADDR=127.0.0.1:6784

seconds=${WEFT_BENCH_SECONDS:-5}
pings=${WEFT_BENCH_PINGS:-50}
profile_seconds=${WEFT_BENCH_PROFILE_SECONDS:-4}
timeout=${WEFT_BENCH_TIMEOUT:-60}
profile=1
quick=0
only=""

usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }

while (($#)); do
    case "$1" in
    --quick) quick=1; shift ;;
    --no-profile) profile=0; shift ;;
    --only)
        [[ $# -ge 2 ]] || { usage >&2; exit 2; }
        only=$2
        shift 2
        ;;
    --only=*) only=${1#--only=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if ((quick)); then
    seconds=1
    pings=10
    profile=0
fi
for v in seconds pings profile_seconds timeout; do
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
case " ${configs[*]} " in *" sleeve-encrypted "*) ;; *) profile=0 ;; esac

if ((EUID != 0)); then
    echo "bench: needs root (it creates network namespaces): sudo bash $0 $*" >&2
    exit 1
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '\n==> %s\n' "$*" >&2; }
die() {
    echo "bench: $*" >&2
    exit 1
}

# --- cleanup (set before anything is created) -------------------------------------------------
STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/wbench.XXXXXX")
chmod 700 "$STATE_DIR"
RESULTS=$STATE_DIR/results.tsv
: >"$RESULTS"
bg_pids=() # processes started in the root namespace (perf); the rest live in our namespaces

our_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep "^${PREFIX}" || true
}

# Stops every process in our namespaces and deletes them. Safe to call at any time.
teardown() {
    local ns pids alive
    for ns in $(our_namespaces); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [[ -z "$pids" ]] || kill $pids 2>/dev/null || true
    done
    for _ in $(seq 50); do
        alive=0
        for ns in $(our_namespaces); do
            [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] || alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for ns in $(our_namespaces); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}

print_router_logs() {
    local f
    for f in "$STATE_DIR"/*/host*/router.log; do
        [[ -f "$f" ]] || continue
        echo "--- ${f#"$STATE_DIR"/} (last 30 lines)" >&2
        tail -n 30 "$f" >&2
    done
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if ((rc != 0 && rc != 130 && rc != 143)); then
        echo "bench: FAILED (exit $rc)" >&2
        print_router_logs
    fi
    local p
    for p in "${bg_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    teardown
    rm -rf "$STATE_DIR"
    if [[ -n "$(our_namespaces)" ]]; then
        echo "bench: could not remove namespaces: $(our_namespaces | tr '\n' ' ')" >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT
trap 'echo "bench: terminated" >&2; exit 143' TERM

# --- dependencies and build ------------------------------------------------------------------
# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"
weft_deps
perf_note=""
if ((profile)) && ! command -v perf >/dev/null 2>&1; then
    # Only the profile needs perf: a failed install skips the profile, not the benchmark.
    weft_deps linux-perf || perf_note="perf is not installed and 'linux-perf' could not be installed"
fi

if [[ -n "${WEFT_BENCH_BIN:-}" ]]; then
    WEFT=$(realpath "$WEFT_BENCH_BIN")
    [[ -x "$WEFT" ]] || die "WEFT_BENCH_BIN=$WEFT_BENCH_BIN is not an executable"
    log "using $WEFT (WEFT_BENCH_BIN; not built)"
else
    # Under sudo, root's PATH may lack the invoking user's toolchain.
    for dir in "$HOME/.cargo/bin" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin"}; do
        command -v cargo >/dev/null 2>&1 && break
        [[ -x "$dir/cargo" ]] && PATH=$dir:$PATH
    done
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install a Rust toolchain)"
    log "building weft (cargo build --release -p weft-router)"
    cargo build --release -p weft-router
    WEFT=$(realpath "${CARGO_TARGET_DIR:-target}/release/weft")
fi

# --- the two hosts -----------------------------------------------------------------------------
# Two host namespaces joined by a veth pair (MTU 1500), one pod namespace per host.
make_hosts() {
    local i
    ip netns add "$H1"
    ip netns add "$H2"
    ip -n "$H1" link add eth0 mtu 1500 type veth peer name eth0 mtu 1500 netns "$H2"
    for i in 1 2; do
        local h=${PREFIX}host$i
        ip -n "$h" link set lo up
        ip -n "$h" addr add "$UNDERLAY.$i/24" dev eth0
        ip -n "$h" link set eth0 up
        ip netns add "${PREFIX}pod$i"
        ip -n "${PREFIX}pod$i" link set lo up
    done
}

# attach_pods BRIDGE MTU: a veth from each pod to BRIDGE on its host.
attach_pods() {
    local bridge=$1 mtu=$2 i
    for i in 1 2; do
        local h=${PREFIX}host$i p=${PREFIX}pod$i
        ip -n "$h" link add vpod type veth peer name eth0 netns "$p"
        ip -n "$h" link set vpod master "$bridge" mtu "$mtu" up
        ip -n "$p" addr add "$POD_NET.$i/24" dev eth0
        ip -n "$p" link set eth0 mtu "$mtu" up
    done
}

# The reference: the kernel's VXLAN device on a bridge in each host.
setup_vxlan() {
    local i other
    for i in 1 2; do
        local h=${PREFIX}host$i
        other=$((3 - i))
        ip -n "$h" link add vxlan42 type vxlan id 42 dstport 4789 \
            local "$UNDERLAY.$i" remote "$UNDERLAY.$other" dev eth0
        ip -n "$h" link add vxbr type bridge
        ip -n "$h" link set vxlan42 master vxbr up
        ip -n "$h" link set vxbr up
    done
}

# host_report HOST [PYTHON-EXPRESSION over r]: the router's /report, or nothing while it is down.
host_report() {
    local h=$1 expr=${2:-r}
    ip netns exec "$h" "$WEFT" status --json --status-addr "$STATUS_ADDR" 2>/dev/null |
        python3 -c "import json,sys; r=json.load(sys.stdin); print($expr)" 2>/dev/null || true
}

# start_routers CONFIG-DIR [PASSWORD-FILE]: a weft router on each host, host2 told about host1.
router_pids=()
start_routers() {
    local dir=$1 password=${2:-} i
    router_pids=()
    for i in 1 2; do
        local h=${PREFIX}host$i
        mkdir -p "$dir/host$i"
        local -a args=(router
            --data-dir "$dir/host$i/data"
            --name "02:77:62:00:00:0$i"
            --nickname "host$i"
            --mesh-id wbench
            --status-addr "$STATUS_ADDR"
            --heartbeat-interval 2
            --gossip-interval 5
            --datapath sleeve
            --underlay-mtu 1500)
        [[ -z "$password" ]] || args+=(--password-file "$password")
        ((i == 1)) || args+=("$UNDERLAY.1")
        # No WEFT_* variable from the caller's environment may change the configuration
        # (WEFT_PASSWORD would turn the plain run into an encrypted one).
        (
            while read -r v; do unset "$v"; done < <(compgen -e | grep '^WEFT_' || true)
            exec ip netns exec "$h" "$WEFT" "${args[@]}"
        ) </dev/null >"$dir/host$i/router.log" 2>&1 &
        router_pids+=("$!")
    done
    # Wait for both routers: status up, the other peer connected, the bridge in place.
    local start=$SECONDS want_enc=false state
    [[ -z "$password" ]] || want_enc=true
    while :; do
        local ready=0
        for i in 1 2; do
            kill -0 "${router_pids[$((i - 1))]}" 2>/dev/null || die "the router on host$i exited"
            state=$(host_report "${PREFIX}host$i" \
                '"%d %s" % (sum(1 for c in r["connections"] if c["state"] == "established"), str(r["datapath"]["encrypted"]).lower())')
            if [[ "$state" == "1 $want_enc" ]]; then
                ready=$((ready + 1))
            elif [[ "$state" == 1\ * ]]; then
                die "host$i: datapath encrypted=${state#1 }, expected $want_enc"
            fi
        done
        ((ready == 2)) && break
        ((SECONDS - start < timeout)) || die "the routers did not connect within ${timeout}s"
        sleep 0.5
    done
    echo "  routers connected in $((SECONDS - start))s (encrypted=$want_enc)" >&2
}

wait_pods() {
    local start=$SECONDS
    until ip netns exec "$P1" ping -c 1 -W 1 -q "$POD_NET.2" >/dev/null 2>&1; do
        ((SECONDS - start < timeout)) || die "pod1 cannot ping pod2 after ${timeout}s"
        sleep 0.5
    done
    echo "  pod1 reaches pod2 after $((SECONDS - start))s" >&2
}

# --- measurements ------------------------------------------------------------------------------
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; } # record CONFIG METRIC VALUE

start_iperf_server() {
    ip netns exec "$P2" iperf3 -s -D -B "$POD_NET.2" --pidfile "$STATE_DIR/iperf3.pid" >/dev/null
    local start=$SECONDS
    until ip netns exec "$P2" ss -Hltn "sport = :5201" | grep -q .; do
        ((SECONDS - start < 10)) || die "the iperf3 server did not start in pod2"
        sleep 0.1
    done
}

# iperf_client OUT-JSON IPERF3-ARGS...: one run from pod1 to pod2 (a failed run leaves an error).
iperf_client() {
    local out=$1
    shift
    timeout $((seconds + 30)) ip netns exec "$P1" iperf3 -c "$POD_NET.2" --connect-timeout 5000 \
        -t "$seconds" -J "$@" >"$out" 2>&1 || true
}

# iperf_value JSON KIND: tcp -> Gbit/s received; udp -> kpps received.
iperf_value() {
    python3 - "$1" "$2" <<'EOF' 2>/dev/null || echo nan
import json, sys
path, kind = sys.argv[1], sys.argv[2]
r = json.load(open(path))
if r.get("error"):
    print("iperf3: " + r["error"], file=sys.stderr)
    print("nan")
elif kind == "tcp":
    print("%.3f" % (r["end"]["sum_received"]["bits_per_second"] / 1e9))
else:
    s = r["end"]["sum"]
    received = s["packets"] - s["lost_packets"]
    # received kpps, then the sender's kpps (the client's count of datagrams it sent)
    print("%.1f %.1f" % (received / s["seconds"] / 1e3, s["packets"] / s["seconds"] / 1e3))
EOF
}

measure() {
    local cfg=$1 out rtt value
    out=$STATE_DIR/$cfg
    rtt=$(ip netns exec "$P1" ping -c "$pings" -i 0.02 -q "$POD_NET.2" 2>/dev/null |
        sed -n 's|^rtt [^=]*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
    record "$cfg" rtt_ms "${rtt:-nan}"
    echo "  ping RTT avg: ${rtt:-n/a} ms ($pings pings)" >&2

    start_iperf_server
    iperf_client "$out-tcp1.json"
    value=$(iperf_value "$out-tcp1.json" tcp)
    record "$cfg" tcp1_gbps "$value"
    echo "  TCP 1 stream: $value Gbit/s" >&2

    iperf_client "$out-tcp4.json" -P 4
    value=$(iperf_value "$out-tcp4.json" tcp)
    record "$cfg" tcp4_gbps "$value"
    echo "  TCP 4 streams: $value Gbit/s" >&2

    if [[ "$cfg" == sleeve-encrypted ]] && ((profile)); then
        profile_routers "$cfg"
    fi

    # Last: a UDP flood may upset the mesh's control traffic for a while.
    iperf_client "$out-udp.json" -u -l 64 -b 0
    local sent
    read -r value sent <<<"$(iperf_value "$out-udp.json" udp)"
    record "$cfg" udp_kpps "$value"
    record "$cfg" udp_sent_kpps "${sent:-nan}"
    echo "  UDP 64-byte datagrams: $value kpps received, ${sent:-n/a} kpps sent" >&2
}

# --- profile ---------------------------------------------------------------------------------
perf_works() {
    if [[ -n "$perf_note" ]]; then
        return 1
    fi
    if ! command -v perf >/dev/null 2>&1; then
        perf_note="perf is not installed"
        return 1
    fi
    local err
    # cpu-clock is a software event: it samples in VMs without hardware counters too.
    if ! err=$(perf record -q -e cpu-clock -o "$STATE_DIR/perf-check.data" -- true 2>&1); then
        perf_note="perf record does not work here: $(echo "$err" | head -n 3 | tr '\n' ' ')"
        return 1
    fi
    return 0
}

PROFILE_OUT=$STATE_DIR/profile.txt
PERF_FREQ=999

# perf_summary PERF-DATA: CPU use per thread, then self time per shared object and per symbol.
perf_summary() {
    local data=$1
    perf report -i "$data" --stdio --no-children -g none -n --sort comm 2>/dev/null |
        python3 -c '
import re, sys
freq, secs = float(sys.argv[1]), float(sys.argv[2])
rows = [m.groups() for m in (re.match(r"\s*([\d.]+)%\s+(\d+)\s+(.*\S)", l) for l in sys.stdin if not l.startswith("#")) if m]
total = sum(int(n) for _, n, _ in rows)
print("  CPU: %d samples = %.2f CPUs busy on average (sampling %d Hz for %ds)" % (total, total / freq / secs, freq, secs))
for pct, n, comm in rows[:6]:
    print("    %6s%%  %-16s %5.1f%% of one CPU" % (pct, comm, int(n) / freq / secs * 100))
' "$PERF_FREQ" "$profile_seconds" || true
    echo "  by shared object:"
    perf report -i "$data" --stdio --no-children -g none --sort dso 2>/dev/null |
        grep -v '^#' | grep -v '^ *$' | head -n 5 | sed 's/^/  /' || true
    echo "  top symbols (self time):"
    perf report -i "$data" --stdio --no-children -g none -F overhead,dso,sym 2>/dev/null |
        grep -v '^#' | grep -v '^ *$' | head -n 15 | sed 's/ *$//' | cut -c1-150 | sed 's/^/  /' || true
}
profile_routers() {
    local cfg=$1 i
    : >"$PROFILE_OUT"
    if ! perf_works; then
        echo "  profile skipped: $perf_note" >&2
        return 0
    fi
    local save_seconds=$seconds
    seconds=$((profile_seconds + 2))
    echo "  profiling both routers for ${profile_seconds}s during an extra TCP 1-stream run" >&2
    iperf_client "$STATE_DIR/$cfg-profiled.json" &
    local client=$!
    sleep 1
    local -a perf_pids=()
    for i in 1 2; do
        perf record -q -e cpu-clock -F "$PERF_FREQ" -g -p "${router_pids[$((i - 1))]}" \
            -o "$STATE_DIR/perf-host$i.data" -- sleep "$profile_seconds" \
            >"$STATE_DIR/perf-host$i.log" 2>&1 &
        perf_pids+=("$!")
        bg_pids+=("$!")
    done
    for i in 1 2; do
        wait "${perf_pids[$((i - 1))]}" || true
    done
    wait "$client" || true
    seconds=$save_seconds
    local value
    value=$(iperf_value "$STATE_DIR/$cfg-profiled.json" tcp)
    {
        echo "Profile: sleeve-encrypted, TCP 1 stream pod1 -> pod2 ($value Gbit/s while profiled),"
        echo "perf record -e cpu-clock -g -p <router pid>, ${profile_seconds}s; self time per symbol"
        for i in 1 2; do
            local role=sending
            ((i == 1)) || role=receiving
            echo
            if [[ ! -s "$STATE_DIR/perf-host$i.data" ]]; then
                echo "host$i ($role): no samples: $(tail -n 3 "$STATE_DIR/perf-host$i.log" | tr '\n' ' ')"
                continue
            fi
            echo "host$i ($role router, pid ${router_pids[$((i - 1))]}):"
            perf_summary "$STATE_DIR/perf-host$i.data"
        done
    } >"$PROFILE_OUT"
    echo "  profile done" >&2
}

# --- run ---------------------------------------------------------------------------------------
commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
branch=$(git -C "$ROOT" rev-parse --abbrev-ref HEAD 2>/dev/null || echo "?")
[[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] || commit+="+dirty"
HEADER=$(
    echo "weft sleeve benchmark"
    echo "  commit   $commit ($branch)"
    echo "  kernel   $(uname -r)"
    echo "  binary   $WEFT"
    echo "  machine  $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
    echo "  runs     iperf3 ${seconds}s each, ping ${pings}x every 20 ms; hosts are netns joined by a veth pair (MTU 1500)"
)
echo "$HEADER" >&2

for cfg in "${configs[@]}"; do
    log "$cfg"
    make_hosts
    dir=$STATE_DIR/$cfg
    mkdir -p "$dir"
    case "$cfg" in
    vxlan)
        setup_vxlan
        mtu=1450
        bridge=vxbr
        ;;
    sleeve-plain | sleeve-encrypted)
        password=""
        if [[ "$cfg" == sleeve-encrypted ]]; then
            password=$dir/password
            (umask 077 && head -c 24 /dev/urandom | base64 >"$password")
        fi
        start_routers "$dir" "$password"
        mtu=$(host_report "$H1" 'r["datapath"]["mtu"]')
        [[ "$mtu" =~ ^[0-9]+$ ]] || die "cannot read the datapath MTU from host1's report"
        bridge=weft
        ;;
    esac
    record "$cfg" mtu "$mtu"
    attach_pods "$bridge" "$mtu"
    echo "  pods attached to bridge $bridge, MTU $mtu" >&2
    wait_pods
    measure "$cfg"
    teardown
done

# --- report ----------------------------------------------------------------------------------
echo
echo "$HEADER"
echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)"
echo
python3 - "$RESULTS" <<'EOF'
import math, sys

rows = {}
order = []
for line in open(sys.argv[1]):
    cfg, metric, value = line.rstrip("\n").split("\t")
    if cfg not in rows:
        rows[cfg] = {}
        order.append(cfg)
    try:
        rows[cfg][metric] = float(value)
    except ValueError:
        rows[cfg][metric] = math.nan

def fmt(v, spec):
    return "n/a" if v is None or math.isnan(v) else format(v, spec)

cols = [("tcp1_gbps", "TCP x1 Gbit/s", ".3f"), ("tcp4_gbps", "TCP x4 Gbit/s", ".3f"),
        ("udp_kpps", "UDP kpps", ".1f"), ("rtt_ms", "RTT ms", ".3f")]
print("%-18s %5s" % ("configuration", "MTU") + "".join(" %14s" % c[1] for c in cols)
      + " %15s" % "(UDP kpps sent)")
for cfg in order:
    r = rows[cfg]
    print("%-18s %5s" % (cfg, fmt(r.get("mtu"), ".0f"))
          + "".join(" %14s" % fmt(r.get(k), f) for k, _, f in cols)
          + " %15s" % ("(" + fmt(r.get("udp_sent_kpps"), ".1f") + ")"))

# Targets (issue 3): sleeve / vxlan.
targets = {
    "sleeve-encrypted": {"tcp1_gbps": (">=", 0.07), "tcp4_gbps": (">=", 0.07), "rtt_ms": ("<=", 2.0)},
    "sleeve-plain": {"tcp1_gbps": (">=", 0.20), "tcp4_gbps": (">=", 0.20), "rtt_ms": ("<=", 2.0)},
}
sleeves = [c for c in order if c.startswith("sleeve")]
if sleeves:
    print()
    ref = rows.get("vxlan")
    if ref is None:
        print("ratios against vxlan: n/a (vxlan was not measured in this run)")
    else:
        print("ratio sleeve/vxlan  [target: met?]")
        print("%-18s %5s" % ("configuration", "") + "".join(" %25s" % c[1] for c in cols))
        for cfg in sleeves:
            cells = []
            for k, _, _ in cols:
                a, b = rows[cfg].get(k, math.nan), ref.get(k, math.nan)
                ratio = a / b if b and not (math.isnan(a) or math.isnan(b)) else math.nan
                cell = fmt(ratio, ".3f") + "x"
                t = targets.get(cfg, {}).get(k)
                if t:
                    op, limit = t
                    if math.isnan(ratio):
                        verdict = "n/a"
                    else:
                        ok = ratio >= limit if op == ">=" else ratio <= limit
                        verdict = "met" if ok else "NOT MET"
                    cell += " [%s%.2f: %s]" % (op, limit, verdict)
                cells.append(cell)
            print("%-18s %5s" % (cfg, "") + "".join(" %25s" % c for c in cells))
        print("targets: encrypted TCP >= 0.07x vxlan, plain TCP >= 0.20x, RTT <= 2x (both sleeve rows)")
EOF
if [[ -s "$PROFILE_OUT" ]]; then
    echo
    cat "$PROFILE_OUT"
elif [[ " ${configs[*]} " == *" sleeve-encrypted "* ]]; then
    echo
    if ((quick)); then
        echo "Profile: skipped (--quick)"
    elif ((profile)); then
        echo "Profile: skipped: ${perf_note:-perf did not produce a profile}"
    else
        echo "Profile: skipped (--no-profile)"
    fi
fi
