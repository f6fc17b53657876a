"""`python tests/ray_node.py start ...`: `ray start` for a node that listens on loopback only.

Why a wrapper (see ../shared/reference/ray-notes.md): Ray turns a node address of 127.0.0.1
into the machine's own IP and then listens on every interface. With the environment variable
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it keeps 127.0.0.1, and its servers then bind loopback
only, but `ray start --address ...` refuses to join a cluster under that variable. This wrapper
lifts that one refusal (a check in `ray start` alone) and leaves everything else to Ray: the
node is still a plain `ray start`. tests/ray_cluster.py checks every listening socket of the
cluster's processes, so a Ray release that changes this fails the tests instead of exposing
ports.
"""

from __future__ import annotations

import os
import sys
import types

if __name__ == "__main__":
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        sys.exit("ray_node.py: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (it keeps Ray on loopback)")
    import ray._private.ray_constants as ray_constants
    import ray.scripts.scripts as scripts

    joinable = {k: getattr(ray_constants, k) for k in dir(ray_constants) if not k.startswith("__")}
    joinable["ENABLE_RAY_CLUSTER"] = True  # only `ray start`'s own view: it may join a cluster
    scripts.ray_constants = types.SimpleNamespace(**joinable)  # type: ignore[assignment]
    sys.argv = ["ray", *sys.argv[1:]]
    scripts.main()
