#!/usr/bin/env bash
# Builds weft's container image offline: no registry, only Debian's package mirror.
#
#   bash scripts/image.sh               # build: OCI archive + localhost/weft:<version>
#   bash scripts/image.sh --fresh-base  # the same, remaking the base even if the cache has it
#   bash scripts/image.sh --check       # check the image the build left: `weft --version` as the
#                                       # command, weft-cni static and answering VERSION, nft but
#                                       # no `ip`, the router starting its bridge in a private netns
#
# 1. `weft` (release; links Debian's libsodium) and a static `weft-cni` (glibc, crt-static and a
#    non-PIE executable: it runs on the node, whatever its glibc) are built on this machine for
#    its architecture.
# 2. The base is a minimal Debian rootfs made by mmdebstrap from the mirror apt already uses, with
#    only the runtime packages (libsodium23, nftables), imported as localhost/weft-base:<suite>.
#    The rootfs tar is cached in the tool cache (scripts/deps.sh: weft_tools_dir), keyed on what
#    makes it (suite, architecture, packages, mmdebstrap's options and version, the mirror); an
#    entry older than WEFT_IMAGE_BASE_MAX_AGE_DAYS (7) is remade, so security updates come in.
# 3. The repository's Containerfile builds on it (BASE=that image) with buildah; the result is
#    tagged localhost/weft:<version> and written to target/image/weft-<version>.oci.tar.
#
# Environment: WEFT_IMAGE_SUITE (bookworm), WEFT_IMAGE_MIRROR (a URL or an apt sources file;
# default: this machine's Debian sources), WEFT_IMAGE_NAME (localhost/weft),
# WEFT_IMAGE_BASE_MAX_AGE_DAYS (7).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
source scripts/deps.sh

SUITE=${WEFT_IMAGE_SUITE:-bookworm}
NAME=${WEFT_IMAGE_NAME:-localhost/weft}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
ARCH=$(dpkg --print-architecture)         # Debian's and TARGETARCH's name: amd64, arm64
TRIPLE="$(uname -m)-unknown-linux-gnu"    # rust's: x86_64-…, aarch64-…
OUT=target/image
ARCHIVE="$OUT/weft-$VERSION.oci.tar"
IMAGE="$NAME:$VERSION"
BASE_IMAGE="localhost/weft-base:$SUITE"
RUNTIME_PACKAGES=libsodium23,nftables

log() { echo "image: $*" >&2; }

