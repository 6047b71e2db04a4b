"""Configurations of BLIP3o: a frozen Qwen2.5-VL backbone, learnable queries and a Lumina-Next-style flow DiT."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, Qwen2_5_VLConfig


@strict
class Blip3oDiTConfig(PreTrainedConfig):
    r"""
    Configuration of [`Blip3oDiT`], the flow-matching transformer that draws EVA-CLIP feature grids.

    Field names follow the official `NextDiTCrossAttnConfig`, so its JSON loads as is. The defaults are the DiT of
    BLIP3o-8B and BLIP3o-4B (they differ only in `latent_embedding_size`). The patch size is always 1: every
    `in_channels`-wide grid cell is one token.

    Args:
        input_size (`int`, *optional*, defaults to 8):
            Side of the square latent grid (8x8 cells of 4x4-pooled EVA-CLIP patch features).
        in_channels (`int`, *optional*, defaults to 1792):
            Width of one latent cell (the EVA-CLIP feature width); the DiT predicts a velocity of the same width.
        dim (`int`, *optional*, defaults to 1792):
            Hidden width of the transformer.
        n_layers (`int`, *optional*, defaults to 24):
            Number of transformer blocks.
        n_heads (`int`, *optional*, defaults to 28):
            Number of attention heads.
        n_kv_heads (`int`, *optional*, defaults to 28):
            Number of key/value heads.
        multiple_of (`int`, *optional*, defaults to 256):
            The SwiGLU width is rounded up to a multiple of this.
        ffn_dim_multiplier (`float`, *optional*):
            Optional extra factor on the SwiGLU width.
        norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the RMS norms.
        qk_norm (`bool`, *optional*, defaults to `True`):
            Whether queries and keys are layer-normalised across heads.
        latent_embedding_size (`int`, *optional*):
            Width of the condition tokens (the backbone's hidden size). [`Blip3oConfig`] fills it in.
    """

    model_type = "blip3o_dit"
    base_config_key = "dit_config"

    input_size: int = 8
    in_channels: int = 1792
    dim: int = 1792
    n_layers: int = 24
    n_heads: int = 28
    n_kv_heads: int = 28
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    qk_norm: bool = True
    latent_embedding_size: int | None = None


@strict
class Blip3oConfig(PreTrainedConfig):
    r"""
    Configuration of [`Blip3oModel`].

    Args:
        backbone_config (`dict` or [`~transformers.Qwen2_5_VLConfig`], *optional*):
            The frozen Qwen2.5-VL backbone (Qwen2.5-VL-7B-Instruct for BLIP3o-8B, -3B-Instruct for BLIP3o-4B).
        dit_config (`dict` or [`Blip3oDiTConfig`], *optional*):
            The generator. Its `latent_embedding_size` is set to the backbone's hidden size when missing.
        num_queries (`int`, *optional*, defaults to 64):
            Number of learnable query embeddings appended after the prompt; their last hidden states condition the
            DiT.
        image_start_token_id (`int`, *optional*, defaults to 151665):
            The "[IMG]" token placed between the prompt and the queries.
        generation_instruction (`str`, *optional*, defaults to the official instruction):
            User message that wraps a caption for generation; `{caption}` is replaced by the caption.
        decoder_negative_caption (`str`, *optional*, defaults to `" "`):
            Caption whose generated features are the negative condition of the pixel decoder's guidance, as in the
            official decoder pipeline.
        decoder_negative_seed (`int`, *optional*, defaults to 0):
            Seed of the generator that draws those negative features, so that they are the same for every call.
    """

    model_type = "blip3o"
    sub_configs_defaults = {"backbone_config": Qwen2_5_VLConfig, "dit_config": Blip3oDiTConfig}

    backbone_config: dict | Qwen2_5_VLConfig | None = None
    dit_config: dict | Blip3oDiTConfig | None = None
    num_queries: int = 64
    image_start_token_id: int = 151665
    generation_instruction: str = "Please generate image based on the following caption: {caption}"
    decoder_negative_caption: str = " "
    decoder_negative_seed: int = 0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        hidden_size = self.backbone_config.text_config.hidden_size
        if self.dit_config.latent_embedding_size is None:
            self.dit_config.latent_embedding_size = hidden_size
        elif self.dit_config.latent_embedding_size != hidden_size:
            raise ValueError(
                f"dit_config.latent_embedding_size ({self.dit_config.latent_embedding_size}) must equal the backbone's "
                f"hidden size ({hidden_size}): the DiT cross-attends to the backbone's hidden states."
            )
        if "{caption}" not in self.generation_instruction:
            raise ValueError(
                f"generation_instruction must contain '{{caption}}', got {self.generation_instruction!r}."
            )


__all__ = ["Blip3oConfig", "Blip3oDiTConfig"]
