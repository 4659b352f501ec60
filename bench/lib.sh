# Shared by bench/sleeve.sh and bench/vxlan.sh (sourced, not run): two hosts built from network
# namespaces joined by a veth pair, one pod on each, a hand-made kernel VXLAN or weft routers
# between them, and iperf3/ping measurements from pod1 to pod2.
#
# The sourcing script sets, before calling anything here: PREFIX (namespace name prefix), H1,
# H2, P1, P2 (namespace names), UNDERLAY, POD_NET (first three octets), STATUS_ADDR, ROOT,
# seconds, pings, timeout; then calls bench_init (state dir, cleanup traps) first.
# shellcheck shell=bash

# The interpreter itself: a version manager's `python3` shim can take seconds per start on a
# busy machine, and the scripts start many.
PY=$(python3 -c 'import sys; print(sys.executable)')

log() { printf '\n==> %s\n' "$*" >&2; }
die() {
    echo "bench: $*" >&2
    exit 1
}

# --- cleanup -----------------------------------------------------------------------------------
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

# On exit: stops what runs, deletes the namespaces, calls `bench_on_exit` if the script defines
# it (to restore what it changed), removes the state dir.
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
    if declare -F bench_on_exit >/dev/null; then
        bench_on_exit
    fi
    rm -rf "$STATE_DIR"
    if [[ -n "$(our_namespaces)" ]]; then
        echo "bench: could not remove namespaces: $(our_namespaces | tr '\n' ' ')" >&2
    fi
    exit "$rc"
}

# bench_init: the state dir (STATE_DIR, RESULTS) and the traps that remove everything on exit.
bench_init() {
    STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/wbench.XXXXXX")
    chmod 700 "$STATE_DIR"
    RESULTS=$STATE_DIR/results.tsv
    : >"$RESULTS"
    trap on_exit EXIT
    trap 'echo "bench: interrupted" >&2; exit 130' INT
    trap 'echo "bench: terminated" >&2; exit 143' TERM
}

# bench_build: WEFT = the binary to measure (WEFT_BENCH_BIN, or a release build).
bench_build() {
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
}

# bench_header TITLE: what was measured where, printed first and again above the tables.
bench_header() {
    local commit branch
    commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    branch=$(git -C "$ROOT" rev-parse --abbrev-ref HEAD 2>/dev/null || echo "?")
    [[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]] || commit+="+dirty"
    echo "$1"
    echo "  commit   $commit ($branch)"
    echo "  kernel   $(uname -r)"
    echo "  binary   $WEFT"
    echo "  machine  $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
    echo "  runs     iperf3 ${seconds}s each, ping ${pings}x every 20 ms; hosts are netns joined by a veth pair (MTU 1500)"
}

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

# Open vSwitch by hand (in the kernel VM): per host a datapath `wbovs` made with Debian's
# ovs-dpctl, its local port on a bridge `ovsbr` and a VXLAN vport, with the flows weft-ovs would
# hold (ovs_hand_flows, once the pods' MACs exist): what the kernel's datapath costs without weft.
setup_ovs_hand() {
    local i
    for i in 1 2; do
        local h=${PREFIX}host$i
        ip netns exec "$h" ovs-dpctl add-dp wbovs
        ip netns exec "$h" ovs-dpctl add-if wbovs "wbovs-vx,type=vxlan,remote_ip=flow,key=flow,dst_port=4789"
        ip -n "$h" link add ovsbr type bridge
        ip -n "$h" link set wbovs master ovsbr up
        ip -n "$h" link set ovsbr up
    done
}

# ovs_hand_flows: outbound, in_port(local) and the other pod's MAC (or broadcast) into a tunnel to
# the other host; inbound, that host's tunnel to the local port. Masked as weft's are: only the
# fields named (eth_type wildcarded).
ovs_hand_flows() {
    local i j h vx mac dst any='eth(src=00:00:00:00:00:00/00:00:00:00:00:00,dst=00:00:00:00:00:00/00:00:00:00:00:00)'
    for i in 1 2; do
        j=$((3 - i))
        h=${PREFIX}host$i
        # ovs-dpctl names a VXLAN vport after its UDP port, whatever add-if was told.
        vx=$(ip netns exec "$h" ovs-dpctl show wbovs | awk '$1 == "port" && $3 == "vxlan_sys_4789" { sub(":", "", $2); print $2 }')
        mac=$(ip -n "${PREFIX}pod$j" -br link show eth0 | awk '{ print $3 }')
        for dst in "$mac" ff:ff:ff:ff:ff:ff; do
            ip netns exec "$h" ovs-dpctl add-flow wbovs \
                "in_port(0),eth(src=00:00:00:00:00:00/00:00:00:00:00:00,dst=$dst)" \
                "set(tunnel(tun_id=0x2a,dst=$UNDERLAY.$j,ttl=64,tp_dst=4789,flags(df|key))),$vx"
        done
        ip netns exec "$h" ovs-dpctl add-flow wbovs \
            "in_port($vx),tunnel(tun_id=0x2a,src=$UNDERLAY.$j,dst=$UNDERLAY.$i,ttl=64/0,flags(+key)),$any" 0
        ip netns exec "$h" ovs-dpctl dump-flows wbovs | sed 's/^/    flow: /' >&2
    done
}

