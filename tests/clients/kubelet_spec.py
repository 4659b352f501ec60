"""The parts of a pod spec that kubelet turns into files and CRI messages, for kubelet.py:
manifests (rendered workloads, Secrets, ConfigMaps), a node's hostPath mapping and type checks,
kubelet's atomic writer for secret/projected volumes, $(VAR) expansion, quantities, and the
securityContext and resources of a container as CRI's LinuxContainerSecurityContext and
LinuxContainerResources.

Imported by kubelet.py once it has put the CRI stubs (WEFT_CRI_STUBS) on sys.path.
"""
import base64
import copy
import json
import os
import random
import re
import stat
import sys
import time

try:
    import yaml
except ImportError:
    # The venv has only grpc; Debian's python3-yaml is for the same python3.
    sys.path.append("/usr/lib/python3/dist-packages")
    import yaml

import v1_pb2 as pb

# kubelet's defaults (pkg/securitycontext).
DEFAULT_MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                        "/sys/devices/virtual/powercap"]
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
PROPAGATION = {None: pb.PROPAGATION_PRIVATE, "None": pb.PROPAGATION_PRIVATE,
               "HostToContainer": pb.PROPAGATION_HOST_TO_CONTAINER,
               "Bidirectional": pb.PROPAGATION_BIDIRECTIONAL}


def now():
    return time.time()


def log(msg, **fields):
    extra = " ".join(f"{k}={json.dumps(v)}" for k, v in fields.items())
    print(f"{time.strftime('%H:%M:%S')} kubelet: {msg} {extra}".rstrip(), file=sys.stderr,
          flush=True)


class PodError(Exception):
    """Something kubelet reports as a pod event and retries (FailedMount, CreateContainerError)."""

    def __init__(self, reason, message):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


# --- manifests -------------------------------------------------------------------------------


def load_manifests(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


def pick_workload(docs, kind, name, node):
    """The workload to run here: by kind and name; a Job or Pod pinned to another node (its
    pod spec's nodeName) is not this node's."""
    kind = kind or "DaemonSet"
    for d in docs:
        if d.get("kind") != kind or (name and d["metadata"]["name"] != name):
            continue
        spec = d["spec"] if kind == "Pod" else d["spec"]["template"]["spec"]
        if spec.get("nodeName") not in (None, node):
            continue
        return d
    raise SystemExit(f"kubelet: no {kind} {name or ''} for node {node} in the manifest")


def pod_template(workload):
    if workload["kind"] == "Pod":
        return workload["metadata"], workload["spec"]
    tmpl = workload["spec"]["template"]
    spec = copy.deepcopy(tmpl["spec"])
    if workload["kind"] == "DaemonSet":
        spec["restartPolicy"] = "Always"  # the only one a DaemonSet allows
    elif workload["kind"] == "Job":
        spec.setdefault("restartPolicy", "Never")
    return tmpl.get("metadata", {}), spec


def objects_by_name(docs, kind):
    out = {}
    for d in docs:
        if d.get("kind") == kind:
            data = {k: base64.b64decode(v) for k, v in (d.get("data") or {}).items()} \
                if kind == "Secret" else {k: v.encode() for k, v in (d.get("data") or {}).items()}
            for k, v in (d.get("stringData") or {}).items():
                data[k] = v.encode()
            out[d["metadata"]["name"]] = data
    return out


# --- the node's view: secrets, hostPath mapping ----------------------------------------------


class Node:
    def __init__(self, args, docs):
        self.name = args.node
        self.ip = args.node_ip
        self.host_root = os.path.abspath(args.host_root) if args.host_root else None
        self.real = [p.rstrip("/") or "/" for p in (args.real_host_path or ["/dev", "/proc", "/sys"])]
        self.secrets = objects_by_name(docs, "Secret")
        self.configmaps = objects_by_name(docs, "ConfigMap")
        for spec in args.secret or []:
            name, _, src = spec.partition("=")
            data = {}
            if os.path.isdir(src):
                for f in sorted(os.listdir(src)):
                    if os.path.isfile(os.path.join(src, f)):
                        data[f] = open(os.path.join(src, f), "rb").read()
            else:
                data = {k: v.encode() for k, v in json.load(open(src)).items()}
            self.secrets[name] = data
        self.sa_dir = args.service_account_dir
        self.api_server = args.api_server

    def host_path(self, path):
        """Where a hostPath volume's path is on this machine: under --host-root unless real."""
        path = os.path.normpath(path)
        if not self.host_root:
            return path
        for r in self.real:
            if path == r or path.startswith(r + "/") or r == "/":
                return path
        return self.host_root + path


def check_host_path(path, typ):
    """kubelet's hostPath type checks (pkg/volume/hostpath); creates what *OrCreate asks for."""
    typ = typ or ""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if typ == "":
        return
    if typ == "DirectoryOrCreate":
        if st is None:
            os.makedirs(path, mode=0o755, exist_ok=True)
            return
        typ = "Directory"
    if typ == "FileOrCreate":
        if st is None:
            if not os.path.isdir(os.path.dirname(path)):
                raise PodError("FailedMount", f"hostPath type check failed: {path}: parent "
                                              "directory does not exist")
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return
        typ = "File"
    want = {"Directory": (stat.S_ISDIR, "a directory"), "File": (stat.S_ISREG, "a file"),
            "Socket": (stat.S_ISSOCK, "a socket file"),
            "CharDevice": (stat.S_ISCHR, "a character device"),
            "BlockDevice": (stat.S_ISBLK, "a block device")}
    if typ not in want:
        raise PodError("FailedMount", f"hostPath type {typ!r} is not supported")
    test, what = want[typ]
    if st is None or not test(st.st_mode):
        raise PodError("FailedMount", f"hostPath type check failed: {path} is not {what}")


def atomic_write_dir(target, files, default_mode):
    """kubelet's AtomicWriter layout: ..data -> timestamped dir, each key a symlink into ..data."""
    os.makedirs(target, exist_ok=True)
    stamp = "..%s.%d" % (time.strftime("%Y_%m_%d_%H_%M_%S"), random.randrange(10 ** 9))
    d = os.path.join(target, stamp)
    os.makedirs(d)
    for rel, (data, mode) in files.items():
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode if mode is not None else default_mode)
    tmp = os.path.join(target, "..data_tmp")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(stamp, tmp)
    os.replace(tmp, os.path.join(target, "..data"))
    for rel in files:
        top = rel.split("/")[0]
        link = os.path.join(target, top)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..data", top), link)


