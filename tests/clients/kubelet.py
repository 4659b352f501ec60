#!/usr/bin/env python3
"""A mini kubelet: runs one node's pod of a rendered workload through containerd's CRI.

It does what kubelet does with a DaemonSet's pod on one node (no API server: the pod spec comes
from `helm template` output), pull-free and for one host network namespace of the tests:

  kubelet.py run --manifest FILE --node NAME --node-ip IP --state-dir DIR [options]
      the daemon: imports the image archive, sets up the volumes, runs the pod sandbox (host
      network when the spec says so), the init containers to completion in order, then the
      containers, with the spec's command/args, env, securityContext, volumes and probes;
      restarts containers by the pod's restartPolicy with kubelet's back-off; serves the
      commands below on DIR/kubelet.sock and keeps DIR/state.json up to date. SIGTERM deletes
      the pod (gracefully) and exits. With restartPolicy Never/OnFailure (a Job's or hook's pod)
      it exits once the pod has finished, with the last container's exit code.
  kubelet.py status --state-dir DIR             the state (JSON)
  kubelet.py restart-container NAME --state-dir DIR
                                                stop the container (SIGTERM, grace period), as a
                                                failed liveness probe does; it is restarted by the
                                                restartPolicy (a restart is counted)
  kubelet.py delete-pod --state-dir DIR         delete the pod gracefully (what `kubectl delete
                                                pod` or a DaemonSet rolling update does)
  kubelet.py create-pod --state-dir DIR [--manifest FILE]
                                                a new pod (new uid and sandbox) from the manifest
  kubelet.py exec NAME --state-dir DIR [--timeout S] -- CMD...
                                                ExecSync in the container: prints its stdout and
                                                stderr, exits with its code
  kubelet.py logs NAME --state-dir DIR [--attempt N]
                                                the container's log (CRI log format stripped)
  kubelet.py stop --state-dir DIR               delete the pod and end the daemon

The pod spec's parts (manifests, hostPath checks, the atomic writer, securityContext and
resources as CRI messages) are in kubelet_spec.py next to this file. See tests/clients/README.md
("kubelet.py") for what is and is not implemented.
"""
import argparse
import glob
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import string
import subprocess
import sys
import threading
import time
import traceback
import uuid

CLIENTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, CLIENTS_DIR)

from cri_stubs import load, setting  # noqa: E402

grpc, pb, rpc = load("kubelet")

from kubelet_spec import (  # noqa: E402
    PROPAGATION, Node, PodError, atomic_write_dir, check_host_path, expand, load_manifests, log,
    now, pick_workload, pod_template, quantity, resources, security_context)

# kubelet's defaults (pkg/kubelet).
BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET = 600.0  # a container that ran this long starts over at BACKOFF_INITIAL
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
PROBE_USER_AGENT = "kube-probe/1.35"
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


class Container:
    def __init__(self, spec, init):
        self.spec, self.name, self.init = spec, spec["name"], init
        self.id = None
        self.restarts = 0
        self.state = "waiting"   # waiting | running | terminated
        self.reason = "ContainerCreating"
        self.message = ""
        self.exit_code = None
        self.started_at = None
        self.finished_at = None
        self.last_state = None
        self.backoff = 0.0
        self.backoff_until = 0.0
        self.done = False        # an init container that exited 0
        self.ready = False
        self.started = False     # the startup probe passed (or there is none)
        self.probes = {}         # kind -> {"successes", "failures", "next", "last", ...}
        self.readiness_history = []
        self.kill_reason = None
        self.term_file = None

    def json(self):
        return {
            "name": self.name, "init": self.init, "id": self.id, "state": self.state,
            "reason": self.reason, "message": self.message, "exit_code": self.exit_code,
            "restart_count": self.restarts, "ready": self.ready, "started": self.started,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "last_state": self.last_state, "backoff_seconds": self.backoff,
            "probes": {k: {kk: vv for kk, vv in v.items() if kk != "next"}
                       for k, v in self.probes.items()},
            "readiness_history": self.readiness_history,
        }


