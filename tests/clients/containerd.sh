#!/usr/bin/env bash
# One containerd (with its CRI plugin, what kubelet talks to) per test host network namespace.
#
#   containerd.sh start HOSTNS STATE_DIR CNI_BIN_DIR CNI_CONF_DIR
#   containerd.sh stop  HOSTNS STATE_DIR
#
# start: writes STATE_DIR/config.toml and runs containerd inside HOSTNS (/run/netns/HOSTNS)
#   with everything of its own under STATE_DIR: root, state, the gRPC socket, runc's state and
#   the pods' network namespaces (netns_mounts_under_state_dir), so several can run side by
#   side. The CRI plugin runs CNI plugins from CNI_BIN_DIR with the first conflist of
#   CNI_CONF_DIR (the dir is watched: it may be filled after start). Plugins run in HOSTNS
#   with containerd's environment, i.e. this script's. Imports the pause image, waits until
#   the CRI API answers, then prints on stdout:
#     CONTAINERD_ADDRESS=STATE_DIR/containerd.sock
#     CONTAINERD_PID=...
#     CONTAINERD_LOG=STATE_DIR/containerd.log
#   containerd's output goes to that log, never to this script's stdout/stderr (a caller that
#   reads them to the end would otherwise wait for containerd to exit).
# stop: removes every pod through the CRI (CNI DEL), stops containerd, then forcibly cleans up
#   whatever is left (runc containers, shims, mounts under STATE_DIR) and deletes STATE_DIR
#   except containerd.log. Safe to call twice, or after containerd died. Exit 1 if something
#   could not be cleaned up, or if pods had to be removed by force (the reason is printed).
#
# WEFT_CONTAINERD_BINDS="SRC:DST ...": containerd (and so its shims, runc and the CNI plugins)
#   runs in a mount namespace of its own where each SRC is bind-mounted on DST: a test host's
#   own /run/weft, say, as the chart's hostPath volumes are per host (kubelet.py --host-root).
#   The pods' netns mounts stay visible outside (STATE_DIR becomes a shared mount).
#
# Needs root and tests/clients/setup.sh run first. STATE_DIR must not contain whitespace;
# keep it short (unix socket paths are limited to 107 bytes).
set -euo pipefail
SCRIPT_NAME=containerd.sh
# shellcheck source=tests/clients/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '3,5s/^# \{0,1\}//p' "$0" >&2; exit 2; }
(($# >= 3)) || usage
cmd=$1 hostns=$2 state=$3
((EUID == 0)) || die "needs root"
[[ "$state" != *[[:space:]]* ]] || die "STATE_DIR must not contain whitespace"
if [[ "$cmd" == stop && ! -d "$state" ]]; then
    exit 0 # never started, or already cleaned up with its directory
fi
mkdir -p "$state"
state=$(cd "$state" && pwd)
config=$state/config.toml
sock=$state/containerd.sock
pidfile=$state/containerd.pid
log=$state/containerd.log
runc_root=$state/runc
CRI_CLIENT=$CLIENTS_DIR/cri-client.py

# our_containerd: the pid of the containerd started for STATE_DIR, if it still runs.
our_containerd() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "--config $config" || return 1
    echo "$pid"
}

start() {
    local bin_dir=$1 conf_dir=$2 pid
    [[ -e "/run/netns/$hostns" ]] || die "no network namespace /run/netns/$hostns"
    [[ -d "$bin_dir" ]] || die "CNI_BIN_DIR $bin_dir is not a directory"
    mkdir -p "$conf_dir"
    bin_dir=$(cd "$bin_dir" && pwd)
    conf_dir=$(cd "$conf_dir" && pwd)
    ((${#sock} <= 100)) || die "socket path $sock is too long for a unix socket"
    if pid=$(our_containerd); then
        die "containerd already runs for $state (pid $pid)"
    fi
    load_clients_env
    mkdir -p "$state/root" "$state/state" "$state/opt" "$runc_root"
    cat >"$config" <<EOF
# Written by tests/clients/containerd.sh for host netns $hostns.
version = 2
root = "$state/root"
state = "$state/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$state/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$WEFT_PAUSE_IMAGE"   # imported below: no registry
    # No CAP_SYS_RESOURCE on these machines: without this, runc fails with
    # "can't get final child's PID from pipe: EOF".
    restrict_oom_score_adj = true
    # Pod netns under STATE_DIR/state/io.containerd.grpc.v1.cri/netns, not /run/netns.
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$bin_dir"
      conf_dir = "$conf_dir"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      snapshotter = "overlayfs"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$WEFT_RUNC"
          Root = "$runc_root"
EOF
    local t0
    t0=$(now_ms)
    # nsenter, not `ip netns exec`: that runs in a new mount namespace with its own /sys,
    # which hides the cgroup mounts from runc and the pods' netns mounts from everyone else.
    # setsid: no signal for the caller's process group (Ctrl-C in a test) reaches it.
    echo "=== containerd.sh: starting containerd in $hostns at $(date +%T.%N)" >>"$log"
    if [[ -n "${WEFT_CONTAINERD_BINDS:-}" ]]; then
        # A mount namespace of its own, where SRC is bind-mounted on DST for containerd, its
        # shims, runc and the CNI plugins it runs (e.g. the host's /run/weft, so the plugin
        # reaches this host's router at the conflist's default socket). STATE_DIR is a shared
        # mount, so the pods' netns mounts made in there appear outside as well; the binds are
        # made under a mount made private first, so they never do.
        mountpoint -q "$state" || mount --bind "$state" "$state"
        mount --make-shared "$state"
        setsid unshare --mount --propagation unchanged -- bash -c '
            set -e
            binds=$1 netns=$2; shift 2
            for b in $binds; do
                src=${b%%:*} dst=${b#*:}
                mkdir -p "$src" "$dst"
                parent=$(findmnt -n -o TARGET -T "$dst")
                mount --make-private "$parent"
                mount --bind "$src" "$dst"
            done
            exec nsenter --net="$netns" "$@"' containerd-binds "$WEFT_CONTAINERD_BINDS" \
            "/run/netns/$hostns" "$WEFT_CONTAINERD" --config "$config" </dev/null >>"$log" 2>&1 &
    else
        setsid nsenter --net="/run/netns/$hostns" "$WEFT_CONTAINERD" --config "$config" \
            </dev/null >>"$log" 2>&1 &
    fi
    pid=$!
    echo "$pid" >"$pidfile"
    for _ in $(seq 200); do
        [[ -S "$sock" ]] && break
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "containerd exited at start"; }
        sleep 0.1
    done
    [[ -S "$sock" ]] || { tail -n 20 "$log" >&2; die "containerd did not open $sock in 20 s"; }
    "$WEFT_CTR" -a "$sock" -n k8s.io images import "$WEFT_PAUSE_IMAGE_TAR" >>"$log" 2>&1 ||
        { tail -n 20 "$log" >&2; die "ctr images import $WEFT_PAUSE_IMAGE_TAR failed"; }
    local out=""
    for _ in $(seq 50); do
        out=$("$CRI_CLIENT" --socket "$sock" --timeout 5 version 2>&1) && break
        sleep 0.2
    done
    [[ "$out" == *runtime_api_version* ]] || { tail -n 20 "$log" >&2; die "the CRI API does not answer: $out"; }
    say "containerd pid $pid in $hostns ready in $(($(now_ms) - t0)) ms"
    echo "CONTAINERD_ADDRESS=$sock"
    echo "CONTAINERD_PID=$pid"
    echo "CONTAINERD_LOG=$log"
}

# mounts_under DIR: mount points below DIR, deepest first.
mounts_under() {
    awk -v d="$1/" 'index($5, d) == 1 {print length($5), $5}' /proc/self/mountinfo |
        sort -rn | cut -d' ' -f2-
}

# pids_mentioning STRING: processes (other than this script) whose command line, arguments
# joined by spaces, contains STRING (one of our unique paths).
pids_mentioning() {
    python3 - "$1" "$$" <<'EOF'
import os, sys
needle, me = sys.argv[1], {sys.argv[2], str(os.getpid()), str(os.getppid())}
for pid in os.listdir("/proc"):
    if not pid.isdigit() or pid in me:
        continue
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    if needle in b" ".join(argv).decode("utf-8", "replace"):
        print(pid)
EOF
}

stop() {
    local pid problems=() forced=0 out
    if pid=$(our_containerd); then
        # The way kubelet would: stop (CNI DEL) and remove every pod.
        if [[ -S "$sock" ]] && ! out=$("$CRI_CLIENT" --socket "$sock" --timeout 60 remove-all 2>&1); then
            say "removing pods through the CRI failed, cleaning up by force: $out"
            forced=1
        fi
        # Its state is deleted below, so nothing is lost by not waiting the ~1.5 s a SIGTERM
        # takes; the shims stay (they outlive containerd by design) and are handled below.
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            our_containerd >/dev/null || break # gone, or a zombie (empty cmdline)
            sleep 0.1
        done
    fi
    # Force: containers runc still knows (pause processes), then shims of this containerd.
    local id
    if [[ -d "$runc_root/k8s.io" ]]; then
        for id in "$runc_root"/k8s.io/*; do
            [[ -d "$id" ]] || continue
            forced=1
            id=$(basename "$id")
            runc --root "$runc_root/k8s.io" kill "$id" KILL >/dev/null 2>&1 || true
            runc --root "$runc_root/k8s.io" delete --force "$id" >/dev/null 2>&1 ||
                problems+=("runc delete $id failed")
        done
    fi
    local pids
    pids=$(pids_mentioning "-address $sock")
    if [[ -n "$pids" ]]; then
        forced=1
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    local m
    while read -r m; do
        [[ -n "$m" ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || problems+=("cannot unmount $m")
    done < <(mounts_under "$state")
    if [[ -d "$state" ]]; then
        find "$state" -mindepth 1 -maxdepth 1 ! -name containerd.log -exec rm -rf {} + 2>/dev/null ||
            problems+=("cannot remove everything in $state")
    fi
    [[ -z "$(mounts_under "$state")" ]] || problems+=("mounts left under $state")
    # WEFT_CONTAINERD_BINDS made STATE_DIR a mount of its own.
    if mountpoint -q "$state"; then
        umount "$state" 2>/dev/null || umount -l "$state" || problems+=("cannot unmount $state")
    fi
    pids=$(pids_mentioning "--config $config"; pids_mentioning "-address $sock")
    [[ -z "$pids" ]] || problems+=("processes left: $(echo "$pids" | tr '\n' ' ')")
    if ((${#problems[@]})); then
        die "$(printf '%s; ' "${problems[@]}")"
    fi
    ((forced == 0)) || die "pods had to be removed by force (see $log)"
    return 0
}

case "$cmd" in
start)
    (($# == 5)) || usage
    start "$4" "$5"
    ;;
stop) stop ;;
*) usage ;;
esac