# --- the pod ---------------------------------------------------------------------------------


def expand(value, env):
    """$(VAR) references (kubelet's expansion.Expand): $$ escapes, unknown ones stay as they are."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def quantity(q):
    """A resource quantity as a number (bytes or cores)."""
    q = str(q)
    units = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "k": 1e3, "M": 1e6,
             "G": 1e9, "T": 1e12, "m": 1e-3}
    for u, f in units.items():
        if q.endswith(u):
            return float(q[:-len(u)]) * f
    return float(q)


def security_context(pod_spec, c_spec):
    """securityContext (the container's over the pod's) as CRI's LinuxContainerSecurityContext."""
    psc = pod_spec.get("securityContext") or {}
    sc = dict(c_spec.get("securityContext") or {})
    for k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"):
        if k not in sc and k in psc:
            sc[k] = psc[k]
    caps = sc.get("capabilities") or {}
    privileged = bool(sc.get("privileged"))
    spec = pod_spec
    out = pb.LinuxContainerSecurityContext(
        capabilities=pb.Capability(add_capabilities=caps.get("add") or [],
                                   drop_capabilities=caps.get("drop") or []),
        privileged=privileged,
        namespace_options=pb.NamespaceOption(
            network=pb.NODE if spec.get("hostNetwork") else pb.POD,
            pid=pb.NODE if spec.get("hostPID") else (
                pb.POD if spec.get("shareProcessNamespace") else pb.CONTAINER),
            ipc=pb.NODE if spec.get("hostIPC") else pb.POD),
        readonly_rootfs=bool(sc.get("readOnlyRootFilesystem")),
        # allowPrivilegeEscalation defaults to true unless privileged is false and
        # CAP_SYS_ADMIN is not added: kubelet's AddNoNewPrivileges.
        no_new_privs=sc.get("allowPrivilegeEscalation") is False and not privileged,
        supplemental_groups=psc.get("supplementalGroups") or [],
    )
    seccomp = (sc.get("seccompProfile") or {}).get("type", "Unconfined")
    out.seccomp.profile_type = {"RuntimeDefault": pb.SecurityProfile.RuntimeDefault,
                                "Unconfined": pb.SecurityProfile.Unconfined,
                                "Localhost": pb.SecurityProfile.Localhost}[seccomp]
    out.seccomp_profile_path = {"RuntimeDefault": "runtime/default",
                                "Unconfined": "unconfined"}.get(seccomp, "")
    if "runAsUser" in sc:
        out.run_as_user.value = sc["runAsUser"]
    if "runAsGroup" in sc:
        out.run_as_group.value = sc["runAsGroup"]
    if not privileged:
        if sc.get("procMount") == "Unmasked":
            out.masked_paths[:] = []
            out.readonly_paths[:] = []
        else:
            out.masked_paths[:] = DEFAULT_MASKED_PATHS
            out.readonly_paths[:] = DEFAULT_READONLY_PATHS
    if sc.get("runAsNonRoot") and sc.get("runAsUser", 1) == 0:
        raise PodError("CreateContainerConfigError",
                       "container's runAsUser breaks non-root policy")
    return out

def resources(c_spec):
    """resources as CRI's LinuxContainerResources: memory limit, CPU shares and quota."""
    res = c_spec.get("resources") or {}
    limits, requests = res.get("limits") or {}, res.get("requests") or {}
    out = pb.LinuxContainerResources()
    if "memory" in limits:
        out.memory_limit_in_bytes = int(quantity(limits["memory"]))
    cpu_req = requests.get("cpu", limits.get("cpu"))
    out.cpu_shares = max(2, int(quantity(cpu_req) * 1024)) if cpu_req else 2
    if "cpu" in limits:
        out.cpu_period = 100000
        out.cpu_quota = max(1000, int(quantity(limits["cpu"]) * 100000))
    return out
