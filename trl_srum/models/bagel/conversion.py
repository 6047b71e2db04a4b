"""Reading a checkpoint folder in the layout of the official BAGEL release, and checking checkpoint keys.

The official Hugging Face repository (`ByteDance-Seed/BAGEL-7B-MoT`) holds:

- `ema.safetensors`: the whole model in the official key names. Our modules are named after those keys, so these
  tensors load with no renaming; the two fixed sin-cos tables in it are recomputed instead of loaded.
- `ae.safetensors`: the FLUX autoencoder in the BFL/LDM layout, converted here to diffusers' `AutoencoderKL` layout
  with diffusers' own `convert_ldm_vae_checkpoint`.
- `llm_config.json`, `vit_config.json` and a `config.json` that the official code does not read; the official loader
  then overrides a few values (26 of the 27 ViT layers are used, qk-norm on, untied embeddings).
- the Qwen2.5 tokenizer files, which hold the four special tokens BAGEL uses.

Test fixtures in the same layout may add `config.json` with Bagel-level settings, `ae_config.json` (a VAE of another
size) and `special_tokens.json` (ids, when there is no tokenizer).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors import safe_open


OFFICIAL_WEIGHTS_NAME = "ema.safetensors"
OFFICIAL_VAE_WEIGHTS_NAME = "ae.safetensors"
SPECIAL_TOKENS = {
    "im_start_token_id": "<|im_start|>",
    "im_end_token_id": "<|im_end|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
# Everything a BAGEL checkpoint of either layout may hold that loading reads: the official release (weights, the
# autoencoder, the three configs, the Qwen2.5 tokenizer) or a save_pretrained folder (possibly sharded). A Hub
# download fetches only these, never e.g. a README's images or other formats of the weights.
CHECKPOINT_FILE_PATTERNS = (
    "*.json",
    OFFICIAL_WEIGHTS_NAME,
    OFFICIAL_VAE_WEIGHTS_NAME,
    "model.safetensors",
    "model-*-of-*.safetensors",
    "merges.txt",
)

# Bagel-level settings of the official `config.json` that map onto `BagelConfig` fields of the same name.
_OFFICIAL_BAGEL_FIELDS = (
    "visual_und",
    "latent_patch_size",
    "max_latent_size",
    "vit_max_num_patch_per_side",
    "connector_act",
    "timestep_shift",
)

# Checkpoint keys that are never loaded: both sin-cos tables are functions of the config (the official training code
# recomputes them too).
FIXED_TABLE_KEYS = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")
UNDERSTANDING_PREFIXES = ("vit_model.", "connector.", "vit_pos_embed.")
LM_HEAD_PREFIX = "language_model.lm_head."

Shape = tuple[int, ...]


def is_official_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a local folder in the official release layout (`llm_config.json` + `ema.safetensors`)."""
    folder = Path(path)
    return (folder / "llm_config.json").is_file() and (folder / OFFICIAL_WEIGHTS_NAME).is_file()


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def ldm_to_diffusers_vae_config(ldm_config: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the BFL/LDM autoencoder hyper-parameters (`ch`, `ch_mult`, ...) into `AutoencoderKL` keyword arguments.

    The FLUX autoencoder has no quant convs and normalises latents with a scale and a shift.
    """
    num_levels = len(ldm_config["ch_mult"])
    if ldm_config.get("quant_conv") or ldm_config.get("post_quant_conv"):
        raise ValueError("BAGEL's autoencoder has no quant_conv / post_quant_conv; this ae_config.json asks for them.")
    if ldm_config.get("attn_resolutions"):
        raise ValueError(
            f"attn_resolutions={ldm_config['attn_resolutions']}: attention inside the down/up levels is not part of "
            "the FLUX autoencoder and diffusers' AutoencoderKL has none."
        )
    return {
        "in_channels": ldm_config.get("in_channels", 3),
        "out_channels": ldm_config.get("out_ch", 3),
        "down_block_types": ["DownEncoderBlock2D"] * num_levels,
        "up_block_types": ["UpDecoderBlock2D"] * num_levels,
        "block_out_channels": [ldm_config["ch"] * multiplier for multiplier in ldm_config["ch_mult"]],
        "layers_per_block": ldm_config["num_res_blocks"],
        "latent_channels": ldm_config["z_channels"],
        "norm_num_groups": ldm_config.get("groupnorm_groups", 32),
        "scaling_factor": ldm_config["scale_factor"],
        "shift_factor": ldm_config["shift_factor"],
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": ldm_config.get("mid_attention", True),
    }


def _read_json(path: Path) -> dict[str, Any]:
    with open(path) as file:
        return json.load(file)


def official_special_token_ids(folder: str | os.PathLike) -> dict[str, int]:
    """Ids of the four special tokens: from `special_tokens.json`, else from the tokenizer, else none (defaults)."""
    folder = Path(folder)
    if (folder / "special_tokens.json").is_file():
        by_token = _read_json(folder / "special_tokens.json")
        missing = [token for token in SPECIAL_TOKENS.values() if token not in by_token]
        if missing:
            raise ValueError(f"{folder / 'special_tokens.json'} does not name the special tokens {missing}.")
        return {field: by_token[token] for field, token in SPECIAL_TOKENS.items()}
    if has_tokenizer_files(folder):
        from transformers import AutoTokenizer

        return special_token_ids_from_tokenizer(AutoTokenizer.from_pretrained(folder))
    return {}


def special_token_ids_from_tokenizer(tokenizer: Any) -> dict[str, int]:
    """Look the four special tokens up in `tokenizer`; raise naming the ones it does not know."""
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in SPECIAL_TOKENS.values() if token not in vocabulary]
    if missing:
        raise ValueError(
            f"The tokenizer has no special tokens {missing}; BAGEL needs {list(SPECIAL_TOKENS.values())} "
            "(the Qwen2.5 tokenizer has all four)."
        )
    return {field: vocabulary[token] for field, token in SPECIAL_TOKENS.items()}


def official_config_dict(folder: str | os.PathLike) -> dict[str, Any]:
    """A `BagelConfig` dict for a folder in the official layout, with the official loader's overrides applied."""
    folder = Path(folder)
    llm_config = _read_json(folder / "llm_config.json")
    # The official loader forces these; `qk_norm` and `layer_module` are not fields of ours (qk-norm is always on).
    for official_only in ("qk_norm", "layer_module", "architectures"):
        llm_config.pop(official_only, None)
    llm_config["tie_word_embeddings"] = False

    vit_config = _read_json(folder / "vit_config.json")
    vit_config.pop("architectures", None)
    if vit_config.pop("rope", False):
        raise ValueError(f"{folder / 'vit_config.json'} asks for a rotary ViT; BAGEL-7B-MoT runs it with rope=False.")
    # BAGEL uses the penultimate layer's features: the last layer is not in the checkpoint.
    vit_config["num_hidden_layers"] -= 1
    vit_config["vision_use_head"] = False

    config_dict: dict[str, Any] = {"model_type": "bagel", "llm_config": llm_config, "vit_config": vit_config}
    if (folder / "config.json").is_file():
        bagel_settings = _read_json(folder / "config.json")
        if bagel_settings.get("interpolate_pos", False):
            raise ValueError(f"{folder / 'config.json'} sets interpolate_pos=True; only extrapolated positions exist.")
        config_dict.update({name: bagel_settings[name] for name in _OFFICIAL_BAGEL_FIELDS if name in bagel_settings})
    if (folder / "ae_config.json").is_file():
        config_dict["vae_config"] = ldm_to_diffusers_vae_config(_read_json(folder / "ae_config.json"))
    config_dict.update(official_special_token_ids(folder))
    # Tells transformers' loader which file holds the weights; it is dropped when the config is saved.
    config_dict["transformers_weights"] = OFFICIAL_WEIGHTS_NAME
    return config_dict


def official_vae_state_dict(ldm_state_dict: Mapping[str, torch.Tensor], vae_config: Mapping[str, Any]) -> dict:
    """Convert the BFL/LDM autoencoder keys of `ae.safetensors` into diffusers' `AutoencoderKL` keys.

    Raises:
        ValueError: when some keys of the file do not map onto the autoencoder.
    """
    converted = convert_ldm_vae_checkpoint(dict(ldm_state_dict), dict(vae_config))
    if len(converted) != len(ldm_state_dict):
        raise ValueError(
            f"{OFFICIAL_VAE_WEIGHTS_NAME} has {len(ldm_state_dict)} tensors but only {len(converted)} map onto a "
            f"diffusers AutoencoderKL with block_out_channels={vae_config['block_out_channels']} and "
            f"layers_per_block={vae_config['layers_per_block']}: its layout or size differs from the VAE config."
        )
    return converted


def safetensors_shapes(path: str | os.PathLike) -> dict[str, Shape]:
    """Key -> shape of a safetensors file, read from its header only."""
    with safe_open(path, framework="pt") as file:
        return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}


