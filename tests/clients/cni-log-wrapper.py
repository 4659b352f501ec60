#!/usr/bin/python3 -IS
"""A CNI "tee" plugin: records each call, then behaves exactly like the real plugin.

Symlink it under a plugin's name into a CNI bin dir (`ln -s .../cni-log-wrapper.py BIN/bridge`);
every client (cnitool, containerd) then runs it instead of the plugin. It runs
$WEFT_CNI_REAL_DIR/<name> (default /usr/lib/cni; a file `BIN/.real-dir` holding a directory
overrides the default, for clients that do not pass the environment on) with the same env and
stdin, and appends one JSON line per call to $WEFT_CNI_LOG (default BIN/calls.jsonl):
  {"time": unix seconds, "pid", "plugin", "command" (CNI_COMMAND), "env": {CNI_* vars},
   "stdin": parsed JSON or the raw text, "stdout": same, "stderr": text, "rc": exit code,
   "ms": duration}
Runtimes call plugins concurrently (containerd: loopback next to the pod network); each line is
written under an exclusive flock.
"""
import fcntl, json, os, subprocess, sys, time

name = os.path.basename(sys.argv[0])
bin_dir = os.path.dirname(os.path.abspath(sys.argv[0]))
real_dir = os.environ.get("WEFT_CNI_REAL_DIR")
if not real_dir:
    try:
        real_dir = open(os.path.join(bin_dir, ".real-dir")).read().strip()
    except OSError:
        real_dir = "/usr/lib/cni"
log = os.environ.get("WEFT_CNI_LOG") or os.path.join(bin_dir, "calls.jsonl")

stdin = sys.stdin.buffer.read()
t0 = time.time()
p = subprocess.run([os.path.join(real_dir, name)] + sys.argv[1:], input=stdin,
                   capture_output=True)
elapsed = time.time() - t0


def parsed(b):
    text = b.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


rec = {"time": round(t0, 6), "pid": os.getpid(), "plugin": name,
       "command": os.environ.get("CNI_COMMAND", ""),
       "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("CNI_")},
       "stdin": parsed(stdin), "stdout": parsed(p.stdout),
       "stderr": p.stderr.decode("utf-8", "replace"), "rc": p.returncode,
       "ms": round(elapsed * 1000, 2)}
with open(log, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.write(json.dumps(rec) + "\n")
sys.stdout.buffer.write(p.stdout)
sys.stderr.buffer.write(p.stderr)
sys.exit(p.returncode)