class Pod:
    def __init__(self, meta, spec, node, namespace):
        self.meta, self.spec = meta, spec
        base = meta.get("generateName") or (meta.get("labels", {}).get(
            "app.kubernetes.io/name", "pod") + "-")
        self.name = base + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        self.namespace = namespace
        self.uid = str(uuid.uuid4())
        self.node = node
        self.sandbox_id = None
        self.sandbox_attempt = 0
        self.phase = "Pending"
        self.events = []
        self.deleted = False
        self.init = [Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, False) for c in spec.get("containers") or []]
        self.volumes_ready = False
        self.volume_dirs = {}
        self.created = now()

    @property
    def all(self):
        return self.init + self.containers

    def container(self, name):
        for c in self.all:
            if c.name == name:
                return c
        raise KeyError(name)

    def event(self, reason, message):
        if self.events and self.events[-1]["reason"] == reason and \
                self.events[-1]["message"] == message:
            self.events[-1]["count"] += 1
            self.events[-1]["last"] = now()
            return
        log(f"event {reason}: {message}", pod=self.name)
        self.events.append({"reason": reason, "message": message, "count": 1, "first": now(),
                            "last": now()})
        del self.events[:-100]

    def json(self):
        return {
            "name": self.name, "namespace": self.namespace, "uid": self.uid,
            "node": self.node.name, "host_ip": self.node.ip, "phase": self.phase,
            "sandbox_id": self.sandbox_id, "deleted": self.deleted,
            "ready": bool(self.containers) and all(c.ready for c in self.containers),
            "init_containers": [c.json() for c in self.init],
            "containers": [c.json() for c in self.containers],
            "events": self.events,
        }

    # Downward API.
    def field(self, path):
        labels = self.meta.get("labels") or {}
        annotations = self.meta.get("annotations") or {}
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
        if m:
            return (labels if m.group(1) == "labels" else annotations).get(m.group(2), "")
        ip = self.node.ip if self.spec.get("hostNetwork") else (self.pod_ip or "")
        values = {
            "metadata.name": self.name, "metadata.namespace": self.namespace,
            "metadata.uid": self.uid, "spec.nodeName": self.node.name,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.hostIP": self.node.ip, "status.hostIPs": self.node.ip,
            "status.podIP": ip, "status.podIPs": ip,
        }
        if path not in values:
            raise PodError("CreateContainerConfigError", f"unsupported fieldRef {path}")
        return values[path]

    pod_ip = None


