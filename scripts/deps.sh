#!/usr/bin/env bash
# Makes sure the Debian packages that weft's build, demo and tests need are installed.
#
#   bash scripts/deps.sh [EXTRA_PACKAGE...]        # run it
#   source scripts/deps.sh; weft_deps [EXTRA...]   # or source it and call the function
#
# Only missing packages are installed (checked with dpkg-query); `apt-get update` runs once, and
# only when something is missing. apt waits up to 10 minutes for the dpkg lock, so this works
# while another apt run (unattended-upgrades, a parallel job) holds it.

# shellcheck disable=SC2034
WEFT_DEPS=(
    libsodium-dev # weft-crypto links Debian's libsodium through pkg-config
    pkg-config
    iproute2     # ip netns / ip link: test hosts and the demo
    nftables     # datapath and fault-injection tests
    iperf3       # throughput checks
    tcpdump      # to look at the wire
    curl         # status endpoint
    util-linux   # unshare: one UTS namespace (hostname) per test host
    procps       # pgrep, sysctl
    iputils-ping # ping between test hosts
    python3      # JSON checks in scripts
    python3-venv # scripts/check-chart.sh installs kubernetes-validate into a venv
)

# weft_deps [EXTRA_PACKAGE...]: installs whatever of WEFT_DEPS and the extras is missing.
weft_deps() {
    local pkg missing=()
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "deps: dpkg-query not found: weft's scripts expect Debian 12 (install the packages by hand: ${WEFT_DEPS[*]} $*)" >&2
        return 1
    fi
    for pkg in "${WEFT_DEPS[@]}" "$@"; do
        if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "deps: all system packages present"
        return 0
    fi

    local -a sudo=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "deps: missing packages: ${missing[*]}; run as root to install them" >&2
            return 1
        fi
    fi
    local -a apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 -q -y)

    local log
    log="$(mktemp)"
    echo "deps: installing ${missing[*]}"
    if [[ -z "${WEFT_APT_UPDATED:-}" ]]; then
        if ! "${apt[@]}" update >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            echo "deps: apt-get update failed" >&2
            return 1
        fi
        WEFT_APT_UPDATED=1
    fi
    if ! "${apt[@]}" install --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        echo "deps: apt-get install ${missing[*]} failed" >&2
        return 1
    fi
    rm -f "$log"
    echo "deps: installed ${missing[*]}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    weft_deps "$@"
fi
