#!/usr/bin/env python
"""Look at a finished study as a person would: serve its MLflow store and take headless-Chromium
screenshots of the leaderboard, the confirmation, a trial, the parent run, the report and
every plot.

    python benchmarks/ui_screenshots.py                         # runs a smoke study first
    python benchmarks/ui_screenshots.py --storage runs --name NAME --out docs/img

Needs Debian's Chromium (`apt-get install chromium`). The server binds 127.0.0.1 on a free
port and is stopped at the end; Chromium runs with a fresh profile and no background
networking. Prints each PNG written.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from harness import tracking

# 2200 px wide: MLflow 3.17 opens its Assistant panel (~350 px) on a first visit from
# localhost, and a fresh profile is always a first visit; narrower, it hides the leaderboard's
# outcome and trial columns.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=2200,1000", "--virtual-time-budget=30000", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def shot(browser: str, url: str, path: str) -> str:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:  # Chromium writes as it exits
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}", url],
                       capture_output=True, timeout=180, check=True)
    print(f"wrote {path}  ({url})")
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", help="a store with a finished study (default: run a smoke study in a temporary folder)")
    p.add_argument("--name", help="the study (default: the smoke study)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "img"), help="where the PNGs go (default docs/img)")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args()
    if not os.path.exists(args.chromium):
        sys.exit("error: Chromium not found; install Debian's package (apt-get install chromium) or give --chromium")
    work = tempfile.mkdtemp(prefix="crkd-ui-")
    storage, name = args.storage, args.name
    if not storage:
        storage, name = os.path.join(work, "runs"), "smoke"
        subprocess.run([sys.executable, os.path.join(REPO, "harness", "tune.py"), "--smoke-test", "--confirm-top", "1",
                        "--confirm-seeds", "2", "--name", name, "--storage", storage], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    storage = os.path.abspath(storage)
    uri = f"sqlite:///{os.path.join(storage, 'mlflow.db')}"
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp, parent = tracking.find_study(client, name)
    exp_id = exp.experiment_id
    trial = tracking.runs_of(client, exp_id, "trial")[0].info.run_id
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                               "--artifacts-destination", tracking.artifact_root(uri), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    os.makedirs(args.out, exist_ok=True)
    try:
        wait_for(base + "/health")
        ml = "workflowType=machine_learning"
        run = f"{base}/#/experiments/{exp_id}/runs"
        pages = {"leaderboard": tracking.ui_link(base, exp_id, "leaderboard"),
                 "confirmation": tracking.ui_link(base, exp_id, "confirmation"),
                 "trial": f"{run}/{trial}?{ml}",
                 "parent": f"{run}/{parent.info.run_id}?{ml}",
                 "report": f"{run}/{parent.info.run_id}/artifacts/report/report.md?{ml}"}
        for plot in tracking.list_artifacts(client, parent.info.run_id, "plots") + [
                f for f in tracking.list_artifacts(client, parent.info.run_id, "report") if f.endswith(".png")]:
            pages[f"artifact-{os.path.basename(plot)[:-4]}"] = f"{run}/{parent.info.run_id}/artifacts/{plot}?{ml}"
        for page, url in pages.items():
            shot(args.chromium, url, os.path.join(args.out, f"mlflow-{page}.png"))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
