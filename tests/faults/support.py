"""The fault suite's tools: studies as subprocesses (as a user runs them), servers on
127.0.0.1 (an `mlflow server`, moto's S3, Ray nodes), every one in its own session so that
it, and everything it started, can be ended by session id; and the driver's tracking
journal read as it grows, to time a fault (mid-trial, mid-confirmation).

Loopback only: every server binds 127.0.0.x and every client talks to 127.0.0.x.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
BIN = Path(PY).parent
TUNE = str(REPO / "harness" / "tune.py")
SYNC = str(REPO / "harness" / "sync.py")
EXPORT = str(REPO / "harness" / "export.py")
# The tiny recipe of tests/test_harness.py: a trial's epoch is well under a second.
FAST = ["--set", "pretrain.epochs=3", "--set", "model.widths=[8,16,16]", "--set", "model.hidden_dim=32",
        "--set", "model.proj_dim=16"]
# MLflow's HTTP client retries a request 7 times with back-off (about four minutes) before it
# raises; the harness sets nothing here and leans on its journal's own back-off around that.
# With these a request to a server that is gone (connection refused) gives up within a few
# seconds, so a server away for ten seconds is longer than MLflow's budget and the journal's
# back-off is what the study relies on. The timeout stays long: a busy server answers late.
SHORT_MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def env(**extra: str) -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    e.update(extra)
    return e


def study_cmd(storage: str | Path, name: str, *extra: str, samples: int = 4, max_t: int = 5,
              confirm_seeds: int = 1) -> list[str]:
    """A tiny study: digits, `samples` trials of up to `max_t` epochs, 2 at a time, one CPU each,
    the top configuration and both baselines on `confirm_seeds` fresh seeds (no transfer runs)."""
    return [PY, TUNE, "--storage", str(storage), "--name", name, "--max-epochs", str(max_t),
            "--grace-period", "1", "--reduction-factor", "3", "--max-concurrent", "2", "--cpus-per-trial", "1",
            "--max-failures", "1", "--num-samples", str(samples), "--confirm-top", "1",
            "--confirm-seeds", str(confirm_seeds), "--no-transfer", *FAST, *extra]


def resume_cmd(storage: str | Path, name: str, *extra: str) -> list[str]:
    return [PY, TUNE, "--resume", "--name", name, "--storage", str(storage), *extra]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --- processes ------------------------------------------------------------------------------

def session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[3])  # state, ppid, pgrp, session
    except (OSError, IndexError, ValueError):
        return None


def session_pids(sid: int) -> list[int]:
    """Every live process of a session (zombies excluded)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and session_of(int(d)) == sid:
            try:
                with open(f"/proc/{d}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
            except OSError:
                continue
            out.append(int(d))
    return out


def kill_session(sid: int, timeout: float = 10.0) -> int:
    """SIGKILL every process of a session we started; returns how many there were."""
    pids = session_pids(sid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    while session_pids(sid) and time.time() < deadline:
        time.sleep(0.1)
    return len(pids)


class Proc:
    """A command in a session of its own, its output in a log file."""

    def __init__(self, cmd: list[str], log: Path, env: dict, cwd: Path, name: str):
        self.cmd, self.log, self.name = cmd, Path(log), name
        self._out = open(self.log, "w")
        self.p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        self.sid = self.p.pid
        self.started = time.time()

    @property
    def pid(self) -> int:
        return self.p.pid

    @property
    def rc(self) -> int | None:
        return self.p.poll()

    def alive(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int) -> None:
        """To the process itself (not its children): what a terminal, Slurm or kill sends."""
        self.p.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not end within {timeout:.0f} s\n{self.tail()}") from None

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 4000) -> str:
        return self.output()[-n:]

    def leftovers(self) -> list[int]:
        return session_pids(self.sid)

    def kill(self) -> int:
        n = kill_session(self.sid)
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        return n

    def close(self) -> None:
        self.kill()
        self._out.close()


def wait_until(pred, timeout: float, what: str, proc: Proc | None = None, every: float = 0.1):
    """Poll `pred` until it is truthy (returned); fail if `proc` ends first or time runs out."""
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(f"{what}: {proc.name} ended first (exit {proc.rc})\n{proc.tail()}")
        if time.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s" + (f"\n{proc.tail()}" if proc else ""))
        time.sleep(every)


# --- the driver's tracking journal, read as it grows -------------------------------------------

class Progress:
    """Runs as the driver's journal describes them so far: phase, role, last epoch, ended,
    tags; and when each epoch was appended."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._pos = 0
        self._partial = b""
        self.runs: dict[str, dict] = {}
        self.epoch_times: list[float] = []   # when the driver appended each epoch (its ts)

    def update(self) -> "Progress":
        if not self.path.is_file():
            return self
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                self._event(json.loads(line))
            except ValueError:
                continue
        return self

    def _event(self, e: dict) -> None:
        key, op = e.get("key"), e.get("op")
        if key == "study":
            return
        r = self.runs.setdefault(key, {"phase": None, "role": None, "step": 0, "ended": False, "tags": {}})
        if op == "run":
            tags = e.get("tags", {})
            r["phase"] = tags.get("crkd.phase", r["phase"])
            r["role"] = tags.get("crkd.role", r["role"])
            r["tags"].update(tags)
        elif op == "metrics" and e.get("step", 0) > 0:
            r["step"] = max(r["step"], e["step"])
            self.epoch_times.append(e.get("ts", 0) / 1000)
        elif op == "tags":
            r["tags"].update(e.get("tags", {}))
        elif op == "end":
            r["ended"] = True

    def of(self, phase: str) -> dict[str, dict]:
        return {k: r for k, r in self.runs.items() if r["phase"] == phase}

    def running(self, phase: str, min_step: int = 1, role: str | None = None) -> list[str]:
        return [k for k, r in self.of(phase).items()
                if not r["ended"] and r["step"] >= min_step and (role is None or r["role"] == role)]

    def ended(self, phase: str) -> int:
        return sum(r["ended"] for r in self.of(phase).values())

    def epochs_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.epoch_times)


def applied(journal: Path) -> int:
    """How many of the journal's events the driver's writer has applied to MLflow."""
    try:
        return int((Path(journal).parent / "applied").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def events(journal: Path) -> int:
    try:
        return Path(journal).read_bytes().count(b"\n")
    except OSError:
        return 0


def journal_path(storage: str | Path, name: str, home: str | Path | None = None) -> Path:
    """Where the driver keeps its tracking journal: in the study folder, or (object-store
    storage) under the driver's home (harness.driver.journal_folder)."""
    s = str(storage)
    if "://" in s and not s.startswith("file://"):
        return Path(home or os.path.expanduser("~")) / ".cache" / "crkd-tune" / "tracking" / name / "journal.jsonl"
    return Path(s) / name / "tracking" / "journal.jsonl"


# --- servers on the loopback interface ----------------------------------------------------------

class MlflowServer:
    """`mlflow server` on 127.0.0.1 with its own sqlite store and artifact folder, one worker.
    stop() kills it (SIGKILL, a crash: requests in flight are cut); start() again serves the
    same store on the same port."""

    def __init__(self, folder: Path, cwd: Path):
        self.folder, self.cwd = Path(folder), cwd
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: Proc | None = None
        self.starts = 0

    def start(self, timeout: float = 180) -> None:
        self.starts += 1
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        # no job runner (MLflow 3's GenAI jobs: eight huey processes the harness has no use for)
        self.proc = Proc(cmd, self.folder / f"server-{self.starts}.log", env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                         self.cwd, "mlflow server")
        wait_until(self.healthy, timeout, "mlflow server /health", self.proc, every=0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.close()
            wait_until(lambda: not answers("127.0.0.1", self.port), 20, "mlflow server stopped")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()


class MotoS3:
    """moto's S3 in server mode on 127.0.0.1 and the environment that points pyarrow (the
    harness's and Ray Tune's storage layer) and boto at it."""

    def __init__(self, folder: Path, cwd: Path, bucket: str = "crkd"):
        self.folder, self.cwd, self.bucket = Path(folder), cwd, bucket
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: Proc | None = None

    @property
    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout: float = 60) -> None:
        self.proc = Proc([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                         self.folder / "moto.log", env(), self.cwd, "moto server")
        wait_until(lambda: answers("127.0.0.1", self.port), timeout, "moto server", self.proc, every=0.2)
        import pyarrow.fs as pafs
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", access_key="testing",
                          secret_key="testing", region="us-east-1",
                          allow_bucket_creation=True).create_dir(self.bucket)

    def fs(self):
        import pyarrow.fs as pafs
        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", access_key="testing",
                                 secret_key="testing", region="us-east-1")

    def files(self, prefix: str) -> list[str]:
        import pyarrow.fs as pafs
        infos = self.fs().get_file_info(pafs.FileSelector(f"{self.bucket}/{prefix}", recursive=True,
                                                          allow_not_found=True))
        return sorted(i.path[len(self.bucket) + 1:] for i in infos if i.type == pafs.FileType.File)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()


