"""The stage-1 teacher cache: each distinct stage-1 recipe is trained once per storage.

Stage 1 depends only on `crkd.stage1_key(cfg)` (benchmark, model trunk, seed,
pretraining recipe), so trials that differ only in stage-2 values share a teacher.
Layout: `<root>/<key>/teacher.pt` (written atomically by crkd) and `teacher.json`
(who trained it, how long, final known-class accuracy).

Concurrency: the first trial to need a key takes an exclusive `fcntl.flock` on
`<key>/.lock` and trains; trials that arrive meanwhile block on the lock, then find
the file and reuse it. The OS drops the lock if the trainer dies, and the next
waiter trains instead. On a shared file system (NFS) the lock spans nodes; for an
object store (`s3://`, `gs://`) the lock covers one node only, so two nodes may each
train the same teacher once (same bits: stage 1 is seeded) and the last upload wins.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from typing import Callable

import crkd

from .storage import is_uri, local

Log = Callable[[str], None]


class Stage1Cache:
    """`teacher(cfg, data)` returns a local teacher path and how it was obtained:
    "hit" (cached), "waited" (another trial trained it while this one waited) or "trained"."""

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
        if os.path.isfile(path):
            log(f"stage-1 cache hit: {key} ({path})")
            return path, "hit"
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, ".lock"), "a") as lock:
            waited = False
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"stage-1 {key} is being trained by another trial; waiting for it")
                fcntl.flock(lock, fcntl.LOCK_EX)
                waited = True
            try:
                if os.path.isfile(path) or (self.remote and self._download(key, path)):
                    log(f"stage-1 cache hit: {key} ({path})" + (" after waiting" if waited else ""))
                    return path, "waited" if waited else "hit"
                info = self._train(cfg, data, path, key, who, log)
                if self.remote:
                    self._upload(key, path, info)
                return path, "trained"
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _train(self, cfg, data, path: str, key: str, who: str, log: Log) -> dict:
        epochs = cfg.pretrain.epochs
        log(f"stage-1 cache miss: training teacher {key} ({epochs} epochs)")
        start = time.perf_counter()
        stage = crkd.Pretrain(cfg, data)
        last: dict = {}
        for last in stage:
            if last["epoch"] % max(1, epochs // 5) == 0 or last["epoch"] == epochs:
                acc = last.get("known/test/acc")
                log(f"stage 1: epoch {last['epoch']}/{epochs}"
                    + (f" known/test/acc={acc:.4f}" if acc is not None else ""))
        stage.save_teacher(path)  # atomic: temporary file, fsync, rename
        info = {"key": key, "trained_by": who, "host": socket.gethostname(),
                "seconds": round(time.perf_counter() - start, 2), "epochs": epochs,
                "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_text(os.path.join(os.path.dirname(path), "teacher.json"), json.dumps(info, indent=1))
        log(f"stage-1 teacher {key} trained in {info['seconds']} s, saved to {path}")
        return info

    # --- object stores ---------------------------------------------------------

    def _remote(self, key: str, name: str) -> str:
        return f"{self.root}/{key}/{name}"

    def _download(self, key: str, path: str) -> bool:
        import pyarrow.fs as pafs
        src = self._remote(key, "teacher.pt")
        if self.fs.get_file_info(src).type != pafs.FileType.File:
            return False
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as out, self.fs.open_input_stream(src) as f:
            while chunk := f.read(1 << 22):
                out.write(chunk)
        os.replace(tmp, path)
        return True

    def _upload(self, key: str, path: str, info: dict) -> None:
        self.fs.create_dir(f"{self.root}/{key}", recursive=True)
        with open(path, "rb") as f, self.fs.open_output_stream(self._remote(key, "teacher.pt")) as out:
            while chunk := f.read(1 << 22):
                out.write(chunk)
        with self.fs.open_output_stream(self._remote(key, "teacher.json")) as out:
            out.write(json.dumps(info, indent=1).encode())


def _write_text(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
