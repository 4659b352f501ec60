#!/usr/bin/env bash
# Makes sure the Debian packages that weft's build, demo and tests need are installed.
#
#   bash scripts/deps.sh [EXTRA_PACKAGE...]        # run it
#   bash scripts/deps.sh --cni-clients [EXTRA...]  # also the real CNI clients (tests/clients/)
#   bash scripts/deps.sh --image [EXTRA...]        # also what scripts/image.sh builds the image with
#   source scripts/deps.sh; weft_deps [EXTRA...]   # or source it and call the function
#   source scripts/deps.sh; weft_deps "${WEFT_CNI_CLIENT_DEPS[@]}"
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
    curl         # status endpoint; tests/tests/fakeapi.rs drives the fake API server
    openssl      # tests/src/fakeapi: the fake API server's CA and TLS certificate
    util-linux   # unshare: one UTS namespace (hostname) per test host
    procps       # pgrep, sysctl
    iputils-ping # ping between test hosts
    python3      # JSON checks in scripts
    python3-venv # scripts/check-chart.sh installs kubernetes-validate into a venv
    # promtool: router/tests/health.rs lints a scrape with `promtool check metrics` (22 MB; the
    # package also brings Debian's Prometheus server, which systemd hosts start on :9090)
    prometheus
    # reference plugins in /usr/lib/cni: cni/tests delegate to host-local
    containernetworking-plugins
)

# What tests/clients/setup.sh needs on top: the real CNI clients the tests drive the plugin with
# (cnitool is built from Debian's source package, so Go and libcni's sources; containerd's CRI
# plugin with runc; busybox-static for the locally made pause image). Debian's reference
# plugins (bridge, host-local, portmap, loopback) come with WEFT_DEPS.
# shellcheck disable=SC2034
WEFT_CNI_CLIENT_DEPS=(
    containerd                  # 1.6: its CRI plugin is what kubelet drives
    runc                        # containerd's OCI runtime
    busybox-static              # the pause image's only binary
    golang-go                   # builds cnitool
    golang-github-appc-cni-dev  # libcni sources cnitool builds against
    xz-utils                    # unpacks the cni source tarball
    fping                       # router/tests/cni.rs: every pod pings every other pod at once
    iptables                    # router/tests/cni.rs: checks that portmap's rules are gone
    python3-yaml                # tests/clients/kubelet.py reads the rendered chart (helm template)
)

# What scripts/image.sh needs on top: the base image is a Debian rootfs made by mmdebstrap from the
# package mirror (no registry), imported and built on with buildah, run and checked with podman.
# shellcheck disable=SC2034
WEFT_IMAGE_DEPS=(
    mmdebstrap     # the base image: a minimal bookworm rootfs from Debian packages
    buildah        # builds the Containerfile on that base, writes the OCI archive
    podman         # imports the base, runs the image's checks
    runc           # the checks' runtime where crun cannot run (a hybrid cgroup layout: image.sh)
    uidmap         # newuidmap/newgidmap, which buildah and podman expect to find
)

# What the kernel-VM tests need on top, in the guest (which runs the host's binaries).
# shellcheck disable=SC2034
WEFT_KERNEL_VM_DEPS=(
    openvswitch-switch # ovs-dpctl: router/tests/ovs.rs reads the datapath's flows with it
)

# weft_tools_dir: prints where downloaded and built tools are cached (helm, cnitool, venvs):
# WEFT_TOOLS_DIR, else /var/cache/weft-tools as root, else ~/.cache/weft-tools.
weft_tools_dir() {
    if [[ -n "${WEFT_TOOLS_DIR:-}" ]]; then
        echo "$WEFT_TOOLS_DIR"
    elif ((EUID == 0)); then
        echo /var/cache/weft-tools
    else
        echo "${XDG_CACHE_HOME:-$HOME/.cache}/weft-tools"
    fi
}

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

# The kernel VM that tests/kernel-vm/run-kernel-tests boots (the test stage's `vm` part): where
# run-in-kernel-vm is (WEFT_KERNEL_VM, else beside the clone in ../shared/kernel-vm/, as in CI).
weft_kernel_vm() {
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
    echo "${WEFT_KERNEL_VM:-$root/../shared/kernel-vm/run-in-kernel-vm}"
}

# weft_kernel_vm_prepare: installs qemu and caches the VM's kernel, modules and initramfs
# (run-in-kernel-vm --prepare: about 75 s the first time, 0 s after), so that the vm stage's
# time is the tests' and not downloads'. Fails in CI (CI=true) when the VM cannot be had; a
# developer without it gets a note, and the vm stage skips itself.
weft_kernel_vm_prepare() {
    local vm
    vm=$(weft_kernel_vm)
    # The guest runs the host's binaries: router/tests/ovs.rs reads the datapath's flows with
    # Debian's `ovs-dpctl` (a reference reader only), which run-in-kernel-vm --prepare does not
    # install.
    if ! weft_deps "${WEFT_KERNEL_VM_DEPS[@]}"; then
        [[ "${CI:-}" != true ]] || return 1
        echo "deps: note: without ${WEFT_KERNEL_VM_DEPS[*]} the vm stage's Open vSwitch tests fail" >&2
    fi
    if [[ -x "$vm" ]] && "$vm" --prepare; then
        return 0
    fi
    if [[ "${CI:-}" == true ]]; then
        echo "deps: the kernel VM cannot be prepared ($vm): CI needs it for the kernel datapath tests" >&2
        return 1
    fi
    echo "deps: note: no kernel VM here ($vm; set WEFT_KERNEL_VM): the vm stage will skip itself" >&2
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    if [[ "${1:-}" == --cni-clients ]]; then
        shift
        set -- "${WEFT_CNI_CLIENT_DEPS[@]}" "$@"
    elif [[ "${1:-}" == --image ]]; then
        shift
        set -- "${WEFT_IMAGE_DEPS[@]}" "$@"
    fi
    weft_deps "$@"
fi
