"""The stage-1 teacher cache: each distinct stage-1 recipe is trained once per storage.

Stage 1 depends only on `crkd.stage1_key(cfg)` (benchmark and split, model trunk, seed,
pretraining recipe), so runs that differ only in stage-2 values share a teacher.
Layout: `<root>/<key>/teacher.pt` (written atomically by crkd), `teacher.json` (who
trained it, how long, final known-class accuracy, and the file's sha256) and, when stage
1 failed, `failed.json` (the error: later runs fail at once with it instead of training
again; delete the file to retry).

Every use verifies the file against its sha256: a truncated or corrupt teacher is
retrained once, under the lock, instead of failing every later run.

Concurrency: the first run to need a key takes an exclusive `fcntl.flock` on
`<key>/.lock` and trains; runs that arrive meanwhile block on the lock, then find the
file and reuse it. The OS drops the lock if the trainer dies, and the next waiter
trains instead. On a shared file system (NFS) the lock spans nodes; for an object
store (`s3://`, `gs://`) the lock covers one node only, so two nodes may each train the
same teacher once (same bits on CPU: stage 1 is seeded) and the last upload wins.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from typing import Callable

import crkd

from .storage import is_uri, local

Log = Callable[[str], None]


class StageOneFailed(crkd.CrkdError):
    """Stage 1 of this recipe failed before; the message is the original error."""


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class Stage1Cache:
    """`teacher(cfg, data)` returns a verified local teacher path and how it was obtained:
    "hit" (cached), "waited" (another run trained it meanwhile), "trained" or "retrained"
    (the cached file was corrupt)."""

    def __init__(self, root: str, filesystem=None, mirror: str | None = None):
        # `filesystem`: a pyarrow FileSystem for remote roots (tests pass a local one);
        # `mirror`: the node-local folder that holds downloaded teachers and the locks.
        self.remote = filesystem is not None or is_uri(root)
        if self.remote:
            import pyarrow.fs as pafs
            if filesystem is None:
                filesystem, root = pafs.FileSystem.from_uri(root)
            self.fs = filesystem
            self.root = root.rstrip("/")
            self.mirror = mirror or os.path.join(os.path.expanduser("~"), ".cache", "crkd-tune", "stage1")
        else:
            self.fs, self.root = None, local(root)
            self.mirror = self.root

    def teacher(self, cfg: crkd.Config, data=None, who: str = "", log: Log = print) -> tuple[str, str]:
        key = crkd.stage1_key(cfg)
        folder = os.path.join(self.mirror, key)
        path = os.path.join(folder, "teacher.pt")
        if self._valid(path):
            log(f"stage-1 cache hit: {key}")
            return path, "hit"
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, ".lock"), "a") as lock:
            waited = False
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"stage-1 {key} is being trained by another run; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
                waited = True
            try:
                failed = self._read_json(key, "failed.json")
                if failed:
                    raise StageOneFailed(f"{failed['error']} (stage 1 of {key} failed in run {failed['run']}; "
                                         f"delete {os.path.join(self.root, key, 'failed.json')} to retry)")
                if self._valid(path) or (self.remote and self._download(key, path)):
                    log(f"stage-1 cache hit: {key}" + (" after waiting" if waited else ""))
                    return path, "waited" if waited else "hit"
                corrupt = os.path.exists(path)
                if corrupt:
                    log(f"stage-1 teacher {key} does not match its sha256 (truncated or corrupt): retraining it")
                    os.remove(path)
                info = self._train(cfg, data, path, key, who, log)
                if self.remote:
                    self._upload(key, path, info)
                return path, "retrained" if corrupt else "trained"
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def expected(self, cfg: crkd.Config) -> str | None:
        """The recorded sha256 of this recipe's teacher, if the cache has one."""
        info = self._read_json(crkd.stage1_key(cfg), "teacher.json")
        return info.get("sha256") if info else None

    # --- verification ------------------------------------------------------------------

    def _valid(self, path: str) -> bool:
        """The file exists and matches the sha256 recorded beside it (read on this node)."""
        info_path = os.path.join(os.path.dirname(path), "teacher.json")
        if not (os.path.isfile(path) and os.path.isfile(info_path)):
            return False
        try:
            with open(info_path) as f:
                want = json.load(f).get("sha256")
        except (OSError, ValueError):
            return False
        return want is not None and sha256(path) == want

    def _read_json(self, key: str, name: str) -> dict | None:
        try:
            if self.remote:
                import pyarrow.fs as pafs
                p = f"{self.root}/{key}/{name}"
                if self.fs.get_file_info(p).type != pafs.FileType.File:
                    return None
                with self.fs.open_input_stream(p) as f:
                    return json.loads(f.read().decode())
            p = os.path.join(self.root, key, name)
            if not os.path.isfile(p):
                return None
            with open(p) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    # --- training ------------------------------------------------------------------------

    def _train(self, cfg, data, path: str, key: str, who: str, log: Log) -> dict:
        epochs = cfg.pretrain.epochs
        log(f"stage-1 cache miss: training teacher {key} ({epochs} epochs)")
        start = time.perf_counter()
        try:
            stage = crkd.Pretrain(cfg, data)
            last: dict = {}
            for last in stage:
                if last["epoch"] % max(1, epochs // 5) == 0 or last["epoch"] == epochs:
                    acc = last.get("known/test/acc")
                    log(f"stage 1: epoch {last['epoch']}/{epochs}"
                        + (f" known/test/acc={acc:.4f}" if acc is not None else ""))
        except crkd.NonFiniteLoss as e:
            # Deterministic: every run of this recipe would fail the same way. Record it once.
            failed = {"key": key, "error": f"{type(e).__name__}: {e}", "run": who, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self._write(key, "failed.json", json.dumps(failed, indent=1))
            raise
        stage.save_teacher(path)  # atomic: temporary file, fsync, rename
        info = {"key": key, "sha256": sha256(path), "trained_by": who, "host": socket.gethostname(),
                "seconds": round(time.perf_counter() - start, 2), "epochs": epochs,
                "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_text(os.path.join(os.path.dirname(path), "teacher.json"), json.dumps(info, indent=1))
        log(f"stage-1 teacher {key} trained in {info['seconds']} s")
        return info

    def _write(self, key: str, name: str, text: str) -> None:
        _write_text(os.path.join(self.mirror, key, name), text)
        if self.remote:
            self.fs.create_dir(f"{self.root}/{key}", recursive=True)
            with self.fs.open_output_stream(f"{self.root}/{key}/{name}") as out:
                out.write(text.encode())

    # --- object stores ---------------------------------------------------------

    def _remote(self, key: str, name: str) -> str:
        return f"{self.root}/{key}/{name}"

    def _download(self, key: str, path: str) -> bool:
        import pyarrow.fs as pafs
        src = self._remote(key, "teacher.pt")
        info = self._read_json(key, "teacher.json")
        if self.fs.get_file_info(src).type != pafs.FileType.File or not info:
            return False
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as out, self.fs.open_input_stream(src) as f:
            while chunk := f.read(1 << 22):
                out.write(chunk)
        if sha256(tmp) != info.get("sha256"):  # a corrupt upload: train here instead
            os.remove(tmp)
            return False
        os.replace(tmp, path)
        _write_text(os.path.join(os.path.dirname(path), "teacher.json"), json.dumps(info, indent=1))
        return True

    def _upload(self, key: str, path: str, info: dict) -> None:
        self.fs.create_dir(f"{self.root}/{key}", recursive=True)
        with open(path, "rb") as f, self.fs.open_output_stream(self._remote(key, "teacher.pt")) as out:
            while chunk := f.read(1 << 22):
                out.write(chunk)
        # teacher.json last: a reader that finds it finds a complete teacher.pt
        with self.fs.open_output_stream(self._remote(key, "teacher.json")) as out:
            out.write(json.dumps(info, indent=1).encode())


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
