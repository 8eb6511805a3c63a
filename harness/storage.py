"""Paths that are either local folders or cloud/NFS URIs (`--storage s3://bucket/x`),
plus the per-trial failure markers kept there.

Local paths (and file://) use the os module; anything else with a scheme goes through
pyarrow's file systems, the same ones Ray Tune uses for its storage.
"""
from __future__ import annotations

import os
import tempfile


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local(path: str) -> str:
    path = path[len("file://"):] if path.startswith("file://") else path
    return os.path.abspath(os.path.expanduser(path))


def normalize(path: str) -> str:
    """An absolute local path, or the URI unchanged (minus a trailing slash)."""
    return path.rstrip("/") if is_uri(path) else local(path)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_uri(root) else os.path.join(root, *parts)


def _fs(path: str):
    import pyarrow.fs as pafs
    return pafs.FileSystem.from_uri(path)


def read_text(path: str) -> str | None:
    if not is_uri(path):
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return f.read()
    import pyarrow.fs as pafs
    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    """Atomic for local paths (temporary file + rename); one PUT for object stores."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    import pyarrow.fs as pafs
    fs, p = _fs(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


# --- failure markers ----------------------------------------------------------------
# Tune retries a failed trial from its last checkpoint (FailureConfig), which is right
# for a lost worker and wasteful for a NaN loss or a bad config: those would fail the
# same way again. A trial that fails deterministically leaves a marker; its retries
# read it and fail at once with the same message.

class TrialFailed(RuntimeError):
    """A deterministic trial failure, as "ErrorType: message": one exception type for the
    driver to recognise, whichever crkd error (NonFiniteLoss, ConfigError, ...) caused it."""


class RepeatedFailure(TrialFailed):
    """A retry of a trial whose first attempt failed deterministically."""


def failure_marker(experiment_dir: str, trial_id: str) -> str:
    return join(experiment_dir, "trial_failures", f"{trial_id}.txt")


def outcome_marker(experiment_dir: str, trial_id: str) -> str:
    """Written by the driver when a trial ends (harness.restore.OutcomeMarkers)."""
    return join(experiment_dir, "trial_outcomes", f"{trial_id}.json")


# --- one driver per study -------------------------------------------------------------------

class Busy(RuntimeError):
    """Another driver holds the study."""


class DriverLock:
    """Held by the one driver of a study. On a local or NFS folder an exclusive flock on
    `<study>/driver.lock` (the OS drops it if the driver dies); on an object store, where
    there is no lock, a lease object renewed every `renew_s` that another driver honours
    while it is younger than `stale_s`."""

    def __init__(self, folder: str, renew_s: float = 20.0, stale_s: float = 90.0):
        self.folder, self.renew_s, self.stale_s = folder, renew_s, stale_s
        self.path = join(folder, "driver.lock")
        self._file = None
        self._thread = None
        self._stop = None

    @property
    def held(self) -> bool:
        return self._file is not None or self._thread is not None

    def acquire(self) -> None:
        import json
        import socket
        import time
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if not is_uri(self.folder):
            import fcntl
            os.makedirs(self.folder, exist_ok=True)
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                who = f.read().strip() or "another process"
                f.close()
                try:
                    w = json.loads(who)
                    who = f"{w['host']}, pid {w['pid']}, since {w['since']}"
                except (ValueError, KeyError, TypeError):
                    pass
                raise Busy(f"study {os.path.basename(self.folder)} is being run by another driver ({who}); "
                           f"wait for it or stop it first") from None
            f.seek(0)
            f.truncate()
            f.write(json.dumps(me))
            f.flush()
            self._file = f
            return
        text = read_text(self.path)
        if text:
            lease = json.loads(text)
            if time.time() - lease.get("renewed", 0) < self.stale_s and lease.get("pid") != os.getpid():
                raise Busy(f"study {self.folder.rsplit('/', 1)[-1]} is being run by another driver "
                           f"({lease.get('host')}, pid {lease.get('pid')}); a lease older than "
                           f"{self.stale_s:.0f} s is taken over")
        import threading
        self._stop = threading.Event()

        def renew():
            while True:
                write_text(self.path, json.dumps({**me, "renewed": time.time()}))
                if self._stop.wait(self.renew_s):
                    return
        renew_once = {**me, "renewed": time.time()}
        write_text(self.path, json.dumps(renew_once))
        self._thread = threading.Thread(target=renew, daemon=True, name="crkd-lease")
        self._thread.start()

    def release(self) -> None:
        if self._file is not None:
            import fcntl
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            write_text(self.path, "")
            self._stop = self._thread = None


def copy_dir(src: str, dst: str) -> None:
    """A local folder's files to a local path or a URI."""
    if not is_uri(dst):
        import shutil
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    fs, p = _fs(dst)
    for base, _, files in os.walk(src):
        for name in files:
            rel = os.path.relpath(os.path.join(base, name), src)
            target = f"{p}/{rel}"
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with open(os.path.join(base, name), "rb") as f, fs.open_output_stream(target) as out:
                out.write(f.read())