class Kubelet:
    def __init__(self, args):
        self.args = args
        self.scale = args.time_scale
        self.state_dir = os.path.abspath(args.state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        self.manifest = args.manifest
        self.docs = load_manifests(args.manifest)
        self.node = Node(args, self.docs)
        self.namespace = args.namespace
        self.channel = grpc.insecure_channel("unix://" + args.socket)
        self.rt = rpc.RuntimeServiceStub(self.channel)
        self.img = rpc.ImageServiceStub(self.channel)
        self.lock = threading.RLock()
        self.actions = []
        self.pod = None
        self.stopping = False
        self.exit_code = None
        self.pods_created = 0
        self.handlers = 0  # control connections not answered yet

    # --- state ---
    def save(self):
        state = {"node": self.node.name, "manifest": self.manifest, "pid": os.getpid(),
                 "pods_created": self.pods_created, "time_scale": self.scale,
                 "pod": self.pod.json() if self.pod else None, "updated": now()}
        tmp = os.path.join(self.state_dir, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, os.path.join(self.state_dir, "state.json"))

    # --- images ---
    def import_images(self):
        for tar in self.args.image_archive or []:
            t0 = now()
            ctr = setting("WEFT_CTR") or "ctr"
            r = subprocess.run([ctr, "-a", self.args.socket, "-n", "k8s.io", "images", "import",
                                "--no-unpack", tar], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"kubelet: ctr images import {tar}: {r.stderr.strip()}")
            log(f"imported {tar} in {now() - t0:.1f}s: {r.stdout.strip()}")

    def ensure_image(self, pod, c):
        image = c.spec["image"]
        r = self.img.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=30)
        if r.image.id:
            return
        policy = c.spec.get("imagePullPolicy") or (
            "Always" if image.endswith(":latest") or ":" not in image.split("/")[-1]
            else "IfNotPresent")
        if policy == "Never":
            raise PodError("ErrImageNeverPull", f"image {image} is not present with pull "
                                                "policy of Never")
        try:
            self.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        except grpc.RpcError as e:
            raise PodError("ErrImagePull", f"{image}: {e.details()}") from None

    # --- volumes ---
    def pod_dir(self, pod):
        return os.path.join(self.state_dir, "pods", pod.uid)

    def setup_volumes(self, pod):
        vols = {}
        for v in pod.spec.get("volumes") or []:
            name = v["name"]
            vdir = lambda plugin: os.path.join(self.pod_dir(pod), "volumes", plugin, name)  # noqa
            if "hostPath" in v:
                path = self.node.host_path(v["hostPath"]["path"])
                check_host_path(path, v["hostPath"].get("type"))
                vols[name] = {"path": path, "ro": False}
            elif "emptyDir" in v:
                d = vdir("kubernetes.io~empty-dir")
                os.makedirs(d, exist_ok=True)
                os.chmod(d, 0o777)
                vols[name] = {"path": d, "ro": False}
            elif "secret" in v or "configMap" in v:
                kind = "secret" if "secret" in v else "configMap"
                src = v[kind]
                ref = src.get("secretName") if kind == "secret" else src.get("name")
                store = self.node.secrets if kind == "secret" else self.node.configmaps
                if ref not in store:
                    if src.get("optional"):
                        store = {ref: {}}
                    else:
                        raise PodError("FailedMount", f'MountVolume.SetUp failed for volume "{name}"'
                                                      f' : {kind} "{ref}" not found')
                files = self.project(store[ref], src.get("items"), ref, kind)
                d = vdir("kubernetes.io~" + kind.lower())
                atomic_write_dir(d, files, src.get("defaultMode", 0o644))
                vols[name] = {"path": d, "ro": True}
            elif "projected" in v:
                files = {}
                for s in v["projected"].get("sources") or []:
                    files.update(self.projected_source(pod, s))
                d = vdir("kubernetes.io~projected")
                atomic_write_dir(d, files, v["projected"].get("defaultMode", 0o644))
                vols[name] = {"path": d, "ro": True}
            elif "downwardAPI" in v:
                files = {i["path"]: (pod.field(i["fieldRef"]["fieldPath"]).encode(), i.get("mode"))
                         for i in v["downwardAPI"].get("items") or []}
                d = vdir("kubernetes.io~downward-api")
                atomic_write_dir(d, files, v["downwardAPI"].get("defaultMode", 0o644))
                vols[name] = {"path": d, "ro": True}
            else:
                raise PodError("FailedMount", f"volume {name}: unsupported volume type "
                                              f"{sorted(set(v) - {'name'})}")
        # What the ServiceAccount admission plugin adds and kubelet mounts in every container.
        if self.automount(pod):
            files = {k: (open(os.path.join(self.node.sa_dir, k), "rb").read(), None)
                     for k in ("token", "ca.crt", "namespace")
                     if os.path.exists(os.path.join(self.node.sa_dir, k))}
            d = os.path.join(self.pod_dir(pod), "volumes", "kubernetes.io~projected",
                             "kube-api-access")
            atomic_write_dir(d, files, 0o644)
            vols["kube-api-access"] = {"path": d, "ro": True}
        pod.volume_dirs = vols

    def automount(self, pod):
        return pod.spec.get("automountServiceAccountToken", True) is not False and \
            bool(self.node.sa_dir)

    def project(self, data, items, ref, kind):
        if not items:
            return {k: (v, None) for k, v in data.items()}
        out = {}
        for i in items:
            if i["key"] not in data:
                raise PodError("FailedMount", f'{kind} "{ref}" has no key "{i["key"]}"')
            out[i["path"]] = (data[i["key"]], i.get("mode"))
        return out

    def projected_source(self, pod, s):
        if "secret" in s or "configMap" in s:
            kind = "secret" if "secret" in s else "configMap"
            store = self.node.secrets if kind == "secret" else self.node.configmaps
            name = s[kind]["name"]
            if name not in store:
                if s[kind].get("optional"):
                    return {}
                raise PodError("FailedMount", f'{kind} "{name}" not found')
            return self.project(store[name], s[kind].get("items"), name, kind)
        if "downwardAPI" in s:
            return {i["path"]: (pod.field(i["fieldRef"]["fieldPath"]).encode(), i.get("mode"))
                    for i in s["downwardAPI"].get("items") or []}
        if "serviceAccountToken" in s:
            if not self.node.sa_dir:
                raise PodError("FailedMount", "serviceAccountToken: no --service-account-dir")
            tok = open(os.path.join(self.node.sa_dir, "token"), "rb").read()
            return {s["serviceAccountToken"]["path"]: (tok, None)}
        raise PodError("FailedMount", f"unsupported projected source {sorted(s)}")

    # --- sandbox ---
    def run_sandbox(self, pod):
        spec = pod.spec
        host_net = bool(spec.get("hostNetwork"))
        ns = pb.NamespaceOption(
            network=pb.NODE if host_net else pb.POD,
            pid=pb.NODE if spec.get("hostPID") else (
                pb.POD if spec.get("shareProcessNamespace") else pb.CONTAINER),
            ipc=pb.NODE if spec.get("hostIPC") else pb.POD)
        psc = spec.get("securityContext") or {}
        privileged = any((c.spec.get("securityContext") or {}).get("privileged") for c in pod.all)
        sc = pb.LinuxSandboxSecurityContext(namespace_options=ns, privileged=privileged,
                                            seccomp=pb.SecurityProfile(
                                                profile_type=pb.SecurityProfile.Unconfined),
                                            seccomp_profile_path="unconfined")
        if "runAsUser" in psc:
            sc.run_as_user.value = psc["runAsUser"]
        labels = dict(pod.meta.get("labels") or {})
        labels.update({"io.kubernetes.pod.name": pod.name,
                       "io.kubernetes.pod.namespace": pod.namespace,
                       "io.kubernetes.pod.uid": pod.uid})
        log_dir = os.path.join(self.state_dir, "logs", f"{pod.namespace}_{pod.name}_{pod.uid}")
        os.makedirs(log_dir, exist_ok=True)
        pod.log_dir = log_dir
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=pod.name, namespace=pod.namespace, uid=pod.uid,
                                           attempt=pod.sandbox_attempt),
            # kubelet sets no hostname for a host-network pod (it has the node's UTS namespace).
            hostname="" if host_net else pod.name[:63],
            log_directory=log_dir, labels=labels,
            annotations={k: str(v) for k, v in (pod.meta.get("annotations") or {}).items()},
            linux=pb.LinuxPodSandboxConfig(
                security_context=sc,
                sysctls={s["name"]: str(s["value"]) for s in psc.get("sysctls") or []}))
        pod.sandbox_config = config
        r = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120)
        pod.sandbox_id = r.pod_sandbox_id
        st = self.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.sandbox_id),
                                      timeout=30)
        pod.pod_ip = self.node.ip if host_net else st.status.network.ip
        pod.event("SandboxReady", f"sandbox {pod.sandbox_id[:13]} ready")

    # --- containers ---
    def env(self, pod, c):
        out = {}
        if self.node.api_server:
            host, _, port = self.node.api_server.rpartition(":")
            out.update({
                "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": port,
                f"KUBERNETES_PORT_{port}_TCP_ADDR": host})
        for src in c.spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, store in (("secretRef", self.node.secrets),
                                ("configMapRef", self.node.configmaps)):
                if kind in src:
                    name = src[kind]["name"]
                    if name not in store:
                        if src[kind].get("optional"):
                            continue
                        raise PodError("CreateContainerConfigError", f'{kind} "{name}" not found')
                    for k, v in store[name].items():
                        out[prefix + k] = v.decode()
        for e in c.spec.get("env") or []:
            if "value" in e:
                out[e["name"]] = expand(str(e["value"]), out)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    out[e["name"]] = pod.field(vf["fieldRef"]["fieldPath"])
                elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    kind = "secretKeyRef" if "secretKeyRef" in vf else "configMapKeyRef"
                    ref = vf[kind]
                    store = self.node.secrets if kind == "secretKeyRef" else self.node.configmaps
                    data = store.get(ref["name"])
                    if data is None or ref["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise PodError("CreateContainerConfigError",
                                       f'{"secret" if kind == "secretKeyRef" else "configmap"} '
                                       f'"{ref["name"]}" (key "{ref["key"]}") not found')
                    out[e["name"]] = data[ref["key"]].decode()
                elif "resourceFieldRef" in vf:
                    rf = vf["resourceFieldRef"]
                    kind, _, res = rf["resource"].partition(".")
                    val = ((c.spec.get("resources") or {}).get(kind) or {}).get(res)
                    if val is None:
                        val = "0"
                    div = quantity(rf.get("divisor", "1"))
                    out[e["name"]] = str(int(-(-quantity(val) // div)))
            else:
                out[e["name"]] = ""
        return out

    def mounts(self, pod, c):
        mounts = []
        for m in c.spec.get("volumeMounts") or []:
            v = pod.volume_dirs.get(m["name"])
            if v is None:
                raise PodError("CreateContainerConfigError",
                               f'volumeMount "{m["name"]}" has no volume')
            host = v["path"]
            if m.get("subPath"):
                host = os.path.join(host, m["subPath"])
                os.makedirs(host, exist_ok=True)
            mounts.append(pb.Mount(container_path=m["mountPath"], host_path=host,
                                   readonly=bool(m.get("readOnly")) or v["ro"],
                                   propagation=PROPAGATION[m.get("mountPropagation")]))
        paths = {m.container_path for m in mounts}
        if "kube-api-access" in pod.volume_dirs and SA_MOUNT not in paths:
            mounts.append(pb.Mount(container_path=SA_MOUNT,
                                   host_path=pod.volume_dirs["kube-api-access"]["path"],
                                   readonly=True))
        # The termination message file kubelet mounts at terminationMessagePath.
        tpath = c.spec.get("terminationMessagePath", "/dev/termination-log")
        if tpath:
            d = os.path.join(self.pod_dir(pod), "containers", c.name)
            os.makedirs(d, exist_ok=True)
            c.term_file = os.path.join(d, f"termination-{c.restarts}")
            open(c.term_file, "w").close()
            os.chmod(c.term_file, 0o666)
            mounts.append(pb.Mount(container_path=tpath, host_path=c.term_file))
        return mounts

    def start_container(self, pod, c):
        self.ensure_image(pod, c)
        env = self.env(pod, c)
        command = [expand(a, env) for a in c.spec.get("command") or []]
        cargs = [expand(a, env) for a in c.spec.get("args") or []]
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=c.name, attempt=c.restarts),
            image=pb.ImageSpec(image=c.spec["image"]),
            command=command, args=cargs, working_dir=c.spec.get("workingDir", ""),
            envs=[pb.KeyValue(key=k, value=v) for k, v in env.items()],
            mounts=self.mounts(pod, c),
            labels={"io.kubernetes.container.name": c.name, "io.kubernetes.pod.name": pod.name,
                    "io.kubernetes.pod.namespace": pod.namespace,
                    "io.kubernetes.pod.uid": pod.uid},
            annotations={"io.kubernetes.container.restartCount": str(c.restarts)},
            log_path=f"{c.name}/{c.restarts}.log",
            stdin=bool(c.spec.get("stdin")), tty=bool(c.spec.get("tty")),
            linux=pb.LinuxContainerConfig(resources=resources(c.spec),
                                          security_context=security_context(pod.spec, c.spec)))
        try:
            r = self.rt.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=pod.sandbox_id, config=config, sandbox_config=pod.sandbox_config),
                timeout=60)
        except grpc.RpcError as e:
            raise PodError("CreateContainerError", e.details()) from None
        old = c.id
        c.id = r.container_id
        try:
            self.rt.StartContainer(pb.StartContainerRequest(container_id=c.id), timeout=60)
        except grpc.RpcError as e:
            # runc failed (e.g. a mount or device it may not use): the container is not
            # running; kubelet reports RunContainerError and backs off.
            c.state, c.reason, c.message = "waiting", "RunContainerError", e.details()
            c.last_state = {"reason": "StartError", "message": e.details(), "exit_code": 128}
            self.crashed(pod, c, "StartError")
            return
        if old:
            self.remove_container(old)
        c.state, c.reason, c.message, c.exit_code = "running", "", "", None
        c.started_at = now()
        c.ready = False
        c.started = "startupProbe" not in c.spec
        c.probes = {}
        c.kill_reason = None
        pod.event("Started", f"Started container {c.name} (attempt {c.restarts})")

    def remove_container(self, cid):
        try:
            self.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
        except grpc.RpcError:
            pass

    def stop_container(self, c, grace):
        if not c.id:
            return
        try:
            self.rt.StopContainer(pb.StopContainerRequest(container_id=c.id, timeout=int(grace)),
                                  timeout=grace + 30)
        except grpc.RpcError as e:
            log(f"StopContainer {c.name}: {e.details()}")

    def log_tail(self, pod, c, attempt=None):
        path = os.path.join(pod.log_dir, c.name, f"{c.restarts if attempt is None else attempt}.log")
        try:
            lines = open(path, errors="replace").read().splitlines()
        except OSError:
            return ""
        msgs = [ln.split(" ", 3)[3] if ln.count(" ") >= 3 else ln for ln in lines]
        text = "\n".join(msgs[-FALLBACK_LOG_LINES:])
        return text[-FALLBACK_LOG_BYTES:]

    def observe(self, pod, c):
        """ContainerStatus of a running container: did it exit?"""
        try:
            st = self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=c.id),
                                         timeout=30).status
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                st = None
            else:
                raise
        if st is not None and st.state in (pb.CONTAINER_RUNNING, pb.CONTAINER_CREATED):
            return
        code = st.exit_code if st is not None else 137
        reason = (st.reason if st is not None else "") or ("Completed" if code == 0 else "Error")
        msg = ""
        if c.term_file:
            try:
                msg = open(c.term_file, errors="replace").read()[:4096]
            except OSError:
                pass
        if not msg and code != 0 and \
                c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            msg = self.log_tail(pod, c)
        c.state, c.exit_code, c.finished_at = "terminated", code, now()
        c.reason, c.message = reason, msg
        c.ready = False
        c.last_state = {"reason": c.kill_reason or reason, "exit_code": code, "message": msg,
                        "started_at": c.started_at, "finished_at": c.finished_at,
                        "attempt": c.restarts, "log_tail": self.log_tail(pod, c)}
        pod.event("Terminated", f"container {c.name} exited with {code} ({reason})"
                  + (f", killed: {c.kill_reason}" if c.kill_reason else ""))
        if c.init and code == 0:
            c.done = True
            return
        policy = pod.spec.get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            self.crashed(pod, c, reason)

    def crashed(self, pod, c, reason):
        """The container will be restarted after kubelet's back-off (CrashLoopBackOff)."""
        ran = now() - (c.started_at or now())
        if ran > BACKOFF_RESET * self.scale:
            c.backoff = 0.0
        c.backoff = BACKOFF_INITIAL if not c.backoff else min(c.backoff * 2, BACKOFF_MAX)
        c.backoff_until = now() + c.backoff * self.scale
        c.state, c.reason = "waiting", "CrashLoopBackOff"
        c.message = (f"back-off {c.backoff:.0f}s restarting failed container={c.name} "
                     f"pod={pod.name} ({reason})")

    # --- probes ---
    def probe(self, pod, c, kind):
        spec = c.spec.get(kind)
        if not spec:
            return None
        p = c.probes.setdefault(kind, {"successes": 0, "failures": 0, "total": 0,
                                       "last": None, "message": "",
                                       "next": c.started_at + spec.get("initialDelaySeconds", 0)
                                       * self.scale})
        if now() < p["next"]:
            return None
        p["next"] = now() + spec.get("periodSeconds", 10) * self.scale
        ok, msg = self.run_probe(pod, c, spec)
        p["total"] += 1
        p["last"], p["message"], p["at"] = ok, msg[:1024], now()
        if ok:
            p["successes"] += 1
            p["failures"] = 0
        else:
            p["failures"] += 1
            p["successes"] = 0
        return p

    def run_probe(self, pod, c, spec):
        timeout = spec.get("timeoutSeconds", 1)
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                port = self.port(c, h["port"])
                host = h.get("host") or pod.pod_ip or self.node.ip
                cls = http.client.HTTPSConnection if h.get("scheme") == "HTTPS" \
                    else http.client.HTTPConnection
                kw = {}
                if cls is http.client.HTTPSConnection:
                    import ssl
                    kw["context"] = ssl._create_unverified_context()
                conn = cls(host, port, timeout=timeout, **kw)
                headers = {"User-Agent": PROBE_USER_AGENT, "Accept": "*/*"}
                for hh in h.get("httpHeaders") or []:
                    headers[hh["name"]] = hh["value"]
                conn.request("GET", h.get("path", "/"), headers=headers)
                r = conn.getresponse()
                body = r.read(10 * 1024).decode(errors="replace")
                conn.close()
                return 200 <= r.status < 400, f"HTTP {r.status}: {body}"
            if "tcpSocket" in spec:
                t = spec["tcpSocket"]
                s = socket.create_connection((t.get("host") or pod.pod_ip or self.node.ip,
                                              self.port(c, t["port"])), timeout=timeout)
                s.close()
                return True, "connected"
            if "exec" in spec:
                r = self.rt.ExecSync(pb.ExecSyncRequest(container_id=c.id,
                                                        cmd=spec["exec"]["command"],
                                                        timeout=timeout), timeout=timeout + 10)
                out = (r.stdout + r.stderr).decode(errors="replace")
                return r.exit_code == 0, f"exit {r.exit_code}: {out}"
            return False, f"unsupported probe {sorted(spec)}"
        except (OSError, http.client.HTTPException) as e:
            return False, f"{type(e).__name__}: {e}"
        except grpc.RpcError as e:
            return False, f"exec: {e.details()}"

    @staticmethod
    def port(c, port):
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return p["containerPort"]
        raise OSError(f"no container port named {port}")

    def run_probes(self, pod, c):
        if c.state != "running":
            return
        if not c.started:
            p = self.probe(pod, c, "startupProbe")
            if p is None:
                return
            if p["last"] and p["successes"] >= c.spec["startupProbe"].get("successThreshold", 1):
                c.started = True
                pod.event("Started", f"startup probe of {c.name} succeeded")
            elif p["failures"] >= c.spec["startupProbe"].get("failureThreshold", 3):
                self.kill(pod, c, f"Startup probe failed: {p['message']}")
            return
        p = self.probe(pod, c, "livenessProbe")
        if p is not None and p["failures"] >= c.spec["livenessProbe"].get("failureThreshold", 3):
            self.kill(pod, c, f"Liveness probe failed: {p['message']}")
            return
        if "readinessProbe" not in c.spec:
            c.ready = True
            return
        p = self.probe(pod, c, "readinessProbe")
        if p is None:
            return
        spec = c.spec["readinessProbe"]
        was = c.ready
        if p["last"] and p["successes"] >= spec.get("successThreshold", 1):
            c.ready = True
        elif not p["last"] and p["failures"] >= spec.get("failureThreshold", 3):
            c.ready = False
        h = c.readiness_history
        if len(h) < 20 or was != c.ready or p["total"] % 10 == 0:
            h.append({"at": now(), "ok": p["last"], "ready": c.ready, "attempt": c.restarts,
                      "message": p["message"][:512]})
            del h[:-200]
        if was != c.ready:
            pod.event("Ready" if c.ready else "Unhealthy",
                      f"{c.name} ready={c.ready}: {p['message'][:200]}")

    def kill(self, pod, c, why):
        pod.event("Killing", f"container {c.name}: {why}")
        c.kill_reason = why
        self.stop_container(c, pod.spec.get("terminationGracePeriodSeconds", 30))
        self.observe(pod, c)

    # --- the sync loop ---
    def new_pod(self):
        meta, spec = pod_template(pick_workload(self.docs, self.args.kind, self.args.name,
                                                self.node.name))
        self.pod = Pod(meta, spec, self.node, self.namespace)
        self.pods_created += 1
        log(f"pod {self.pod.name} ({self.pod.uid}) created", node=self.node.name)

    def sync(self):
        pod = self.pod
        if pod is None or pod.deleted:
            return
        try:
            if not pod.volumes_ready:
                self.setup_volumes(pod)
                pod.volumes_ready = True
            if pod.sandbox_id is None:
                self.run_sandbox(pod)
            for c in pod.init:
                if c.done:
                    continue
                self.step(pod, c)
                return  # init containers one at a time, in order
            pod.phase = "Running"
            for c in pod.containers:
                self.step(pod, c)
                self.run_probes(pod, c)
            policy = pod.spec.get("restartPolicy", "Always")
            if policy != "Always" and all(c.state == "terminated" for c in pod.containers):
                failed = [c for c in pod.containers if c.exit_code != 0]
                if policy == "Never" or not failed:
                    pod.phase = "Failed" if failed else "Succeeded"
                    self.exit_code = failed[-1].exit_code if failed else 0
        except PodError as e:
            pod.event(e.reason, e.message)
            if pod.phase == "Pending":
                for c in pod.all:
                    if c.state == "waiting":
                        c.reason, c.message = e.reason, e.message

    def step(self, pod, c):
        if c.state == "running":
            self.observe(pod, c)
            return
        if c.state == "terminated" and (c.done or not self.will_restart(pod, c)):
            return
        if now() < c.backoff_until:
            return
        if c.state == "terminated" or c.reason in ("CrashLoopBackOff", "RunContainerError"):
            c.restarts += 1
        try:
            self.start_container(pod, c)
        except PodError as e:
            c.state, c.reason, c.message = "waiting", e.reason, e.message
            pod.event(e.reason, f"{c.name}: {e.message}")
            if c.restarts:
                pass

    def will_restart(self, pod, c):
        policy = pod.spec.get("restartPolicy", "Always")
        return policy == "Always" or (policy == "OnFailure" and c.exit_code != 0) or \
            (c.init and c.exit_code != 0 and policy != "Never")

    def delete_pod(self):
        pod = self.pod
        if pod is None or pod.deleted:
            return {"deleted": None}
        grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        pod.event("Killing", f"deleting pod (grace {grace}s)")
        threads = []
        for c in pod.containers + pod.init:
            if c.state == "running":
                pre = (c.spec.get("lifecycle") or {}).get("preStop") or {}
                if "exec" in pre:
                    try:
                        self.rt.ExecSync(pb.ExecSyncRequest(container_id=c.id,
                                                            cmd=pre["exec"]["command"],
                                                            timeout=grace), timeout=grace + 10)
                    except grpc.RpcError as e:
                        pod.event("FailedPreStopHook", e.details())
                t = threading.Thread(target=self.stop_container, args=(c, grace))
                t.start()
                threads.append(t)
        for t in threads:
            t.join()
        for c in pod.all:
            if c.state == "running":
                c.kill_reason = "pod deleted"
                self.observe(pod, c)
        if pod.sandbox_id:
            for call, req in ((self.rt.StopPodSandbox, pb.StopPodSandboxRequest),
                              (self.rt.RemovePodSandbox, pb.RemovePodSandboxRequest)):
                try:
                    call(req(pod_sandbox_id=pod.sandbox_id), timeout=120)
                except grpc.RpcError as e:
                    pod.event("FailedKillPod", e.details())
        pod.deleted = True
        pod.phase = "Deleted"
        for c in pod.all:
            c.ready = False
        shutil.rmtree(os.path.join(self.pod_dir(pod), "volumes"), ignore_errors=True)
        log(f"pod {pod.name} deleted")
        return {"deleted": pod.name}

    def handle(self, req):
        cmd = req.get("cmd")
        if cmd == "restart-container":
            c = self.pod.container(req["name"])
            if c.state != "running":
                return {"error": f"container {c.name} is {c.state}"}
            before = c.restarts
            self.kill(self.pod, c, "restart-container (asked through the control socket)")
            return {"name": c.name, "restart_count_before": before}
        if cmd == "delete-pod":
            return self.delete_pod()
        if cmd == "create-pod":
            if self.pod is not None and not self.pod.deleted:
                return {"error": f"pod {self.pod.name} still exists: delete-pod first"}
            if req.get("manifest"):
                self.manifest = req["manifest"]
                self.docs = load_manifests(self.manifest)
                self.node = Node(self.args, self.docs)
            self.new_pod()
            return {"created": self.pod.name, "uid": self.pod.uid}
        if cmd == "stop":
            self.stopping = True
            return self.delete_pod()
        return {"error": f"unknown command {cmd}"}

    def loop(self):
        tick = max(0.05, min(1.0, 1.0 * self.scale))
        while True:
            with self.lock:
                actions, self.actions = self.actions, []
                for req, done in actions:
                    try:
                        done["reply"] = self.handle(req)
                    except Exception as e:  # reply with it; the loop keeps going
                        done["reply"] = {"error": f"{type(e).__name__}: {e}"}
                    done["event"].set()
                if not self.stopping:
                    try:
                        self.sync()
                    except grpc.RpcError as e:
                        if self.pod:
                            self.pod.event("RuntimeError", f"{e.code().name}: {e.details()}")
                    except Exception:
                        traceback.print_exc()
                self.save()
                if self.stopping:
                    return 0
                if self.exit_code is not None:
                    self.delete_pod()
                    self.save()
                    return self.exit_code
            time.sleep(tick)

    def request(self, req, timeout=600):
        done = {"event": threading.Event()}
        with self.lock:
            self.actions.append((req, done))
        if not done["event"].wait(timeout):
            return {"error": "timed out"}
        return done["reply"]


