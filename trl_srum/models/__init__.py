"""Unified models that implement `trl_srum.protocol.UnifiedModel`, and one loader for all of them."""

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from .bagel import BagelConfig, BagelModel
from .blip3o import Blip3oConfig, Blip3oModel
from .blip3o.conversion import OFFICIAL_MODEL_TYPES as BLIP3O_OFFICIAL_MODEL_TYPES


# model_type in config.json -> the class whose from_pretrained reads that folder (ours or an official release).
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    BagelConfig.model_type: BagelModel,
    Blip3oConfig.model_type: Blip3oModel,
    **dict.fromkeys(BLIP3O_OFFICIAL_MODEL_TYPES, Blip3oModel),
}


def _is_official_bagel_folder(path: Path) -> bool:
    # The official BAGEL release has no config our loader can read, only these files.
    return (path / "ema.safetensors").is_file() and (path / "llm_config.json").is_file()


def load_unified_model(
    name_or_path: str | os.PathLike, device: str | torch.device | None = None, **kwargs: Any
) -> PreTrainedModel:
    """Load any supported unified model from a local folder (ours or an official release) or a Hub id.

    `device` puts the whole model on one device while it loads (`device_map={"": device}`; quantized weights are
    placed there as they are quantized), as stage 1 needs before any trainer moves it. `kwargs` go to
    `from_pretrained` (e.g. `dtype`, `device_map`, `quantization_config`).

    Raises:
        ValueError: naming the folder when it holds no model this package can load.
    """
    if device is not None:
        device = torch.device(device)
        # On the CPU an unquantized model needs no map (that is where it loads anyway).
        if device.type != "cpu" or kwargs.get("quantization_config") is not None:
            kwargs.setdefault("device_map", {"": device})
    path = Path(name_or_path)
    if not path.is_dir() and (path.exists() or path.is_absolute() or str(name_or_path).startswith(".")):
        raise FileNotFoundError(f"no model folder at {name_or_path}")
    if not path.is_dir():
        from huggingface_hub import hf_hub_download

        config_file = Path(hf_hub_download(str(name_or_path), "config.json"))
    elif _is_official_bagel_folder(path):
        return BagelModel.from_pretrained(path, **kwargs)
    else:
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{path} has no config.json and is not an official BAGEL release folder")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{name_or_path}: model_type {model_type!r} is not a unified model trl-srum supports "
            f"({sorted(MODEL_CLASSES)})"
        )
    return MODEL_CLASSES[model_type].from_pretrained(name_or_path, **kwargs)


__all__ = ["MODEL_CLASSES", "BagelConfig", "BagelModel", "Blip3oConfig", "Blip3oModel", "load_unified_model"]