def checkpoint_shapes(folder: str | os.PathLike, vae_config: Mapping[str, Any]) -> dict[str, Shape]:
    """Key -> shape of every tensor the folder provides for a `BagelModel`, in our key names.

    In the official layout that is `ema.safetensors` plus the converted `ae.safetensors` under `vae.`; otherwise the
    transformers checkpoint (`model.safetensors` or its sharded index).
    """
    folder = Path(folder)
    if is_official_checkpoint(folder):
        shapes = safetensors_shapes(folder / OFFICIAL_WEIGHTS_NAME)
        if (folder / OFFICIAL_VAE_WEIGHTS_NAME).is_file():
            vae_shapes = safetensors_shapes(folder / OFFICIAL_VAE_WEIGHTS_NAME)
            shapes.update(vae_shapes_to_diffusers(vae_shapes, vae_config))
        return shapes
    if (folder / "model.safetensors").is_file():
        return safetensors_shapes(folder / "model.safetensors")
    if (folder / "model.safetensors.index.json").is_file():
        shards = sorted(set(_read_json(folder / "model.safetensors.index.json")["weight_map"].values()))
        return {key: shape for shard in shards for key, shape in safetensors_shapes(folder / shard).items()}
    raise FileNotFoundError(
        f"{folder} holds neither {OFFICIAL_WEIGHTS_NAME} + llm_config.json (official layout) nor model.safetensors "
        "(a folder written by save_pretrained); BagelModel loads local folders (download a Hub repository first, "
        "e.g. with huggingface_hub.snapshot_download)."
    )