# Where this runs inside a container that may not raise rlimits, runc cannot give a container the
# defaults podman asks for (nofile, nproc at the host's maximum): the checks ask for less.
RUN_OPTS=(--rm --network none --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
# On a host with the hybrid cgroup layout (v1 controllers beside /sys/fs/cgroup/unified) crun,
# podman's default runtime, refuses to run anything ("cgroups in hybrid mode not supported");
# runc (which containerd brings) runs there. runc, unlike crun, keeps /proc/sys/net read-only in a
# container with a network namespace of its own, where the smoke run's router sets sysctls.
SMOKE_OPTS=()
if [[ -d /sys/fs/cgroup/unified ]] && command -v runc >/dev/null 2>&1; then
    RUN_OPTS+=(--runtime runc)
    SMOKE_OPTS+=(--security-opt systempaths=unconfined)
fi

check() {
    local out
    out=$(podman run "${RUN_OPTS[@]}" "$IMAGE" weft --version)
    log "podman run --rm $IMAGE weft --version: $out"
    [[ "$out" == *"$VERSION"* ]] || { log "FAIL: the version is not $VERSION"; return 1; }
    # What Kubernetes does with the chart's `command: ["weft"]`: the entrypoint is replaced.
    out=$(podman run "${RUN_OPTS[@]}" --entrypoint weft "$IMAGE" --version)
    log "podman run --rm --entrypoint weft $IMAGE --version: $out"
    [[ "$out" == *"$VERSION"* ]] || { log "FAIL: the version is not $VERSION"; return 1; }
    out=$(podman image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$IMAGE")
    log "entrypoint and command: $out"
    [[ "$out" == 'null ["weft","router"]' || "$out" == '[] ["weft","router"]' ]] ||
        { log "FAIL: the image should have no entrypoint and the command weft router"; return 1; }
    out=$(echo '{"cniVersion":"1.1.0"}' | podman run "${RUN_OPTS[@]}" -i -e CNI_COMMAND=VERSION \
        "$IMAGE" weft-cni)
    log "weft-cni VERSION in the image: $out"
    [[ "$out" == *supportedVersions* ]] || { log "FAIL: weft-cni did not answer VERSION"; return 1; }
    out=$(podman run "${RUN_OPTS[@]}" "$IMAGE" nft --version)
    log "nft in the image: $out"
    if podman run "${RUN_OPTS[@]}" "$IMAGE" sh -c 'command -v ip' >/dev/null; then
        log "FAIL: the image has an ip binary"
        return 1
    fi
    # The plugin as the node gets it (copied out of the image): not dynamically linked.
    local tmp
    tmp=$(mktemp -d)
    local ctr
    ctr=$(podman create "$IMAGE")
    podman cp "$ctr:/usr/bin/weft-cni" "$tmp/weft-cni" >/dev/null
    podman rm "$ctr" >/dev/null
    out=$(ldd "$tmp/weft-cni" 2>&1 || true)
    rm -rf "$tmp"
    log "ldd weft-cni (from the image): $(echo "$out" | tr -d '\t')"
    # glibc's ldd says "not a dynamic executable" for a static non-PIE executable (no
    # PT_INTERP, no PT_DYNAMIC), "statically linked" for a static PIE (which has PT_DYNAMIC).
    [[ "$out" == *"not a dynamic executable"* ]] ||
        { log "FAIL: weft-cni is not a static executable"; return 1; }
    smoke
    log "check: ok ($IMAGE, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"
}

# The router in the image, alone in a network namespace of its own: its bridge, TAP port and
# gateway address come up with no `ip` binary, and `weft status` answers.
smoke() {
    if [[ ! -c /dev/net/tun ]]; then
        log "no /dev/net/tun here: the router smoke run is skipped"
        return 0
    fi
    local ctr=weft-image-check-$$ i out
    # shellcheck disable=SC2064 # the name is fixed now
    trap "podman rm -f $ctr >/dev/null 2>&1 || true; trap - RETURN" RETURN
    podman run -d --name "$ctr" "${RUN_OPTS[@]:1}" "${SMOKE_OPTS[@]}" --cap-add NET_ADMIN,NET_RAW \
        --device /dev/net/tun --tmpfs /var/lib/weft:mode=0700 --tmpfs /run/weft:mode=0755 \
        -e WEFT_PASSWORD=image-check-only -e WEFT_NAME=02:00:00:00:00:01 "$IMAGE" >/dev/null
    for ((i = 0; i < 100; i++)); do
        podman logs "$ctr" 2>&1 | grep -q 'bridge address set' && break
        sleep 0.2
    done
    out=$(podman exec "$ctr" weft status 2>&1) || { podman logs "$ctr" >&2; log "FAIL: weft status"; return 1; }
    log "router in the image: $(grep -E 'Datapath|IPAM' <<<"$out" | sed 's/^ *//' | paste -sd ';')"
    out=$(podman exec "$ctr" sh -c 'ls /sys/class/net/weft/brif')
    [[ "$out" == weft-tap ]] || { log "FAIL: the TAP is not on the bridge ($out)"; return 1; }
}

fresh_base=0
case "${1:-}" in
--check)
    check
    exit
    ;;
--fresh-base) fresh_base=1 ;;
"") ;;
*)
    sed -n '3,8s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac

t_start=$SECONDS
weft_deps "${WEFT_IMAGE_DEPS[@]}"

# 1. The binaries.
log "building weft (release) and a static weft-cni for $TRIPLE"
cargo build --release --locked -p weft-router
# --target keeps crt-static off the build scripts and proc macros (they run here, dynamic) and
# puts the static plugin in its own directory, so the two builds do not rebuild each other.
# relocation-model=static makes a plain static executable rather than a static PIE: no dynamic
# section at all, nothing for a loader to relocate, and `ldd` says "not a dynamic executable".
# (The plugin resolves no names: it talks to the router over a unix socket and to the kernel
# over netlink, so glibc's NSS, which a static binary cannot load, is never needed.)
RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' \
    cargo build --release --locked -p weft-cni --target "$TRIPLE"
mkdir -p "$OUT/$ARCH"
install -m 0755 target/release/weft "$OUT/$ARCH/weft"
install -m 0755 "target/$TRIPLE/release/weft-cni" "$OUT/$ARCH/weft-cni"
ldd_out=$(ldd "$OUT/$ARCH/weft-cni" 2>&1 || true) # exit 1 for a static executable
if [[ "$ldd_out" != *"not a dynamic executable"* ]]; then
    log "weft-cni is not a static executable: $ldd_out"
    exit 1
fi
log "binaries ready ($((SECONDS - t_start)) s)"

# What the previous run left, removed once the new images have taken over its tags.
old_ids=$(podman image inspect --format '{{.Id}}' "$IMAGE" "$BASE_IMAGE" 2>/dev/null || true)

