"""grpc and the CRI stubs from the venv `setup.sh` made, for cri-client.py and kubelet.py.

`load(prog)` returns (grpc, v1_pb2, v1_pb2_grpc). Run with a python that lacks grpc, it re-executes
the calling script under the venv's python (WEFT_CRI_PYTHON) first.
"""

import os
import sys


def tools_env():
    """KEY=VALUE pairs of the cache's cni-clients.env (as lib.sh locates the cache)."""
    tools = os.environ.get("WEFT_TOOLS_DIR")
    if not tools:
        if os.geteuid() == 0:
            tools = "/var/cache/weft-tools"
        else:
            tools = os.path.join(
                os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "weft-tools")
    env = {}
    try:
        with open(os.path.join(tools, "cni-clients.env")) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                if k:
                    env[k] = v
    except OSError:
        pass
    return env


def setting(name):
    return os.environ.get(name) or tools_env().get(name)


def load(prog):
    try:
        import grpc
    except ImportError:
        py = setting("WEFT_CRI_PYTHON")
        # (A venv's python is a symlink to the system one: mark the re-exec instead of comparing.)
        if py and os.path.exists(py) and not os.environ.get("WEFT_CRI_REEXEC"):
            os.environ["WEFT_CRI_REEXEC"] = "1"
            os.execv(py, [py] + sys.argv)
        sys.exit(f"{prog}: no grpc module and no WEFT_CRI_PYTHON venv: run tests/clients/setup.sh")
    stubs = setting("WEFT_CRI_STUBS")
    if not stubs:
        sys.exit(f"{prog}: no CRI stubs (WEFT_CRI_STUBS): run tests/clients/setup.sh")
    sys.path.insert(0, stubs)
    import v1_pb2
    import v1_pb2_grpc
    return grpc, v1_pb2, v1_pb2_grpc
