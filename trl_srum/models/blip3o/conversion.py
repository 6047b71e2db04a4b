"""Reading official BLIP3o checkpoints (Hub `BLIP3o/BLIP3o-Model-8B`, `-4B`) as they are.

The official checkpoint was saved by transformers 4.51 from `blip3oQwenForInferenceLM`, a subclass of
`Qwen2_5_VLForConditionalGeneration`: its `config.json` is a flat Qwen2.5-VL config with BLIP3o's extra fields, and
its keys follow the 4.51 module tree, with the text decoder at `model.`, the vision tower at `visual.`, and BLIP3o's own
modules under `model.` too. This module maps both onto [`Blip3oModel`], whose backbone is a transformers >= 5
`Qwen2_5_VLForConditionalGeneration` (text decoder at `model.language_model.`, vision tower at `model.visual.`).
"""

import json
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLConfig
from transformers.utils import cached_file

from .configuration_blip3o import Blip3oConfig, Blip3oDiTConfig


OFFICIAL_MODEL_TYPES = ("blip3o_qwen", "blip3o_qwen_inference")
# BLIP3o's own fields in the official flat config; everything else is Qwen2.5-VL's
_OFFICIAL_BLIP3O_FIELDS = (
    "model_type",
    "n_query",
    "gen_pooling",
    "gen_vision_tower",
    "vision_tower_pretrained",
    "mm_use_im_patch_token",
    "mm_use_im_start_end",
)
# (official prefix, our prefix), tried in order: BLIP3o's modules first, since they also sit under `model.`
_OFFICIAL_KEY_PREFIXES = (
    ("model.latent_queries", "latent_queries"),
    ("model.dit.model.", "dit."),
    ("model.", "backbone.model.language_model."),
    ("visual.", "backbone.model.visual."),
    ("lm_head.", "backbone.lm_head."),
)
# EVA-CLIP, present only when the trainer saved the loaded tower; it only encodes real images, which SRUM never does
_IGNORED_OFFICIAL_PREFIX = "model.gen_vision_tower."
# the official `diffusion-decoder/` stores its UNet and VAE weights as `diffusion_pytorch_model.bf16.safetensors`
OFFICIAL_DECODER_VARIANT = "bf16"
# What loading reads from a checkpoint of either layout: configs, processor and tokenizer files, the backbone + DiT
# weights (possibly sharded) and the pixel decoder's configs and weights in the variant that is loaded. A Hub download
# fetches only these (not, e.g., the decoder's weights in a second precision or a training state).
_CHECKPOINT_FILE_PATTERNS = ("*.json", "*.jinja", "merges.txt", "model.safetensors", "model-*-of-*.safetensors")


def checkpoint_file_patterns(config_dict: Mapping[str, Any]) -> list[str]:
    """Glob patterns of the files a checkpoint whose `config.json` is `config_dict` needs to load."""
    official = config_dict.get("model_type") in OFFICIAL_MODEL_TYPES
    variant = f".{OFFICIAL_DECODER_VARIANT}" if official else ""
    return [*_CHECKPOINT_FILE_PATTERNS, f"diffusion-decoder/*/diffusion_pytorch_model{variant}.safetensors"]


# a sparse embedding table, as stored by the tiny fixture: the listed rows hold values, every other row is zero
_SPARSE_EMBEDDING_KEY = "model.embed_tokens.weight"


def read_official_config(pretrained_model_name_or_path: str, **hub_kwargs: Any) -> dict[str, Any] | None:
    """The `config.json` of an official BLIP3o checkpoint as a dict, or `None` when the folder is in our own layout."""
    config_file = cached_file(pretrained_model_name_or_path, "config.json", **hub_kwargs)
    with open(config_file) as f:
        config_dict = json.load(f)
    return config_dict if config_dict.get("model_type") in OFFICIAL_MODEL_TYPES else None


