#!/usr/bin/env bash
# Builds weft's container image offline: no registry, only Debian's package mirror.
#
#   bash scripts/image.sh           # build: OCI archive + localhost/weft:<version>
#   bash scripts/image.sh --check   # check the image the build left: weft --version through the
#                                   # entrypoint, weft-cni static and answering VERSION, nft but
#                                   # no `ip`, the router starting its bridge in a private netns
#
# 1. `weft` (release; links Debian's libsodium) and a static `weft-cni` (glibc, crt-static: it
#    runs on the node, whatever its glibc) are built on this machine for its architecture.
# 2. The base is a minimal Debian rootfs made by mmdebstrap from the mirror apt already uses, with
#    only the runtime packages (libsodium23, nftables), imported as localhost/weft-base:<suite>.
# 3. The repository's Containerfile builds on it (BASE=that image) with buildah; the result is
#    tagged localhost/weft:<version> and written to target/image/weft-<version>.oci.tar.
#
# Environment: WEFT_IMAGE_SUITE (bookworm), WEFT_IMAGE_MIRROR (a URL or an apt sources file;
# default: this machine's Debian sources), WEFT_IMAGE_NAME (localhost/weft).
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

check() {
    local out
    out=$(podman run "${RUN_OPTS[@]}" "$IMAGE" --version)
    log "podman run --rm $IMAGE --version: $out"
    [[ "$out" == *"$VERSION"* ]] || { log "FAIL: the version is not $VERSION"; return 1; }
    out=$(podman run "${RUN_OPTS[@]}" --entrypoint weft "$IMAGE" --version)
    log "podman run --rm --entrypoint weft $IMAGE --version: $out"
    out=$(echo '{"cniVersion":"1.1.0"}' | podman run "${RUN_OPTS[@]}" -i -e CNI_COMMAND=VERSION \
        --entrypoint weft-cni "$IMAGE")
    log "weft-cni VERSION in the image: $out"
    [[ "$out" == *supportedVersions* ]] || { log "FAIL: weft-cni did not answer VERSION"; return 1; }
    out=$(podman run "${RUN_OPTS[@]}" --entrypoint nft "$IMAGE" --version)
    log "nft in the image: $out"
    if podman run "${RUN_OPTS[@]}" --entrypoint sh "$IMAGE" -c 'command -v ip' >/dev/null; then
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
    # glibc's ldd says "statically linked" for a static PIE, "not a dynamic executable" otherwise.
    [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] ||
        { log "FAIL: weft-cni is dynamically linked"; return 1; }
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
    podman run -d --name "$ctr" "${RUN_OPTS[@]:1}" --cap-add NET_ADMIN,NET_RAW \
        --device /dev/net/tun --tmpfs /var/lib/weft:mode=0700 --tmpfs /run/weft:mode=0755 \
        -e WEFT_PASSWORD=image-check-only -e WEFT_NAME=02:00:00:00:00:01 "$IMAGE" router >/dev/null
    for ((i = 0; i < 100; i++)); do
        podman logs "$ctr" 2>&1 | grep -q 'bridge address set' && break
        sleep 0.2
    done
    out=$(podman exec "$ctr" weft status 2>&1) || { podman logs "$ctr" >&2; log "FAIL: weft status"; return 1; }
    log "router in the image: $(grep -E 'Datapath|IPAM' <<<"$out" | sed 's/^ *//' | paste -sd ';')"
    out=$(podman exec "$ctr" sh -c 'ls /sys/class/net/weft/brif')
    [[ "$out" == weft-tap ]] || { log "FAIL: the TAP is not on the bridge ($out)"; return 1; }
}

if [[ "${1:-}" == --check ]]; then
    check
    exit
fi

weft_deps "${WEFT_IMAGE_DEPS[@]}"

# 1. The binaries.
log "building weft (release) and a static weft-cni for $TRIPLE"
cargo build --release --locked -p weft-router
# --target keeps crt-static off the build scripts and proc macros (they run here, dynamic) and
# puts the static plugin in its own directory, so the two builds do not rebuild each other.
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked -p weft-cni --target "$TRIPLE"
mkdir -p "$OUT/$ARCH"
install -m 0755 target/release/weft "$OUT/$ARCH/weft"
install -m 0755 "target/$TRIPLE/release/weft-cni" "$OUT/$ARCH/weft-cni"
if ldd "$OUT/$ARCH/weft-cni" 2>&1 | grep -q '=>'; then
    log "weft-cni is dynamically linked: $(ldd "$OUT/$ARCH/weft-cni" 2>&1)"
    exit 1
fi

# What the previous run left, removed once the new images have taken over its tags.
old_ids=$(podman image inspect --format '{{.Id}}' "$IMAGE" "$BASE_IMAGE" 2>/dev/null || true)

# 2. The base, from Debian packages only: the Essential set (dpkg, a shell, libc) and the runtime
# packages, no apt (nothing installs packages at run time), docs, man pages or locales. /usr is
# merged by mmdebstrap's hook, as in Debian's own images, rather than by the usrmerge package,
# which would pull in perl. Rebuilt each run so it picks up the mirror's security updates.
mirror=${WEFT_IMAGE_MIRROR:-}
if [[ -z "$mirror" ]]; then
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        mirror=/etc/apt/sources.list.d/debian.sources
    else
        mirror=http://deb.debian.org/debian
    fi
fi
log "making $BASE_IMAGE with mmdebstrap ($SUITE from $mirror, + $RUNTIME_PACKAGES)"
if ! mmdebstrap --variant=essential --include="$RUNTIME_PACKAGES" --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$SUITE" - "$mirror" 2>"$OUT/mmdebstrap.log" |
    podman import --quiet --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null; then
    tail -n 30 "$OUT/mmdebstrap.log" >&2
    log "FAIL: making the base (whole log: $OUT/mmdebstrap.log)"
    exit 1
fi

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
log "built $IMAGE and $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
check
