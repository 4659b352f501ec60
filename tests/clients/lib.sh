# shellcheck shell=bash
# Shared by the scripts in tests/clients/ (sourced, not run).

# Pinned versions. Changing one makes setup.sh build a new cache entry next to the old one.
# shellcheck disable=SC2034
K8S_CRI_CRATE_VERSION=0.11.0 # the CRI (runtime.v1) proto ships inside this crate
GRPC_VERSION=1.76.0          # grpcio and grpcio-tools, cp311 wheels
PAUSE_IMAGE=localhost/weft-pause:latest

CLIENTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$CLIENTS_DIR/../.." && pwd)

# The tool cache, shared with scripts/check-chart.sh.
# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"
TOOLS=$(weft_tools_dir)

# What setup.sh wrote: the paths of the cached tools (see setup.sh for the variables).
CLIENTS_ENV=$TOOLS/cni-clients.env

# load_clients_env: sources $CLIENTS_ENV, or fails telling to run setup.sh.
load_clients_env() {
    if [[ ! -r "$CLIENTS_ENV" ]]; then
        echo "$SCRIPT_NAME: $CLIENTS_ENV is missing: run tests/clients/setup.sh first" >&2
        return 1
    fi
    # shellcheck source=/dev/null
    source "$CLIENTS_ENV"
}

SCRIPT_NAME=${SCRIPT_NAME:-$(basename "$0" .sh)}
say() { echo "$SCRIPT_NAME: $*" >&2; }
die() {
    echo "$SCRIPT_NAME: FAILED: $*" >&2
    exit 1
}

# now_ms: milliseconds since the epoch.
now_ms() { echo $(($(date +%s%N) / 1000000)); }