def official_config_to_blip3o(
    official_config: Mapping[str, Any], dit_config: Blip3oDiTConfig | Mapping[str, Any] | None = None
) -> Blip3oConfig:
    """Build a [`Blip3oConfig`] from an official flat config.

    Args:
        official_config (`Mapping`): the official `config.json` (a flat transformers-4.51 Qwen2.5-VL config).
        dit_config ([`Blip3oDiTConfig`] or `Mapping`, *optional*):
            The DiT configuration. Official checkpoints store none because the official code always builds the
            default DiT, so it defaults to [`Blip3oDiTConfig`]'s defaults. A mapping may be an official
            `NextDiTCrossAttnConfig` dict; it must describe a patch-size-1 DiT without a learned sigma.
    """
    backbone_kwargs = {key: value for key, value in official_config.items() if key not in _OFFICIAL_BLIP3O_FIELDS}
    if dit_config is None:
        dit_config = Blip3oDiTConfig()
    elif not isinstance(dit_config, Blip3oDiTConfig):
        if dit_config.get("patch_size", 1) != 1 or dit_config.get("learn_sigma", False):
            raise ValueError(
                f"Only a DiT with patch_size 1 and learn_sigma False is supported, got patch_size="
                f"{dit_config.get('patch_size')} and learn_sigma={dit_config.get('learn_sigma')}."
            )
        dit_fields = Blip3oDiTConfig.__dataclass_fields__
        dit_config = Blip3oDiTConfig(**{key: value for key, value in dit_config.items() if key in dit_fields})
    return Blip3oConfig(
        backbone_config=Qwen2_5_VLConfig(**backbone_kwargs),
        dit_config=dit_config,
        num_queries=official_config["n_query"],
    )


def load_official_state_dict(pretrained_model_name_or_path: str, **hub_kwargs: Any) -> dict[str, torch.Tensor]:
    """Every tensor of an official checkpoint (`model.safetensors`, or shards listed in its index), on the CPU."""
    index_file = cached_file(
        pretrained_model_name_or_path,
        "model.safetensors.index.json",
        _raise_exceptions_for_missing_entries=False,
        **hub_kwargs,
    )
    if index_file is None:
        shard_names = ["model.safetensors"]
    else:
        with open(index_file) as f:
            shard_names = sorted(set(json.load(f)["weight_map"].values()))
    state_dict = {}
    for shard_name in shard_names:
        state_dict.update(load_file(cached_file(pretrained_model_name_or_path, shard_name, **hub_kwargs)))
    return state_dict


def official_state_dict_to_blip3o(
    state_dict: Mapping[str, torch.Tensor], config: Blip3oConfig
) -> dict[str, torch.Tensor]:
    """Rename official keys to [`Blip3oModel`]'s and densify a sparse embedding table.

    Raises:
        ValueError: on a key that belongs to no known module, or when the checkpoint's latent queries are missing or
            their number differs from `config.num_queries`.
    """
    converted = {}
    for key, tensor in state_dict.items():
        if key.startswith(_IGNORED_OFFICIAL_PREFIX) or key.startswith(_SPARSE_EMBEDDING_KEY + "."):
            continue
        for official_prefix, prefix in _OFFICIAL_KEY_PREFIXES:
            if key.startswith(official_prefix):
                converted[prefix + key.removeprefix(official_prefix)] = tensor
                break
        else:
            raise ValueError(f"Unexpected key {key!r} in the official BLIP3o checkpoint.")

    sparse_rows = state_dict.get(_SPARSE_EMBEDDING_KEY + ".rows")
    if sparse_rows is not None:
        values = state_dict[_SPARSE_EMBEDDING_KEY + ".values"]
        dense = values.new_zeros(config.backbone_config.text_config.vocab_size, values.shape[1])
        dense[sparse_rows] = values
        converted["backbone.model.language_model.embed_tokens.weight"] = dense

    if "latent_queries" not in converted:
        raise ValueError(
            "The official BLIP3o checkpoint has no `model.latent_queries`; it is not a BLIP3o checkpoint."
        )
    num_queries = converted["latent_queries"].shape[1]
    if num_queries != config.num_queries:
        raise ValueError(
            f"The checkpoint has {num_queries} latent queries but the config asks for num_queries="
            f"{config.num_queries}; the official code reads `n_query` from config.json, so the two must agree."
        )
    return converted
