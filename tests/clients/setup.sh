#!/usr/bin/env bash
# Installs and caches the real CNI clients weft's tests drive the plugin with:
#
#   bash tests/clients/setup.sh            # idempotent; a warm run takes well under a second
#
# - Debian packages through scripts/deps.sh (WEFT_CNI_CLIENT_DEPS): containerd 1.6 + runc,
#   the reference plugins (containernetworking-plugins, /usr/lib/cni), busybox-static, Go,
#   fping;
# - cnitool (containernetworking/cni's reference libcni client) built offline from Debian's
#   source package of libcni, the version of the installed golang-github-appc-cni-dev;
# - a Python venv with grpcio + grpcio-tools, and Python stubs of the CRI (runtime.v1) API
#   generated from the proto inside the k8s-cri crate (fetched with `cargo info`);
# - the pause image (busybox-static, CMD sleep infinity) as a docker-archive for
#   `ctr images import`, made here without any registry.
#
# Everything goes to the tool cache (WEFT_TOOLS_DIR, else /var/cache/weft-tools as root, else
# ~/.cache/weft-tools). Network access (apt, PyPI, crates.io) is needed only while something is
# missing. Concurrent runs wait for each other (flock).
#
# Output: progress on stderr; on stdout, and in $TOOLS/cni-clients.env, KEY=VALUE lines:
#   WEFT_TOOLS_DIR WEFT_CNITOOL WEFT_CRI_PYTHON WEFT_CRI_STUBS WEFT_PAUSE_IMAGE
#   WEFT_PAUSE_IMAGE_TAR WEFT_REF_CNI_DIR WEFT_CONTAINERD WEFT_CTR WEFT_RUNC WEFT_FPING
set -euo pipefail
SCRIPT_NAME=setup
# shellcheck source=tests/clients/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ((EUID != 0)); then
    die "needs root (apt, and the tests it serves create network namespaces)"
fi
mkdir -p "$TOOLS"
exec 9>"$TOOLS/.cni-clients.lock"
flock -w 1800 9 || die "another setup.sh held $TOOLS/.cni-clients.lock for 30 minutes"

t_start=$(now_ms)
# step NAME START_MS WHAT: one line per step, with how long it took.
step() { say "$(printf '%-10s %6d ms  %s' "$1" $(($(now_ms) - $2)) "$3")"; }

# --- Debian packages -------------------------------------------------------------------------
t=$(now_ms)
# (lib.sh sourced scripts/deps.sh)
deps_out=$(weft_deps "${WEFT_CNI_CLIENT_DEPS[@]}" 2>&1) || {
    echo "$deps_out" >&2
    die "installing Debian packages failed (scripts/deps.sh --cni-clients)"
}
step packages "$t" "${deps_out//$'\n'/; }"
for tool in containerd ctr runc go fping; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH after installing the packages"
done
REF_CNI_DIR=/usr/lib/cni
for p in bridge host-local portmap loopback; do
    [[ -x "$REF_CNI_DIR/$p" ]] || die "reference plugin $REF_CNI_DIR/$p is missing (containernetworking-plugins)"
done

