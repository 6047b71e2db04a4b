"""SRUM: fine-grained self-rewarding post-training for unified multimodal models, in the TRL style."""

import importlib
from typing import Any


__version__ = "0.1.0"

# Heavy names load on first use, so that e.g. `import trl_srum.shapes` stays free of torch/transformers.
_LAZY_EXPORTS = {
    "SRUMConfig": "srum_config",
    "SRUMTrainer": "srum_trainer",
    "build_reward_map": "reward_map",
    "srum_loss": "loss",
}

__all__ = list(_LAZY_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        return getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
