"""Offline validation of cluster.yaml with the checks `ray up` runs.

`ray up` first calls ray.autoscaler._private.util.prepare_config (merge with the
provider's defaults.yaml, fill per-node-type min/max workers) and then
validate_config (the bundled ray-schema.json plus a few cross-field checks).
Both are local; the cloud is contacted only later, by bootstrap_config, which
these tests never call. A guard below fails the test if anything tries to open
a socket or import boto3.

These are private Ray APIs; the project pins ray 2.60.0.
"""

from __future__ import annotations

import copy
import re
import socket
import sys
from pathlib import Path

import pytest

# exc_type=ImportError: also skip (rather than error) when ray is present but
# cannot be imported, e.g. a half-built environment.
yaml = pytest.importorskip("yaml", exc_type=ImportError)
pytest.importorskip("jsonschema", exc_type=ImportError)
ray_util = pytest.importorskip("ray.autoscaler._private.util", exc_type=ImportError)

import jsonschema  # noqa: E402  (imported after the skip guards)

prepare_config = ray_util.prepare_config
validate_config = ray_util.validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"

COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)

# Any wildcard bind: IPv4 0.0.0.0 or the IPv6 "::" forms.
WILDCARD_BIND = re.compile(r"0\.0\.0\.0|\[::\]|(?<![\w:])::(?![\w:])")


@pytest.fixture
def raw_config():
    with CLUSTER_YAML.open() as f:
        return yaml.safe_load(f)


@pytest.fixture
def offline(monkeypatch):
    """Make any network access or boto3 import fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in ("boto3", "botocore"):
        # None in sys.modules makes `import boto3` raise ImportError.
        monkeypatch.setitem(sys.modules, name, None)


def _prepared(cfg):
    return prepare_config(copy.deepcopy(cfg))


def _all_commands(cfg):
    """Every shell command in a (raw or prepared) config, with its location."""
    for key in COMMAND_KEYS:
        for cmd in cfg.get(key) or []:
            yield key, cmd
    for name, node_type in cfg.get("available_node_types", {}).items():
        for key in ("initialization_commands", "worker_setup_commands"):
            for cmd in node_type.get(key) or []:
                yield f"available_node_types.{name}.{key}", cmd


def test_cluster_yaml_passes_ray_up_validation(raw_config, offline):
    prepared = _prepared(raw_config)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_raw_yaml_also_matches_schema(raw_config):
    # The schema alone (without prepare_config's cross-field checks) must
    # accept the file as written, so unknown keys are caught even before
    # defaults are merged in.
    import json

    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(raw_config, json.loads(schema_path.read_text()))


def test_no_command_binds_all_interfaces(raw_config, offline):
    prepared = _prepared(raw_config)
    for cfg in (raw_config, prepared):
        for where, cmd in _all_commands(cfg):
            assert not WILDCARD_BIND.search(cmd), f"{where} binds a wildcard address: {cmd}"


def test_services_bind_explicit_non_public_addresses(raw_config):
    head_cmds = raw_config["head_start_ray_commands"]
    ray_start = [c for c in head_cmds if "ray start --head" in c]
    assert len(ray_start) == 1
    # Ray's own AWS example uses --dashboard-host=0.0.0.0; we must not.
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", ray_start[0])

    mlflow = [c for c in head_cmds if "mlflow server" in c]
    assert len(mlflow) == 1
    cmd = mlflow[0]
    # An explicit --host is required: mlflow's default (127.0.0.1) would hide
    # the server from trials on the workers. It must be the private IP taken
    # from `hostname -I` on the head.
    assert "hostname -I" in cmd
    assert re.search(r'--host "?\$\{?HEAD_IP\}?"?', cmd), cmd
    assert "--backend-store-uri sqlite:////" in cmd
    assert "--artifacts-destination s3://" in cmd


def test_node_type_resources_are_integers(raw_config, offline):
    for cfg in (raw_config, _prepared(raw_config)):
        for name, node_type in cfg["available_node_types"].items():
            for res, value in node_type["resources"].items():
                # bool is an int subclass; 1.0 passes the JSON schema's
                # "integer" check but is not what we mean.
                assert type(value) is int, f"{name}.resources.{res} = {value!r}"
                assert value >= 0


def test_gpu_workers_autoscale_from_zero(raw_config, offline):
    prepared = _prepared(raw_config)
    head = prepared["head_node_type"]
    gpu_types = {
        name: nt
        for name, nt in prepared["available_node_types"].items()
        if nt["resources"].get("GPU", 0) > 0
    }
    assert gpu_types, "no GPU worker type"
    assert head not in gpu_types
    for name, nt in gpu_types.items():
        assert nt["min_workers"] == 0, name
        assert nt["max_workers"] >= 1, name
    assert prepared["available_node_types"][head]["resources"].get("GPU", 0) == 0


def test_no_ray_default_commands_leak_in(raw_config, offline):
    # prepare_config merges over ray/autoscaler/aws/defaults.yaml one top-level
    # key at a time; a missing command list silently becomes Ray's default
    # (which installs a nightly Ray wheel). Every list must be ours.
    for key in COMMAND_KEYS:
        assert key in raw_config, f"{key} missing: Ray's default would be used"
    prepared = _prepared(raw_config)
    for where, cmd in _all_commands(prepared):
        assert "ray-wheels" not in cmd and "ray-3.0.0.dev0" not in cmd, where
        assert "dashboard-host=0.0.0.0" not in cmd, where


def test_setup_installs_project_pins_and_boto3(raw_config):
    setup = " ".join(raw_config["setup_commands"])
    assert re.search(r"pip install .*-e ~/crkd-tune", setup)
    for pin in (
        "torch==2.14.1",
        "torchvision==0.29.1",
        "==2.60.0",
        "optuna==5.0.0",
        "mlflow==3.17.2",
        "pyarrow==25.0.1",
        "scikit-learn==1.9.1",
        "scipy==1.17.1",
        "boto3",
    ):
        assert pin in setup, pin
    # `ray job submit` needs the job server, which comes with ray[default].
    assert re.search(r"ray\[[^\]]*default[^\]]*\]==2\.60\.0", setup)
    assert raw_config["file_mounts"].get("~/crkd-tune") == "."


# --- negative cases: the validator must actually catch these -----------------


def _first_worker_type(cfg):
    return next(n for n in cfg["available_node_types"] if n != cfg["head_node_type"])


def test_bogus_node_type_key_is_rejected(raw_config, offline):
    bad = copy.deepcopy(raw_config)
    bad["available_node_types"][_first_worker_type(bad)]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(_prepared(bad))


def test_bogus_top_level_key_is_rejected(raw_config, offline):
    bad = copy.deepcopy(raw_config)
    bad["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(_prepared(bad))


def test_fractional_gpu_resource_is_rejected(raw_config, offline):
    bad = copy.deepcopy(raw_config)
    bad["available_node_types"][_first_worker_type(bad)]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(_prepared(bad))


def test_unknown_head_node_type_is_rejected(raw_config, offline):
    bad = copy.deepcopy(raw_config)
    bad["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError):
        validate_config(_prepared(bad))
