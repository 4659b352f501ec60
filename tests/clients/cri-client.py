#!/usr/bin/env python3
"""A small CRI (runtime.v1) client: what kubelet asks containerd for pods, minus containers.

Pods are sandboxes only (the pause image); RunPodSandbox makes containerd call CNI ADD,
StopPodSandbox and RemovePodSandbox call CNI DEL. Tests reach a pod through its network
namespace, the "netns" field of the JSON this prints (`nsenter --net=NETNS ping ...`).

  cri-client.py [--socket SOCK] [--timeout S] COMMAND [ARGS]
    version                      runtime name/version and CRI status (network ready?)
    run NAME [--namespace NS] [--uid UID] [--port HOST:CONTAINER[/tcp|udp|sctp]]...
             [--log-dir DIR] [--label K=V]...
                                 RunPodSandbox, then PodSandboxStatus: prints the status
    status ID                    PodSandboxStatus
    stop ID                      StopPodSandbox (CNI DEL)
    remove ID                    RemovePodSandbox (CNI DEL again if the pod was not stopped)
    list                         ListPodSandbox: every pod's status, as a JSON list
    remove-all                   stop and remove every pod (cleanup)
    bench N                      N x (run, stop, remove): median/p99/max of each, in ms

Every command prints one JSON document on stdout; errors go to stderr with exit code 1 (2 for
usage). A pod status is {"id", "name", "namespace", "uid", "state" ("SANDBOX_READY" or
"SANDBOX_NOTREADY"), "ip", "additional_ips", "netns", "created_ns"}; run, stop and remove
add "elapsed_ms".

--socket defaults to $CONTAINERD_ADDRESS (containerd.sh start prints it). The stubs come
from $WEFT_CRI_STUBS, else the tool cache's cni-clients.env (tests/clients/setup.sh writes
it); when this Python lacks grpc, the script re-executes itself with $WEFT_CRI_PYTHON (the
cache's venv), so any python3 can run it.
"""
import argparse
import json
import os
import statistics
import sys
import time
import uuid

from cri_stubs import load  # noqa: E402

grpc, pb, rpc = load("cri-client")

PROTOCOLS = {"tcp": pb.TCP, "udp": pb.UDP, "sctp": pb.SCTP}


def ms(seconds):
    return round(seconds * 1000, 1)


def pod_json(status):
    net = status.network
    return {
        "id": status.id,
        "name": status.metadata.name,
        "namespace": status.metadata.namespace,
        "uid": status.metadata.uid,
        "state": pb.PodSandboxState.Name(status.state),
        "ip": net.ip,
        "additional_ips": [a.ip for a in net.additional_ips],
        "netns": "",  # filled in by Client.status()
        "created_ns": status.created_at,
    }


