"""Joining an existing Ray cluster (--address), checked before anything is created."""
from __future__ import annotations

import os
import socket

from .settings import SettingsError


def _reachable(host: str, port: int, timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def gcs_address(address: str) -> str | None:
    """host:port of a cluster address; "auto" reads the address Ray recorded on this machine."""
    if address == "auto":
        import tempfile
        path = os.path.join(os.environ.get("RAY_TMPDIR", tempfile.gettempdir()), "ray", "ray_current_cluster")
        try:
            with open(path) as f:
                address = f.read().strip()
        except OSError:
            raise SettingsError("--address auto: no Ray cluster runs on this machine (`ray start --head` first, "
                                "or leave --address out for a local one)") from None
    address = address.removeprefix("ray://")
    return address if ":" in address else f"{address}:6379"


def check(address: str) -> str:
    """Before anything is created: the cluster answers. Returns host:port."""
    hostport = gcs_address(address)
    host, port = hostport.rsplit(":", 1)
    if not _reachable(host, int(port)):
        raise SettingsError(f"--address {address}: no Ray cluster answers at {hostport} within 5 s "
                            f"(a stale address, or the cluster is down)")
    return hostport


def connect(address: str, timeout: float = 120.0) -> None:
    """Join the cluster and make sure its workers can import the trainer and the harness."""
    import ray
    ray.init(address=check(address), logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=0)
    def probe() -> str:
        import crkd  # noqa: F401
        import harness.trial  # noqa: F401
        return socket.gethostname()

    try:
        ray.get(probe.remote(), timeout=timeout)
    except Exception as e:
        ray.shutdown()
        raise SettingsError(f"--address {address}: the cluster's workers cannot import crkd and harness "
                            f"({type(e).__name__}); install crkd-tune on every node (`pip install -e .`, as "
                            f"cluster.yaml's setup does)") from None
