#!/usr/bin/python3 -IS
"""Runs the CNI verbs cnitool 1.1.2 lacks (GC and STATUS, spec 1.1) over a conflist, the way
libcni 1.2's GCNetworkList / GetStatusNetworkList do: each plugin in order, run from CNI_PATH by
its "type", with CNI_COMMAND and CNI_PATH in the environment and on stdin the plugin's own
config plus the list's "name" and "cniVersion" (and, for GC, "cni.dev/valid-attachments").
VERSION works too.

  cni-call.py VERB CONFLIST [--cni-path DIR[:DIR...]] [--valid CONTAINER_ID[/IFNAME]]...

  VERB        GC, STATUS or VERSION
  --cni-path  plugin dirs (default $CNI_PATH, else /usr/lib/cni)
  --valid     GC: an attachment to keep (IFNAME defaults to eth0); none = collect everything

Prints a JSON list, one {"plugin", "rc", "stdout" (parsed JSON or text), "stderr"} per plugin
call; exit 1 if a plugin failed (STATUS stops at the first failure, GC calls every plugin).
Run it in the host's netns (`ip netns exec HOST ...`), as a runtime would.
"""
import argparse, json, os, subprocess, sys

p = argparse.ArgumentParser()
p.add_argument("verb", choices=["GC", "STATUS", "VERSION"])
p.add_argument("conflist")
p.add_argument("--cni-path", default=os.environ.get("CNI_PATH") or "/usr/lib/cni")
p.add_argument("--valid", action="append", default=[])
a = p.parse_args()

conflist = json.load(open(a.conflist))
valid = []
for v in a.valid:
    cid, _, ifname = v.partition("/")
    valid.append({"containerID": cid, "ifname": ifname or "eth0"})

out, failed = [], False
for plugin in conflist["plugins"]:
    conf = dict(plugin, name=conflist["name"], cniVersion=conflist["cniVersion"])
    if a.verb == "GC":
        conf["cni.dev/valid-attachments"] = valid
    exe = next((os.path.join(d, plugin["type"]) for d in a.cni_path.split(":")
                if os.access(os.path.join(d, plugin["type"]), os.X_OK)), None)
    if exe is None:
        out.append({"plugin": plugin["type"], "rc": -1, "stdout": "", "stderr": "not in CNI_PATH"})
        failed = True
        break
    env = dict(os.environ, CNI_COMMAND=a.verb, CNI_PATH=a.cni_path)
    r = subprocess.run([exe], input=json.dumps(conf).encode(), env=env, capture_output=True)
    text = r.stdout.decode("utf-8", "replace")
    try:
        parsed = json.loads(text) if text.strip() else ""
    except ValueError:
        parsed = text
    out.append({"plugin": plugin["type"], "rc": r.returncode, "stdout": parsed,
                "stderr": r.stderr.decode("utf-8", "replace")})
    if r.returncode != 0:
        failed = True
        if a.verb == "STATUS":
            break
print(json.dumps(out))
sys.exit(1 if failed else 0)