# --- cnitool ---------------------------------------------------------------------------------
# Debian's golang-github-appc-cni-dev ships libcni under /usr/share/gocode but not cnitool/, so
# cnitool.go comes from the source package of the same version. deb-src lists are derived from
# the machine's own apt sources into a private apt state: nothing in /etc/apt or
# /var/lib/apt changes.
t=$(now_ms)
cni_src_version=$(dpkg-query -W -f='${source:Version}' golang-github-appc-cni-dev)
cni_upstream=${cni_src_version%-*}
cni_upstream=${cni_upstream#*:}
CNITOOL=$TOOLS/cnitool-$cni_src_version/cnitool
if [[ -x "$CNITOOL" ]]; then
    step cnitool "$t" "reused $CNITOOL"
else
    w=$(mktemp -d "$TOOLS/.cnitool.XXXXXX")
    trap 'rm -rf "$w"' EXIT
    mkdir -p "$w/lists/partial" "$w/cache/archives/partial" "$w/parts" "$w/src" "$w/gopath/src/cnitool"
    : >"$w/sources.list"
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] && sed 's/^Types:.*\bdeb\b.*$/Types: deb-src/' "$f" >"$w/parts/$(basename "$f")"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] && sed -n 's/^deb \(.*\)$/deb-src \1/p' "$f" >>"$w/sources.list"
    done
    apt_private=(-o "Dir::Etc::SourceList=$w/sources.list" -o "Dir::Etc::SourceParts=$w/parts"
        -o "Dir::State::Lists=$w/lists" -o "Dir::Cache=$w/cache" -q)
    apt-get "${apt_private[@]}" update >"$w/apt.log" 2>&1 ||
        { tail -n 20 "$w/apt.log" >&2; die "apt-get update (deb-src lists) failed"; }
    (cd "$w/src" && apt-get "${apt_private[@]}" source --download-only \
        "golang-github-appc-cni=$cni_src_version") >>"$w/apt.log" 2>&1 ||
        { tail -n 20 "$w/apt.log" >&2; die "apt-get source golang-github-appc-cni=$cni_src_version failed"; }
    orig=""
    for f in "$w"/src/golang-github-appc-cni_"$cni_upstream".orig.tar.*; do
        [[ -f "$f" ]] && orig=$f
    done
    [[ -n "$orig" ]] || die "apt-get source left no golang-github-appc-cni_$cni_upstream.orig.tar.*"
    tar -xf "$orig" -C "$w/src"
    cp "$w"/src/*/cnitool/cnitool.go "$w/gopath/src/cnitool/" ||
        die "no cnitool/cnitool.go in $orig"
    (cd "$w/gopath/src/cnitool" &&
        GO111MODULE=off GOPATH=$w/gopath:/usr/share/gocode GOCACHE=$w/gocache GOFLAGS='' \
            CGO_ENABLED=0 go build -o "$w/cnitool" .) >"$w/go.log" 2>&1 ||
        { cat "$w/go.log" >&2; die "go build cnitool failed"; }
    mkdir -p "$(dirname "$CNITOOL")"
    mv "$w/cnitool" "$CNITOOL"
    rm -rf "$w"
    trap - EXIT
    step cnitool "$t" "built $CNITOOL (libcni $cni_src_version, Debian source package)"
fi

# --- CRI proto and Python client -------------------------------------------------------------
t=$(now_ms)
STUBS=$TOOLS/cri-stubs-k8s-cri-$K8S_CRI_CRATE_VERSION
VENV=$TOOLS/cri-venv-grpc-$GRPC_VERSION
PY=$VENV/bin/python
if [[ -x "$PY" ]] && "$PY" -c 'import grpc, grpc_tools' 2>/dev/null; then
    step venv "$t" "reused $VENV"
else
    rm -rf "$VENV"
    py3=/usr/bin/python3
    [[ -x "$py3" ]] || py3=$(command -v python3) || die "no python3"
    "$py3" -m venv "$VENV" || die "$py3 -m venv failed (is python3-venv installed?)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
        "grpcio==$GRPC_VERSION" "grpcio-tools==$GRPC_VERSION" >&2 ||
        { rm -rf "$VENV"; die "pip install grpcio grpcio-tools $GRPC_VERSION failed"; }
    step venv "$t" "created $VENV (grpcio $GRPC_VERSION)"
fi

t=$(now_ms)
if [[ -f "$STUBS/v1_pb2.py" && -f "$STUBS/v1_pb2_grpc.py" ]] &&
    "$PY" -c "import sys; sys.path.insert(0, '$STUBS'); import v1_pb2, v1_pb2_grpc" 2>/dev/null; then
    step cri-stubs "$t" "reused $STUBS"
else
    # `cargo info` downloads the crate into cargo's registry and unpacks it under
    # registry/src; the proto is its proto/v1.proto. Under sudo, root's PATH may lack cargo.
    for dir in "$HOME/.cargo/bin" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin"}; do
        command -v cargo >/dev/null 2>&1 && break
        [[ -x "$dir/cargo" ]] && PATH=$dir:$PATH
    done
    cargo_home=${CARGO_HOME:-$HOME/.cargo}
    find_proto() {
        local p
        for p in "$cargo_home"/registry/src/*/"k8s-cri-$K8S_CRI_CRATE_VERSION"/proto/v1.proto; do
            [[ -f "$p" ]] && { echo "$p"; return 0; }
        done
        return 1
    }
    proto=$(find_proto) || {
        command -v cargo >/dev/null 2>&1 || die "cargo not found: it fetches the k8s-cri crate (the CRI proto)"
        # Outside the workspace, so the project's manifest plays no part.
        (cd / && cargo info --quiet "k8s-cri@$K8S_CRI_CRATE_VERSION" >/dev/null) ||
            die "cargo info k8s-cri@$K8S_CRI_CRATE_VERSION failed (crates.io reachable?)"
        proto=$(find_proto) || {
            # Only the .crate in registry/cache: unpack the proto from it.
            crate=""
            for c in "$cargo_home"/registry/cache/*/"k8s-cri-$K8S_CRI_CRATE_VERSION.crate"; do
                [[ -f "$c" ]] && crate=$c
            done
            [[ -n "$crate" ]] || die "cargo info did not leave k8s-cri-$K8S_CRI_CRATE_VERSION in $cargo_home/registry"
            x=$(mktemp -d)
            tar -xzf "$crate" -C "$x" "k8s-cri-$K8S_CRI_CRATE_VERSION/proto/v1.proto"
            echo "$x/k8s-cri-$K8S_CRI_CRATE_VERSION/proto/v1.proto"
        }
    }
    rm -rf "$STUBS"
    mkdir -p "$STUBS.tmp"
    cp "$proto" "$STUBS.tmp/v1.proto"
    "$PY" -m grpc_tools.protoc -I"$STUBS.tmp" --python_out="$STUBS.tmp" \
        --grpc_python_out="$STUBS.tmp" "$STUBS.tmp/v1.proto" ||
        { rm -rf "$STUBS.tmp"; die "protoc on $proto failed"; }
    mv "$STUBS.tmp" "$STUBS"
    step cri-stubs "$t" "generated $STUBS from $proto"
fi

# --- pause image -----------------------------------------------------------------------------
t=$(now_ms)
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
PAUSE_TAR=$TOOLS/weft-pause-busybox-${busybox_version//[:+~]/_}.tar
if [[ -s "$PAUSE_TAR" ]]; then
    step pause "$t" "reused $PAUSE_TAR"
else
    arch=$(dpkg --print-architecture)
    "$PY" - "$PAUSE_TAR.tmp" "$PAUSE_IMAGE" "$arch" <<'EOF' || die "building the pause image failed"
# A docker-archive (what `docker save` writes; containerd imports it): one layer with
# /bin/busybox and /bin/sleep -> busybox, CMD sleep infinity. Deterministic bytes.
import hashlib, io, json, sys, tarfile

out, ref, arch = sys.argv[1:4]

def entry(tar, name, **kw):
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    data = kw.pop("data", None)
    for k, v in kw.items():
        setattr(info, k, v)
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)

layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
    entry(t, "bin", type=tarfile.DIRTYPE, mode=0o755)
    entry(t, "bin/busybox", mode=0o755, data=open("/bin/busybox", "rb").read())
    entry(t, "bin/sleep", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
    for d in ("dev", "proc", "sys", "etc", "tmp"):
        entry(t, d, type=tarfile.DIRTYPE, mode=0o755)
layer = layer.getvalue()
layer_id = hashlib.sha256(layer).hexdigest()
config = json.dumps({
    "architecture": arch, "os": "linux", "created": "1970-01-01T00:00:00Z",
    "config": {"Cmd": ["/bin/sleep", "infinity"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_id]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "weft tests/clients/setup.sh"}],
}, sort_keys=True).encode()
config_id = hashlib.sha256(config).hexdigest()
manifest = json.dumps([{"Config": config_id + ".json", "RepoTags": [ref],
                        "Layers": [layer_id + "/layer.tar"]}]).encode()
with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as t:
    entry(t, layer_id, type=tarfile.DIRTYPE, mode=0o755)
    entry(t, layer_id + "/layer.tar", mode=0o644, data=layer)
    entry(t, config_id + ".json", mode=0o644, data=config)
    entry(t, "manifest.json", mode=0o644, data=manifest)
EOF
    mv "$PAUSE_TAR.tmp" "$PAUSE_TAR"
    step pause "$t" "built $PAUSE_TAR ($PAUSE_IMAGE, busybox $busybox_version)"
fi

# --- summary ---------------------------------------------------------------------------------
env_text="WEFT_TOOLS_DIR=$TOOLS
WEFT_CNITOOL=$CNITOOL
WEFT_CRI_PYTHON=$PY
WEFT_CRI_STUBS=$STUBS
WEFT_PAUSE_IMAGE=$PAUSE_IMAGE
WEFT_PAUSE_IMAGE_TAR=$PAUSE_TAR
WEFT_REF_CNI_DIR=$REF_CNI_DIR
WEFT_CONTAINERD=$(command -v containerd)
WEFT_CTR=$(command -v ctr)
WEFT_RUNC=$(command -v runc)
WEFT_FPING=$(command -v fping)"
if [[ "$(cat "$CLIENTS_ENV" 2>/dev/null)" != "$env_text" ]]; then
    printf '%s\n' "$env_text" >"$CLIENTS_ENV.tmp"
    mv "$CLIENTS_ENV.tmp" "$CLIENTS_ENV"
fi
say "containerd $(containerd --version | awk '{print $3}'), $(runc --version | head -n1), cnitool (libcni $cni_src_version), reference plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins)"
say "ready in $(($(now_ms) - t_start)) ms; paths in $CLIENTS_ENV"
printf '%s\n' "$env_text"
