"""crkd: the two-stage Cr-KD trainer for Novel Class Discovery (ICCV 2023).

Public API: configuration (`Config`, `preset`, `load_config`, `apply_overrides`,
`stage1_key`), data (`load_data`), stages (`Pretrain`, `Discover`), losses and
metrics in `crkd.losses` / `crkd.metrics`. Never imports Ray or MLflow.
"""
from .config import Config, apply_overrides, load_config, preset, stage1_key, validate
from .data import load_data
from .errors import CheckpointError, ConfigError, CrkdError, DataError, NonFiniteLoss
from .stages import Discover, Pretrain

__all__ = ["Config", "apply_overrides", "load_config", "preset", "stage1_key", "validate",
           "load_data", "Discover", "Pretrain", "CheckpointError", "ConfigError", "CrkdError",
           "DataError", "NonFiniteLoss"]