class RayNodes:
    """A Ray cluster of two nodes on this machine: `ray start --head` on 127.0.0.2 and
    `ray start --address` on 127.0.0.3, one CPU each, each node in a session of its own
    (so one node can be killed whole). Ray's `ray start` maps 127.0.0.1 to the machine's
    network address; the rest of 127.0.0.0/8 it keeps, and it stays on the loopback.

    Ray 2.60's `ray start --head` turns token authentication on (~/.ray/auth_token): the
    worker node and the driver need RAY_AUTH_MODE=token to join."""

    HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"

    def __init__(self, folder: Path, cwd: Path):
        import tempfile
        self.folder, self.cwd = Path(folder), cwd
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # Ray's socket paths must stay short
        self.port = free_port(self.HEAD_IP)
        self.address = f"{self.HEAD_IP}:{self.port}"
        self.env = {"RAY_TMPDIR": self.tmp, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
        self.nodes: dict[str, Proc] = {}

    def _start(self, role: str, args: list[str], timeout: float) -> None:
        cmd = [str(BIN / "ray"), "start", "--num-cpus", "1", "--object-store-memory", str(100 * 1024 * 1024),
               "--disable-usage-stats", *args]
        p = Proc(cmd, self.folder / f"ray-{role}.log", env(**self.env), self.cwd, f"ray {role}")
        rc = p.wait(timeout)  # `ray start` returns once the node runs; the node stays in the session
        if rc != 0:
            raise AssertionError(f"ray start ({role}) failed: {p.tail()}")
        self.nodes[role] = p

    def start(self, timeout: float = 120) -> None:
        self._start("head", ["--head", "--node-ip-address", self.HEAD_IP, "--port", str(self.port),
                             "--include-dashboard", "false"], timeout)
        self._start("worker", ["--address", self.address, "--node-ip-address", self.WORKER_IP], timeout)

    def kill(self, role: str) -> int:
        """Every process of that node, at once (a lost machine)."""
        return kill_session(self.nodes[role].sid)

    def close(self) -> None:
        import shutil
        for p in self.nodes.values():
            p.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