# row_password CONFIG DIR: for sleeve-encrypted, makes a password file in DIR and prints its
# path; for any other row prints nothing.
row_password() {
    [[ "$1" == sleeve-encrypted ]] || return 0
    (umask 077 && head -c 24 /dev/urandom | base64 >"$2/password")
    echo "$2/password"
}

# weft_mtu: the pods' MTU, as host1's router reports it.
weft_mtu() {
    local mtu
    mtu=$(host_report "$H1" 'r["datapath"]["mtu"]')
    [[ "$mtu" =~ ^[0-9]+$ ]] || die "cannot read the datapath MTU from host1's report"
    echo "$mtu"
}

# host_report HOST [PYTHON-EXPRESSION over r]: the router's /report, or nothing while it is down.
host_report() {
    local h=$1 expr=${2:-r}
    ip netns exec "$h" "$WEFT" status --json --status-addr "$STATUS_ADDR" 2>/dev/null |
        "$PY" -c "import json,sys; r=json.load(sys.stdin); print($expr)" 2>/dev/null || true
}

# start_routers CONFIG-DIR DATAPATH-FLAG WANT-KIND [PASSWORD-FILE]: a weft router with
# `--datapath DATAPATH-FLAG` on each host, host2 told about host1; returns once both have their
# connection established, on per-connection datapath WANT-KIND (`sleeve`, `vxlan`), encrypted
# exactly when a password is given.
router_pids=()
start_routers() {
    local dir=$1 datapath=$2 want_kind=$3 password=${4:-} i
    router_pids=()
    for i in 1 2; do
        local h=${PREFIX}host$i
        mkdir -p "$dir/host$i"
        local -a args=(router
            --data-dir "$dir/host$i/data"
            --cni-socket "$dir/host$i/cni.sock"
            --name "02:77:62:00:00:0$i"
            --nickname "host$i"
            --mesh-id wbench
            --status-addr "$STATUS_ADDR"
            --heartbeat-interval 2
            --gossip-interval 5
            --datapath "$datapath"
            --underlay-mtu 1500)
        [[ -z "$password" ]] || args+=(--password-file "$password")
        # More router flags for an experiment (e.g. `--masquerade false`), word-split.
        # shellcheck disable=SC2206
        [[ -z "${WEFT_BENCH_ROUTER_ARGS:-}" ]] || args+=($WEFT_BENCH_ROUTER_ARGS)
        ((i == 1)) || args+=("$UNDERLAY.1")
        # No WEFT_* variable from the caller's environment may change the configuration
        # (WEFT_PASSWORD would turn the plain run into an encrypted one).
        (
            while read -r v; do unset "$v"; done < <(compgen -e | grep '^WEFT_' || true)
            exec ip netns exec "$h" "$WEFT" "${args[@]}"
        ) </dev/null >"$dir/host$i/router.log" 2>&1 &
        router_pids+=("$!")
    done
    # Wait for both routers: status up, the other peer connected on the wanted datapath.
    local start=$SECONDS want_enc=false state
    [[ -z "$password" ]] || want_enc=true
    while :; do
        local ready=0
        for i in 1 2; do
            kill -0 "${router_pids[$((i - 1))]}" 2>/dev/null || die "the router on host$i exited"
            state=$(host_report "${PREFIX}host$i" \
                '"%d %s %s" % (sum(1 for c in r["connections"] if c["state"] == "established"), str(r["datapath"]["encrypted"]).lower(), ",".join(str((c.get("datapath") or {}).get("datapath")) for c in r["connections"] if c["state"] == "established"))')
            if [[ "$state" == "1 $want_enc $want_kind" ]]; then
                ready=$((ready + 1))
            elif [[ "$state" == "1 "* && "$state" != "1 $want_enc "* ]]; then
                die "host$i: datapath encrypted=$(cut -d' ' -f2 <<<"$state"), expected $want_enc"
            fi
        done
        ((ready == 2)) && break
        if ((SECONDS - start >= timeout)); then
            die "the routers did not connect on datapath $want_kind within ${timeout}s (host1: ${state:-no report})"
        fi
        sleep 0.5
    done
    echo "  routers connected in $((SECONDS - start))s (datapath $want_kind, encrypted=$want_enc)" >&2
}