# 2. The base, from Debian packages only: the Essential set (dpkg, a shell, libc) and the runtime
# packages, no apt (nothing installs packages at run time), docs, man pages or locales. /usr is
# merged by mmdebstrap's hook, as in Debian's own images, rather than by the usrmerge package,
# which would pull in perl.
mirror=${WEFT_IMAGE_MIRROR:-}
if [[ -z "$mirror" ]]; then
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        mirror=/etc/apt/sources.list.d/debian.sources
    else
        mirror=http://deb.debian.org/debian
    fi
fi
MMDEBSTRAP_ARGS=(--variant=essential --include="$RUNTIME_PACKAGES" --format=tar
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*')
# The cache key: everything that decides what mmdebstrap makes (the mirror by its sources file's
# content when it is one). The mirror's content changes under the same key: hence the age limit.
base_key=$(
    {
        printf '%s\n' "$SUITE" "$ARCH" "${MMDEBSTRAP_ARGS[@]}" "$mirror"
        dpkg-query -W -f='${Version}\n' mmdebstrap
        if [[ -f "$mirror" ]]; then cat "$mirror"; fi
    } | sha256sum | cut -c1-16
)
BASE_CACHE_DIR=$(weft_tools_dir)/image-base
BASE_TAR=$BASE_CACHE_DIR/weft-base-$SUITE-$ARCH-$base_key.tar
max_age_days=${WEFT_IMAGE_BASE_MAX_AGE_DAYS:-7}
mkdir -p "$BASE_CACHE_DIR"
exec 8>"$BASE_CACHE_DIR/.lock"
flock -w 1800 8 || { log "FAIL: another image.sh held $BASE_CACHE_DIR/.lock for 30 minutes"; exit 1; }
if [[ -s "$BASE_TAR" ]] && ((fresh_base == 0)) &&
    [[ -z "$(find "$BASE_TAR" -mtime "+$((max_age_days - 1))" 2>/dev/null)" ]]; then
    log "base rootfs: reusing $BASE_TAR (made $(date -r "$BASE_TAR" '+%F %T'))"
else
    t=$SECONDS
    log "making the base rootfs with mmdebstrap ($SUITE from $mirror, + $RUNTIME_PACKAGES)"
    if ! mmdebstrap "${MMDEBSTRAP_ARGS[@]}" "$SUITE" "$BASE_TAR.tmp" "$mirror" \
        >"$OUT/mmdebstrap.log" 2>&1; then
        tail -n 30 "$OUT/mmdebstrap.log" >&2
        rm -f "$BASE_TAR.tmp"
        log "FAIL: making the base (whole log: $OUT/mmdebstrap.log)"
        exit 1
    fi
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    # Older entries of this suite and architecture are superseded.
    find "$BASE_CACHE_DIR" -maxdepth 1 -name "weft-base-$SUITE-$ARCH-*.tar" ! -path "$BASE_TAR" -delete
    log "base rootfs: made $BASE_TAR ($((SECONDS - t)) s, $(du -h "$BASE_TAR" | cut -f1))"
fi
# Local storage already has this very base (imported from this tar, by its label): keep it, so
# the image's base layer, and with it buildah's cache, stay the same.
tar_stamp="$base_key-$(stat -c %Y "$BASE_TAR")"
have=$(podman image inspect --format '{{index .Labels "dev.weft.base"}}' "$BASE_IMAGE" 2>/dev/null || true)
if [[ "$have" == "$tar_stamp" ]]; then
    log "base image: $BASE_IMAGE is already $BASE_TAR"
else
    podman import --quiet --change 'CMD ["/bin/bash"]' --change "LABEL dev.weft.base=$tar_stamp" \
        "$BASE_TAR" "$BASE_IMAGE" >/dev/null
    log "base image: imported $BASE_TAR as $BASE_IMAGE"
fi
exec 8>&-

# 3. The image, from the same Containerfile anyone else builds with another base.
log "building $IMAGE on $BASE_IMAGE"
buildah bud --quiet --pull=never --isolation=chroot \
    --build-arg BASE="$BASE_IMAGE" --build-arg TARGETARCH="$ARCH" \
    --label org.opencontainers.image.version="$VERSION" \
    -f Containerfile -t "$IMAGE" "$OUT" >/dev/null
new_ids=$(podman image inspect --format '{{.Id}}' "$IMAGE" "$BASE_IMAGE")
for id in $old_ids; do
    if ! grep -qx "$id" <<<"$new_ids"; then
        podman rmi "$id" >/dev/null 2>&1 || true
    fi
done
rm -f "$ARCHIVE"
podman save --quiet --format oci-archive -o "$ARCHIVE" "$IMAGE"
log "built $IMAGE and $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)) in $((SECONDS - t_start)) s"
check