def vae_shapes_to_diffusers(ldm_shapes: Mapping[str, Shape], vae_config: Mapping[str, Any]) -> dict[str, Shape]:
    """Run the VAE key conversion on empty meta tensors, to check keys and shapes without reading the weights."""
    meta_tensors = {key: torch.empty(shape, device="meta") for key, shape in ldm_shapes.items()}
    converted = official_vae_state_dict(meta_tensors, vae_config)
    return {f"vae.{key}": tuple(tensor.shape) for key, tensor in converted.items()}


def intentionally_absent_patterns(visual_und: bool, use_lm_head: bool) -> list[str]:
    """Regexes of checkpoint keys that a model with these switches does not load."""
    patterns = [rf"^{re.escape(key)}$" for key in FIXED_TABLE_KEYS]
    if not visual_und:
        patterns += [rf"^{re.escape(prefix)}" for prefix in UNDERSTANDING_PREFIXES]
    if not use_lm_head:
        patterns.append(rf"^{re.escape(LM_HEAD_PREFIX)}")
    return patterns


def check_checkpoint_keys(
    expected: Mapping[str, Shape], found: Mapping[str, Shape], skipped_patterns: Sequence[str], source: str
) -> None:
    """Raise a `ValueError` naming every missing, unexpected or wrongly shaped key.

    Args:
        expected: key -> shape of every tensor the model loads.
        found: key -> shape of every tensor the checkpoint holds, in our key names.
        skipped_patterns: regexes of checkpoint keys the model deliberately does not load.
        source: the checkpoint's name, for the message.
    """
    skipped = re.compile("|".join(skipped_patterns)) if skipped_patterns else None
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(key for key in set(found) - set(expected) if skipped is None or not skipped.search(key))
    mismatched = sorted(
        f"{key}: checkpoint {found[key]} vs model {expected[key]}"
        for key in set(expected) & set(found)
        if tuple(found[key]) != tuple(expected[key])
    )
    problems = []
    for title, names in (("missing", missing), ("unexpected", unexpected), ("with another shape", mismatched)):
        if names:
            shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
            problems.append(f"{len(names)} keys {title}: {shown}")
    if problems:
        raise ValueError(f"The checkpoint {source} does not match the BAGEL config. " + "; ".join(problems) + ".")