class Control(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def serve(kubelet):
    path = os.path.join(kubelet.state_dir, "kubelet.sock")
    if os.path.exists(path):
        os.remove(path)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            with kubelet.lock:
                kubelet.handlers += 1
            try:
                req = json.loads(self.rfile.readline())
                reply = kubelet.request(req)
                self.wfile.write((json.dumps(reply) + "\n").encode())
            finally:
                with kubelet.lock:
                    kubelet.handlers -= 1

    srv = Control(path, Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def cmd_run(args):
    k = Kubelet(args)
    k.import_images()
    k.new_pod()
    k.save()
    serve(k)

    def term(signum, frame):
        threading.Thread(target=lambda: k.request({"cmd": "stop"}), daemon=True).start()
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, term)
    log("running", node=k.node.name, state=os.path.join(k.state_dir, "state.json"))
    code = k.loop()
    deadline = now() + 5  # let the control connections (e.g. `stop`) get their answers
    while k.handlers and now() < deadline:
        time.sleep(0.02)
    return code


def control(state_dir, req, timeout=600):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(os.path.join(state_dir, "kubelet.sock"))
    s.sendall((json.dumps(req) + "\n").encode())
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


def read_state(state_dir):
    with open(os.path.join(state_dir, "state.json")) as f:
        return json.load(f)


def find_container(state, name):
    pod = state.get("pod") or {}
    for c in (pod.get("init_containers") or []) + (pod.get("containers") or []):
        if c["name"] == name:
            return c
    sys.exit(f"kubelet: no container {name} in the pod")


def main():
    p = argparse.ArgumentParser(description="mini kubelet over containerd's CRI, for weft's tests")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--socket", default=os.environ.get("CONTAINERD_ADDRESS"), required=False)
    r.add_argument("--manifest", required=True, help="helm template output (YAML stream)")
    r.add_argument("--kind", default="DaemonSet", help="DaemonSet, Job or Pod")
    r.add_argument("--name", default="", help="the workload's name (default: the first)")
    r.add_argument("--namespace", default="kube-system")
    r.add_argument("--node", required=True, help="this node's name (spec.nodeName)")
    r.add_argument("--node-ip", required=True, help="status.hostIP, the probes' default host")
    r.add_argument("--state-dir", required=True)
    r.add_argument("--host-root", help="hostPath P is DIR/P (but --real-host-path ones)")
    r.add_argument("--real-host-path", action="append",
                   help="hostPath prefixes left as they are (default /dev, /proc, /sys)")
    r.add_argument("--secret", action="append", metavar="NAME=DIR|JSON",
                   help="a Secret: a dir of key files, or a JSON object of strings")
    r.add_argument("--service-account-dir",
                   help="token, ca.crt, namespace: the service account volume's files")
    r.add_argument("--api-server", help="HOST:PORT for KUBERNETES_SERVICE_HOST/PORT")
    r.add_argument("--image-archive", action="append", help="ctr images import this first")
    r.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply probe periods/initial delays and back-offs (e.g. 0.1)")
    for name in ("status", "delete-pod", "stop"):
        sub.add_parser(name).add_argument("--state-dir", required=True)
    c = sub.add_parser("create-pod")
    c.add_argument("--state-dir", required=True)
    c.add_argument("--manifest")
    rc = sub.add_parser("restart-container")
    rc.add_argument("name")
    rc.add_argument("--state-dir", required=True)
    e = sub.add_parser("exec")
    e.add_argument("name")
    e.add_argument("--state-dir", required=True)
    e.add_argument("--socket", default=os.environ.get("CONTAINERD_ADDRESS"))
    e.add_argument("--timeout", type=int, default=60)
    # (the command after "--" is split off before parsing, see below)
    lg = sub.add_parser("logs")
    lg.add_argument("name")
    lg.add_argument("--state-dir", required=True)
    lg.add_argument("--attempt", type=int)
    argv = sys.argv[1:]
    command = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    args = p.parse_args(argv)

    if args.cmd == "run":
        if not args.socket:
            p.error("no --socket and no $CONTAINERD_ADDRESS")
        sys.exit(cmd_run(args))
    if args.cmd == "status":
        print(json.dumps(read_state(args.state_dir), indent=1))
        return
    if args.cmd == "exec":
        st = read_state(args.state_dir)
        ctr = find_container(st, args.name)
        cmd = command
        if not cmd:
            p.error("exec: no command after --")
        sock = args.socket
        if not sock:
            sys.exit("kubelet: exec needs --socket or $CONTAINERD_ADDRESS")
        rt = rpc.RuntimeServiceStub(grpc.insecure_channel("unix://" + sock))
        try:
            out = rt.ExecSync(pb.ExecSyncRequest(container_id=ctr["id"], cmd=cmd,
                                                 timeout=args.timeout), timeout=args.timeout + 10)
        except grpc.RpcError as err:
            sys.exit(f"kubelet: exec: {err.code().name}: {err.details()}")
        sys.stdout.buffer.write(out.stdout)
        sys.stderr.buffer.write(out.stderr)
        sys.exit(out.exit_code)
    if args.cmd == "logs":
        st = read_state(args.state_dir)
        pod = st["pod"]
        ctr = find_container(st, args.name)
        attempt = ctr["restart_count"] if args.attempt is None else args.attempt
        pattern = os.path.join(args.state_dir, "logs",
                               f"{pod['namespace']}_{pod['name']}_{pod['uid']}", args.name,
                               f"{attempt}.log")
        for path in glob.glob(pattern):
            for line in open(path, errors="replace"):
                parts = line.rstrip("\n").split(" ", 3)
                print(parts[3] if len(parts) == 4 else line.rstrip("\n"))
        return
    req = {"cmd": args.cmd}
    if args.cmd == "restart-container":
        req["name"] = args.name
    if args.cmd == "create-pod" and args.manifest:
        req["manifest"] = os.path.abspath(args.manifest)
    reply = control(args.state_dir, req)
    print(json.dumps(reply))
    if "error" in reply:
        sys.exit(1)


if __name__ == "__main__":
    main()
