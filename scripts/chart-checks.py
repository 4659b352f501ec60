#!/usr/bin/env python3
"""Checks of the Helm chart that scripts/check-chart.sh runs (with PyYAML from its venv).

  chart-checks.py readme CHART [--write]
      The values table in CHART/README.md (between `<!-- values:begin -->` and
      `<!-- values:end -->`) is generated from values.schema.json (every leaf value, its
      description) and values.yaml (its default). Without --write: fail if the README differs
      (and say how to regenerate it); with --write: rewrite it.

  chart-checks.py security FILE...
      Each rendered manifest's weft DaemonSet router container can open the TAP device and set
      its sysctls: privileged, or root with NET_ADMIN, /dev/net/tun mounted from a hostPath
      CharDevice, and WEFT_PROC_SYS_NET naming a writable mount of the host's /proc/sys/net.
      (Its `--datapath none` routers need neither.) Exit 1 naming what is missing.
"""

import json
import sys
from pathlib import Path

import yaml

BEGIN = "<!-- values:begin -->"
END = "<!-- values:end -->"


def leaves(schema, prefix=""):
    """(path, schema) of every value: objects with `properties` are walked, the rest are leaves."""
    for name, sub in schema.get("properties", {}).items():
        if name == "global":
            continue
        path = f"{prefix}{name}"
        if "properties" in sub:
            yield from leaves(sub, path + ".")
        else:
            yield path, sub


def default_of(values, path):
    node = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return "(none)"
        node = node[part]
    return "`" + json.dumps(node, separators=(", ", ": ")) + "`"


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def values_table(chart):
    schema = json.loads((chart / "values.schema.json").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text())
    rows = ["| value | default | meaning |", "|---|---|---|"]
    missing = []
    for path, sub in leaves(schema):
        desc = sub.get("description")
        if not desc:
            missing.append(path)
            continue
        enum = sub.get("enum")
        if enum:
            desc += " One of " + ", ".join(f"`{e}`" for e in enum) + "."
        rows.append(f"| `{path}` | {cell(default_of(values, path))} | {cell(desc)} |")
    if missing:
        sys.exit("chart-checks: values.schema.json: no description for " + ", ".join(missing))
    return "\n".join(rows) + "\n"


def readme(chart, write):
    path = chart / "README.md"
    text = path.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"chart-checks: {path}: no {BEGIN} … {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    want = f"{head}{BEGIN}\n{values_table(chart)}{END}{tail}"
    if want == text:
        return
    if write:
        path.write_text(want)
        print(f"chart-checks: wrote the values table of {path}")
        return
    sys.exit(
        f"chart-checks: the values table in {path} does not match values.schema.json and "
        f"values.yaml: regenerate it with `{sys.executable} {sys.argv[0]} readme {chart} --write`"
    )


def router_problems(ds):
    spec = ds["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec.get("containers", [])}
    router = containers.get("weft")
    if router is None:
        return ["no container named weft"]
    env = {e["name"]: e.get("value") for e in router.get("env", [])}
    if env.get("WEFT_DATAPATH") == "none":
        return []
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in router.get("volumeMounts", [])}
    sc = router.get("securityContext") or {}
    problems = []
    if not spec.get("hostNetwork"):
        problems.append("hostNetwork is off: the router's sysctls and bridge would be the pod's")

    def host_path(mount_path):
        m = mounts.get(mount_path)
        if m is None:
            return None, None
        return m, (volumes.get(m["name"]) or {}).get("hostPath")

    if sc.get("privileged"):
        return problems
    if sc.get("runAsUser", 0) != 0 or sc.get("runAsNonRoot"):
        problems.append("not root: the sysctls and the state in root-owned host directories need uid 0")
    caps = sc.get("capabilities") or {}
    dropped = set(caps.get("drop") or [])
    added = set(caps.get("add") or [])
    if "NET_ADMIN" not in added and ("ALL" in dropped or "NET_ADMIN" in dropped):
        problems.append("no NET_ADMIN: cannot create the TAP device (TUNSETIFF), links or nftables tables")
    m, hp = host_path("/dev/net/tun")
    if m is None or not hp or hp.get("path") != "/dev/net/tun" or hp.get("type") != "CharDevice":
        problems.append("no /dev/net/tun from a hostPath CharDevice: cannot open the TAP device")
    sysctl_dir = env.get("WEFT_PROC_SYS_NET") or "/proc/sys/net"
    m, hp = host_path(sysctl_dir)
    if m is None or not hp or hp.get("path") != "/proc/sys/net":
        problems.append(
            f"WEFT_PROC_SYS_NET={sysctl_dir} is not a mount of the host's /proc/sys/net: the "
            "runtime's /proc/sys is read-only, ip_forward cannot be set"
        )
    elif m.get("readOnly"):
        problems.append(f"{sysctl_dir} is mounted read-only: ip_forward cannot be set")
    return problems


def security(files):
    failed = False
    for f in files:
        checked = 0
        for doc in yaml.safe_load_all(Path(f).read_text()):
            if not doc or doc.get("kind") != "DaemonSet":
                continue
            checked += 1
            for p in router_problems(doc):
                print(f"chart-checks: {f}: {doc['metadata']['name']}: {p}", file=sys.stderr)
                failed = True
        if checked == 0:
            print(f"chart-checks: {f}: no DaemonSet", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


def main(argv):
    if len(argv) >= 2 and argv[0] == "readme":
        readme(Path(argv[1]), "--write" in argv[2:])
    elif len(argv) >= 2 and argv[0] == "security":
        security(argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