# attach_pods_and_wait CONFIG BRIDGE MTU: records the MTU, attaches the pods to BRIDGE, calls
# `after_attach CONFIG` (if the script defines it) and waits until pod1 reaches pod2.
attach_pods_and_wait() {
    record "$1" mtu "$3"
    attach_pods "$2" "$3"
    echo "  pods attached to bridge $2, MTU $3" >&2
    if declare -F after_attach >/dev/null; then
        after_attach "$1"
    fi
    wait_pods
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
# record CONFIG METRIC VALUE: under the current round (BENCH_ROUND, 1 unless a script repeats).
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${BENCH_ROUND:-1}" >>"$RESULTS"; }

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
    "$PY" - "$1" "$2" <<'EOF' 2>/dev/null || echo nan
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

# measure CONFIG: ping RTT, TCP x1 and x4, then UDP packet rate, recorded under CONFIG. Calls
# `measure_extra CONFIG` (if the script defines it) after the TCP runs.
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

    if declare -F measure_extra >/dev/null; then
        measure_extra "$cfg"
    fi

    # Last: a UDP flood may upset the mesh's control traffic for a while.
    # WEFT_BENCH_PROFILE=1: where the kernel spends the flood's time, system-wide (perf).
    local perf_pid=""
    if ((${WEFT_BENCH_PROFILE:-0})); then
        perf record -q -a -g -e cpu-clock -F 499 -o "$out-udp.perf" -- sleep "$seconds" \
            >/dev/null 2>&1 &
        perf_pid=$!
    fi
    iperf_client "$out-udp.json" -u -l 64 -b 0
    if [[ -n "$perf_pid" ]]; then
        wait "$perf_pid" || true
        echo "  perf, system-wide during the UDP run: self time per symbol" >&2
        perf report -q -i "$out-udp.perf" --no-children --sort sym --percent-limit 1 \
            --stdio 2>/dev/null | grep -v '^$' | grep '%' | head -n 30 | sed 's/^/    /' >&2 || true
    fi
    local sent
    read -r value sent <<<"$(iperf_value "$out-udp.json" udp)"
    record "$cfg" udp_kpps "$value"
    record "$cfg" udp_sent_kpps "${sent:-nan}"
    echo "  UDP 64-byte datagrams: $value kpps received, ${sent:-n/a} kpps sent" >&2
}

# print_tables TARGETS-JSON FOOTER: the results table, then each other row as a ratio of the
# first (the reference) with the targets: {"row": {"metric": [">=" or "<=", limit]}}.
print_tables() {
    "$PY" - "$RESULTS" "$1" "$2" <<'EOF'
import json, math, sys

# Every round's values, then each row's median per metric. A ratio is the median of the
# per-round ratios: each round measures the reference and the row close together in time, so
# the machine's drift between rounds cancels out of it.
per_round = {}  # (cfg, metric) -> {round: value}
order = []
for line in open(sys.argv[1]):
    cfg, metric, value, rnd = (line.rstrip("\n").split("\t") + ["1"])[:4]
    if cfg not in order:
        order.append(cfg)
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    per_round.setdefault((cfg, metric), {})[rnd] = v
targets, footer = json.loads(sys.argv[2]), sys.argv[3]
rounds = max((len(v) for v in per_round.values()), default=1)

def median(values):
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

rows = {cfg: {} for cfg in order}
for (cfg, metric), by_round in per_round.items():
    rows[cfg][metric] = median(by_round.values())

def ratio_of(cfg, metric):
    a, b = per_round.get((cfg, metric), {}), per_round.get(("vxlan", metric), {})
    return median([a[r] / b[r] for r in a if r in b and b[r] and not math.isnan(b[r])])

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

others = [c for c in order if c != "vxlan"]
if others:
    print()
    ref = rows.get("vxlan")
    if ref is None:
        print("ratios against vxlan: n/a (vxlan was not measured in this run)")
    else:
        print("ratio against vxlan  [target: met?]")
        print("%-18s %5s" % ("configuration", "") + "".join(" %25s" % c[1] for c in cols))
        for cfg in others:
            cells = []
            for k, _, _ in cols:
                ratio = ratio_of(cfg, k)
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
        print(footer)
if rounds > 1:
    print("%d rounds: the table shows each row's median; a ratio is the median of the"
          " per-round ratios" % rounds)
    for cfg in order:
        for k, name, f in cols:
            by_round = per_round.get((cfg, k))
            if by_round and len(by_round) > 1:
                print("  %-16s %-14s %s" % (cfg, name, " ".join(
                    fmt(by_round[r], f) for r in sorted(by_round, key=int))))
EOF
}
