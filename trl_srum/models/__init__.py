"""Unified models that implement `trl_srum.protocol.UnifiedModel`, and one loader for all of them."""

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..plugins import load_plugins
from .bagel import BagelConfig, BagelModel
from .bagel.conversion import CHECKPOINT_FILE_PATTERNS as BAGEL_CHECKPOINT_FILE_PATTERNS
from .bagel.conversion import is_official_checkpoint as is_official_bagel_checkpoint
from .blip3o import Blip3oConfig, Blip3oModel
from .blip3o.conversion import OFFICIAL_MODEL_TYPES as BLIP3O_OFFICIAL_MODEL_TYPES
from .blip3o.conversion import checkpoint_file_patterns as blip3o_checkpoint_file_patterns


# model_type in config.json -> the class whose from_pretrained reads that folder (ours or an official release).
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    BagelConfig.model_type: BagelModel,
    Blip3oConfig.model_type: Blip3oModel,
    **dict.fromkeys(BLIP3O_OFFICIAL_MODEL_TYPES, Blip3oModel),
}


# name -> folder of a model that a plug-in makes loadable by name (`register_model_alias`)
MODEL_ALIASES: dict[str, Path] = {}


def register_model_alias(name: str, folder: str | os.PathLike) -> None:
    """Let `load_unified_model(name)` load the model in `folder` (e.g. a model a plug-in ships; `trl_srum.plugins`).

    Use a name no Hub id or relative path can be, such as `"my-plugin:model"`.
    """
    MODEL_ALIASES[name] = Path(folder)


# Keyword arguments of `from_pretrained` that say where a Hub checkpoint comes from; they are used to download it and
# are not passed on, since the model is then loaded from the local snapshot like any folder.
_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")


def _hub_json(repo_id: str, filename: str, hub_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON file of a Hub repository, or None when the Hub says the repository has no such file.

    Offline, a file that is not in the cache raises (huggingface_hub's error names it): absence cannot be told then.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(repo_id, filename, **hub_kwargs)).read_text())
    except RemoteEntryNotFoundError:
        return None


def _download_checkpoint(repo_id: str, hub_kwargs: dict[str, Any]) -> Path:
    """Download the files of a Hub checkpoint that loading needs, and return the local snapshot folder.

    The family is told from `config.json` (ours, or an official BLIP3o release) or, for the official BAGEL release
    whose `config.json` has no `model_type`, from its `llm_config.json`; only that family's files are fetched.
    """
    from huggingface_hub import snapshot_download

    config = _hub_json(repo_id, "config.json", hub_kwargs) or {}
    model_type = config.get("model_type")
    if model_type in (BagelConfig.model_type, Blip3oConfig.model_type, *BLIP3O_OFFICIAL_MODEL_TYPES):
        patterns = (
            list(BAGEL_CHECKPOINT_FILE_PATTERNS)
            if model_type == BagelConfig.model_type
            else blip3o_checkpoint_file_patterns(config)
        )
    elif model_type is None and _hub_json(repo_id, "llm_config.json", hub_kwargs) is not None:
        patterns = list(BAGEL_CHECKPOINT_FILE_PATTERNS)
    else:
        raise ValueError(
            f"{repo_id}: the Hub repository holds no unified model trl-srum supports (config.json model_type "
            f"{model_type!r}, not one of {sorted(MODEL_CLASSES)}, and no llm_config.json of an official BAGEL release)"
        )
    return Path(snapshot_download(repo_id, allow_patterns=patterns, **hub_kwargs))


def load_unified_model(
    name_or_path: str | os.PathLike, device: str | torch.device | None = None, **kwargs: Any
) -> PreTrainedModel:
    """Load any supported unified model from a local folder (ours or an official release), a Hub id, or a name a
    plug-in registered (`register_model_alias`).

    A Hub id is downloaded first (only the files loading reads; `revision`, `token` and `cache_dir` apply) and its
    snapshot is then loaded exactly as the same folder on disk would be, so an official BAGEL or BLIP3o release loads
    by id as it does from a download.

    `device` puts the whole model on one device while it loads (`device_map={"": device}`; quantized weights are
    placed there as they are quantized), as stage 1 needs before any trainer moves it. `kwargs` go to
    `from_pretrained` (e.g. `dtype`, `device_map`, `quantization_config`).

    Raises:
        FileNotFoundError: for a local path that does not exist.
        ValueError: naming the folder or repository when it holds no model this package can load.
    """
    if device is not None:
        device = torch.device(device)
        # On the CPU an unquantized model needs no map (that is where it loads anyway).
        if device.type != "cpu" or kwargs.get("quantization_config") is not None:
            kwargs.setdefault("device_map", {"": device})
    hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KWARGS if key in kwargs}
    load_plugins()
    if str(name_or_path) in MODEL_ALIASES:
        return _load_folder(MODEL_ALIASES[str(name_or_path)], **kwargs)
    path = Path(name_or_path)
    if path.is_dir():
        return _load_folder(path, **kwargs)
    if path.exists() or path.is_absolute() or str(name_or_path).startswith("."):
        raise FileNotFoundError(f"no model folder at {name_or_path}")
    model = _load_folder(_download_checkpoint(str(name_or_path), hub_kwargs), **kwargs)
    # As transformers does for a Hub id: the model names its repository (model cards give it as the base model).
    model.config._name_or_path = str(name_or_path)
    return model


def _load_folder(path: Path, **kwargs: Any) -> PreTrainedModel:
    if is_official_bagel_checkpoint(path):
        return BagelModel.from_pretrained(path, **kwargs)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path}: no config.json, and not an official BAGEL release folder")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{path}: model_type {model_type!r} is not a unified model trl-srum supports ({sorted(MODEL_CLASSES)})"
        )
    return MODEL_CLASSES[model_type].from_pretrained(path, **kwargs)


__all__ = [
    "MODEL_ALIASES",
    "MODEL_CLASSES",
    "BagelConfig",
    "BagelModel",
    "Blip3oConfig",
    "Blip3oModel",
    "load_unified_model",
    "register_model_alias",
]
