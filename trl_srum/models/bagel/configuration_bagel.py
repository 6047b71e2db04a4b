"""Configuration of BAGEL (arXiv 2505.14683): a Qwen2 Mixture-of-Transformers LLM, a SigLIP NaViT encoder and a FLUX VAE.

The defaults are the values of the released BAGEL-7B-MoT checkpoint. `BagelConfig.from_pretrained` also reads a folder
laid out like the official Hugging Face repository (`llm_config.json`, `vit_config.json`, `ema.safetensors`, ...), see
`conversion.py`.
"""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, Qwen2Config, SiglipVisionConfig
from transformers.configuration_utils import SubConfigSpec

from . import conversion


# Qwen2.5-7B-Instruct, as BAGEL-7B-MoT's `llm_config.json` (qk-norm is always on in BAGEL and is not a config field).
LLM_7B_DEFAULTS: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "tie_word_embeddings": False,
}

# SigLIP-so400m/14 at 980 px. BAGEL uses the penultimate layer's features, so 26 of the 27 layers exist.
VIT_7B_DEFAULTS: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 980,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}

# The FLUX.1 autoencoder, as keyword arguments of diffusers' `AutoencoderKL`.
FLUX_VAE_CONFIG: dict[str, Any] = conversion.ldm_to_diffusers_vae_config(
    {
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "z_channels": 16,
        "scale_factor": 0.3611,
        "shift_factor": 0.1159,
    }
)


@strict
class BagelConfig(PreTrainedConfig):
    r"""
    Configuration of a [`BagelModel`].

    Args:
        llm_config (`dict` or [`~transformers.Qwen2Config`], *optional*):
            The language model. Both experts of the Mixture-of-Transformers share this shape.
        vit_config (`dict` or [`~transformers.SiglipVisionConfig`], *optional*):
            The understanding image encoder; `num_hidden_layers` counts the layers that exist (26 for the 7B).
        vae_config (`dict`, *optional*):
            Keyword arguments of diffusers' [`~diffusers.AutoencoderKL`]; defaults to the FLUX.1 autoencoder.
        visual_und (`bool`, *optional*, defaults to `True`):
            Whether the model holds the ViT, its connector and position table. Turn off to train generation only.
        use_lm_head (`bool`, *optional*, defaults to `True`):
            Whether the model holds the text head. Without it the model cannot produce text (no understanding, no
            think mode), which saves 0.5 B parameters when only generation is trained.
        latent_patch_size (`int`, *optional*, defaults to 2):
            Side of the square of VAE latent pixels that one LLM token covers.
        max_latent_size (`int`, *optional*, defaults to 64):
            Side of the largest latent token grid (the latent position table is `max_latent_size ** 2` rows).
        vit_max_num_patch_per_side (`int`, *optional*, defaults to 70):
            Side of the largest ViT patch grid (the ViT position tables are this squared).
        connector_act (`str`, *optional*, defaults to `"gelu_pytorch_tanh"`):
            Activation between the two layers of the ViT-to-LLM connector.
        timestep_shift (`float`, *optional*, defaults to 1.0):
            Shift `s` applied to training timesteps, `t <- s t / (1 + (s - 1) t)`. The sampler has its own shift.
        vae_min_image_size (`int`, *optional*, defaults to 512):
            Shortest edge an image is resized to before the VAE (and, for understanding, before the ViT resize).
        vit_min_image_size (`int`, *optional*, defaults to 224):
            Shortest edge an image is resized to before the ViT.
        im_start_token_id (`int`, *optional*, defaults to 151644):
            `<|im_start|>`: opens every text segment and starts text generation.
        im_end_token_id (`int`, *optional*, defaults to 151645):
            `<|im_end|>`: closes every text segment and stops text generation.
        vision_start_token_id (`int`, *optional*, defaults to 151652):
            `<|vision_start|>`: opens every image chunk.
        vision_end_token_id (`int`, *optional*, defaults to 151653):
            `<|vision_end|>`: closes every image chunk.
        supports_grounding (`bool`, *optional*, defaults to `False`):
            Whether the model was trained to answer `trl_srum.prompt_text.grounding_prompt` with boxes.
        prompt_style (`str`, *optional*, defaults to `"detailed"`):
            The style of `trl_srum.judge.prompts` the model was trained on: `"detailed"` for real checkpoints,
            `"concise"` for tiny models trained from scratch with a word-level vocabulary.
    """

    model_type = "bagel"
    sub_configs_defaults = {
        "llm_config": SubConfigSpec(config_class=Qwen2Config, init_kwargs=LLM_7B_DEFAULTS),
        "vit_config": SubConfigSpec(config_class=SiglipVisionConfig, init_kwargs=VIT_7B_DEFAULTS),
    }

    llm_config: dict | PreTrainedConfig | None = None
    vit_config: dict | PreTrainedConfig | None = None
    vae_config: dict | None = None
    visual_und: bool = True
    use_lm_head: bool = True
    latent_patch_size: int = 2
    max_latent_size: int = 64
    vit_max_num_patch_per_side: int = 70
    connector_act: str = "gelu_pytorch_tanh"
    timestep_shift: float = 1.0
    vae_min_image_size: int = 512
    vit_min_image_size: int = 224
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    supports_grounding: bool = False
    prompt_style: str = "detailed"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.vae_config is None:
            self.vae_config = dict(FLUX_VAE_CONFIG)
        for name in conversion.SPECIAL_TOKENS:
            token_id = getattr(self, name)
            if not 0 <= token_id < self.llm_config.vocab_size:
                raise ValueError(
                    f"{name}={token_id} is outside the vocabulary of size {self.llm_config.vocab_size}; set the ids "
                    "of the special tokens from the tokenizer."
                )

    @property
    def latent_channels(self) -> int:
        return self.vae_config["latent_channels"]

    @property
    def latent_dim(self) -> int:
        """Features of one latent token: a `latent_patch_size`² patch of `latent_channels` channels."""
        return self.latent_channels * self.latent_patch_size**2

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)

    @property
    def latent_stride(self) -> int:
        """Pixels per latent token side (16 for the 7B: VAE downsample 8 x patch 2)."""
        return self.vae_downsample * self.latent_patch_size

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        # A folder in the official layout has no Bagel `config.json` of ours: assemble one from its json files.
        if conversion.is_official_checkpoint(pretrained_model_name_or_path):
            for download_kwarg in ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies"):
                kwargs.pop(download_kwarg, None)
            return conversion.official_config_dict(pretrained_model_name_or_path), kwargs
        return super().get_config_dict(pretrained_model_name_or_path, **kwargs)


__all__ = ["BagelConfig"]
