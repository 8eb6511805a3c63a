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