def list_files(folder: str) -> list[str]:
    """Names of the files directly in a local folder or URI (empty if none)."""
    if not is_uri(folder):
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    import pyarrow.fs as pafs
    fs, p = _fs(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


# --- the places a study is told to use, checked before anything starts ----------------------------

class StorageError(ValueError):
    """--storage or --tracking-uri cannot be used: one line saying why."""


SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")


def check_root(path: str) -> str:
    """The storage root, normalised; a local folder must be (or become) a writable folder."""
    if not path:
        raise StorageError("--storage is empty; give a folder or s3:// / gs:// URI")
    if is_uri(path):
        scheme = path.split("://", 1)[0]
        if scheme not in SCHEMES:
            raise StorageError(f"--storage {path}: unknown scheme {scheme}://; use a local folder, s3:// or gs://")
        if "?" in path:  # the study's paths are appended to the root: a query would end up in the middle
            raise StorageError(f"--storage {path}: options in the URI (?...) are not supported; for an "
                               f"S3-compatible store set AWS_ENDPOINT_URL=http://HOST:PORT (pyarrow, Ray Tune "
                               f"and boto3 read it) and give --storage s3://BUCKET/PATH")
        return normalize(path)
    p = local(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise StorageError(f"--storage {path} is a file; give a folder (it is created if missing)")
    try:
        os.makedirs(p, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise StorageError(f"--storage {path} is not a writable folder ({e.strerror})") from None
    return p


def newest_study(root: str) -> str | None:
    if is_uri(root):
        raise StorageError("--resume with an s3:// or gs:// --storage needs --name")
    found = sorted((os.path.getmtime(os.path.join(root, d, "study.yaml")), d)
                   for d in (os.listdir(root) if os.path.isdir(root) else [])
                   if os.path.isfile(os.path.join(root, d, "study.yaml")))
    return found[-1][1] if found else None


SQLITE_HEADER = b"SQLite format 3\x00"
DRIVERS = {"postgresql": ("psycopg2", "psycopg2-binary"), "mysql": ("pymysql", "pymysql"),
           "mssql": ("pyodbc", "pyodbc")}


def check_tracking(uri: str | None, root: str) -> str:
    """The MLflow store a study may use ("" = the store's own sqlite database)."""
    if not uri:
        if is_uri(root):
            raise StorageError(f"--storage {root} is shared storage: also give --tracking-uri http://HOST:5000 "
                               f"(an `mlflow server` the driver reaches)")
        _check_sqlite(os.path.join(root, "mlflow.db"), "the default MLflow store")
        return ""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if uri.startswith("sqlite:///"):
        path = os.path.abspath(uri[len("sqlite:///"):])
        _check_sqlite(path, f"--tracking-uri {uri}")
        return f"sqlite:///{path}"
    if scheme in ("http", "https"):
        _check_server(uri)
        return uri.rstrip("/")
    if scheme in DRIVERS:
        module, package = DRIVERS[scheme]
        import importlib.util
        if importlib.util.find_spec(module) is None:
            raise StorageError(f"--tracking-uri {uri}: the {scheme} driver is not installed (pip install {package})")
        return uri
    if not scheme or scheme == "file" or uri.startswith(("./", "/")):
        raise StorageError(f"--tracking-uri {uri}: MLflow 3 refuses file stores; use sqlite:///ABSOLUTE/PATH.db "
                           f"or http://HOST:PORT")
    raise StorageError(f"--tracking-uri {uri}: unknown scheme {scheme}:; use sqlite:///PATH.db, http://HOST:PORT "
                       f"or a postgresql:// / mysql:// database")


def _check_sqlite(path: str, what: str) -> None:
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise StorageError(f"{what}: {path} is a folder, not a database file")
    if os.path.exists(path):
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != SQLITE_HEADER:
            raise StorageError(f"{what}: {path} is not an SQLite database; move it away or give another path")
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise StorageError(f"{what}: cannot create {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise StorageError(f"{what}: {folder} is not writable")


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """An `mlflow server` answers /health within a few seconds (MLflow's client would retry
    for about four minutes before it gave up)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise StorageError(f"--tracking-uri {uri}: the server answered {r.status} to /health")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StorageError(f"--tracking-uri {uri}: no MLflow server answers within {timeout:.0f} s ({reason})") from None
