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

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
bench_init

# --- dependencies and build ------------------------------------------------------------------
# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"
weft_deps
perf_note=""
if ((profile)) && ! command -v perf >/dev/null 2>&1; then
    # Only the profile needs perf: a failed install skips the profile, not the benchmark.
    weft_deps linux-perf || perf_note="perf is not installed and 'linux-perf' could not be installed"
fi

bench_build

# --- measurements (bench/lib.sh) -----------------------------------------------------------------
measure_extra() {
    if [[ "$1" == sleeve-encrypted ]] && ((profile)); then
        profile_routers "$1"
    fi
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
HEADER=$(bench_header "weft sleeve benchmark")
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
        password=$(row_password "$cfg" "$dir")
        start_routers "$dir" sleeve sleeve "$password"
        mtu=$(weft_mtu)
        bridge=weft
        ;;
    esac
    attach_pods_and_wait "$cfg" "$bridge" "$mtu"
    measure "$cfg"
    teardown
done

# --- report ----------------------------------------------------------------------------------
echo
echo "$HEADER"
echo "  load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)"
echo
# Targets (issue 3): sleeve / vxlan.
print_tables '{
    "sleeve-encrypted": {"tcp1_gbps": [">=", 0.07], "tcp4_gbps": [">=", 0.07], "rtt_ms": ["<=", 2.0]},
    "sleeve-plain": {"tcp1_gbps": [">=", 0.20], "tcp4_gbps": [">=", 0.20], "rtt_ms": ["<=", 2.0]}
}' "targets: encrypted TCP >= 0.07x vxlan, plain TCP >= 0.20x, RTT <= 2x (both sleeve rows)"
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