class Client:
    def __init__(self, socket, timeout):
        self.timeout = timeout
        self.channel = grpc.insecure_channel("unix://" + socket)
        self.rt = rpc.RuntimeServiceStub(self.channel)

    def status(self, pod_id):
        r = self.rt.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=self.timeout)
        out = pod_json(r.status)
        # The status proto has only the namespace *mode*; containerd puts the netns path in
        # the verbose "info" (as "netNamespacePath", and in the runtime spec).
        try:
            info = json.loads(r.info.get("info", "{}"))
        except ValueError:
            info = {}
        out["netns"] = info.get("netNamespacePath") or next(
            (n.get("path", "") for n in info.get("runtimeSpec", {}).get("linux", {})
             .get("namespaces", []) if n.get("type") == "network"), "")
        return out

    def run(self, args):
        ports = []
        for spec in args.port:
            proto = "tcp"
            if "/" in spec:
                spec, proto = spec.split("/", 1)
            host, _, container = spec.partition(":")
            ports.append(pb.PortMapping(protocol=PROTOCOLS[proto.lower()],
                                        container_port=int(container), host_port=int(host)))
        labels = dict(kv.split("=", 1) for kv in args.label)
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=args.name, namespace=args.namespace,
                                           uid=args.uid or str(uuid.uuid4()), attempt=0),
            hostname=args.name[:63],
            log_directory=args.log_dir or "",
            port_mappings=ports,
            labels=labels,
            linux=pb.LinuxPodSandboxConfig(),
        )
        t0 = time.perf_counter()
        r = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=self.timeout)
        elapsed = time.perf_counter() - t0
        out = self.status(r.pod_sandbox_id)
        out["elapsed_ms"] = ms(elapsed)
        return out

    def stop(self, pod_id):
        t0 = time.perf_counter()
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=self.timeout)
        return {"id": pod_id, "elapsed_ms": ms(time.perf_counter() - t0)}

    def remove(self, pod_id):
        t0 = time.perf_counter()
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                 timeout=self.timeout)
        return {"id": pod_id, "elapsed_ms": ms(time.perf_counter() - t0)}

    def ids(self):
        r = self.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=self.timeout)
        return [p.id for p in r.items]

    def list(self):
        out = []
        for pod_id in self.ids():
            try:
                out.append(self.status(pod_id))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:  # removed meanwhile
                    raise
        return out

    def remove_all(self):
        removed, errors = [], []
        for pod_id in self.ids():
            try:
                self.stop(pod_id)
                self.remove(pod_id)
                removed.append(pod_id)
            except grpc.RpcError as e:
                errors.append({"id": pod_id, "error": f"{e.code().name}: {e.details()}"})
        return {"removed": removed, "errors": errors, "left": len(self.ids())}

    def version(self):
        v = self.rt.Version(pb.VersionRequest(version="v1"), timeout=self.timeout)
        s = self.rt.Status(pb.StatusRequest(), timeout=self.timeout)
        return {
            "runtime_name": v.runtime_name,
            "runtime_version": v.runtime_version,
            "runtime_api_version": v.runtime_api_version,
            "conditions": {c.type: {"status": c.status, "reason": c.reason, "message": c.message}
                           for c in s.status.conditions},
        }

    def bench(self, n, log_dir):
        times = {"run": [], "stop": [], "remove": []}
        for i in range(n):
            args = argparse.Namespace(name=f"bench-{i}", namespace="bench", uid="", port=[],
                                      label=[], log_dir=log_dir)
            pod = self.run(args)
            times["run"].append(pod["elapsed_ms"])
            times["stop"].append(self.stop(pod["id"])["elapsed_ms"])
            times["remove"].append(self.remove(pod["id"])["elapsed_ms"])

        def summary(v):
            s = sorted(v)
            return {"median": round(statistics.median(s), 1),
                    "p99": s[max(0, -(-99 * len(s) // 100) - 1)], "max": s[-1]}
        return {"n": n, **{k: summary(v) for k, v in times.items()}}


def main():
    p = argparse.ArgumentParser(description="CRI runtime.v1 client for weft's tests")
    p.add_argument("--socket", default=os.environ.get("CONTAINERD_ADDRESS"),
                   help="containerd's gRPC socket (default $CONTAINERD_ADDRESS)")
    p.add_argument("--timeout", type=float, default=120, help="per-call timeout, seconds")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    r = sub.add_parser("run")
    r.add_argument("name")
    r.add_argument("--namespace", default="default")
    r.add_argument("--uid", default="")
    r.add_argument("--port", action="append", default=[], metavar="HOST:CONTAINER[/PROTO]")
    r.add_argument("--label", action="append", default=[], metavar="K=V")
    r.add_argument("--log-dir", default="")
    for name in ("status", "stop", "remove"):
        sub.add_parser(name).add_argument("id")
    sub.add_parser("list")
    sub.add_parser("remove-all")
    b = sub.add_parser("bench")
    b.add_argument("n", type=int)
    b.add_argument("--log-dir", default="")
    args = p.parse_args()
    if not args.socket:
        p.error("no --socket and no $CONTAINERD_ADDRESS")
    c = Client(args.socket, args.timeout)
    try:
        if args.cmd == "version":
            out = c.version()
        elif args.cmd == "run":
            out = c.run(args)
        elif args.cmd == "status":
            out = c.status(args.id)
        elif args.cmd == "stop":
            out = c.stop(args.id)
        elif args.cmd == "remove":
            out = c.remove(args.id)
        elif args.cmd == "list":
            out = c.list()
        elif args.cmd == "remove-all":
            out = c.remove_all()
            if out["errors"] or out["left"]:
                print(json.dumps(out), file=sys.stderr)
                sys.exit(1)
        else:
            out = c.bench(args.n, args.log_dir)
    except grpc.RpcError as e:
        sys.exit(f"cri-client: {args.cmd}: {e.code().name}: {e.details()}")
    print(json.dumps(out, indent=None))


if __name__ == "__main__":
    main()
