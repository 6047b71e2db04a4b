"""BAGEL (arXiv 2505.14683): one Qwen2 LLM that both reads images and draws them, as a transformers `PreTrainedModel`.

The model, read top to bottom:

1. Small adapters: the flow-time embedding, the fixed sin-cos position tables and the ViT-to-LLM connector.
2. The understanding image encoder: SigLIP encoder layers run NaViT style (any grid of 14 px patches).
3. The Mixture-of-Transformers (MoT) LLM. Every Qwen2 decoder weight exists twice: the plain name is the
   *understanding* expert (text, ViT tokens, image markers), the `_moe_gen` twin the *generation* expert (VAE latent
   tokens). Each token goes through its own expert's norms, projections and MLP, but all tokens share one attention
   softmax over the whole sequence, one RoPE and one KV cache. Routing is by token type, not learned.
4. `BagelModel`: loading (also from the official release layout), the training forward of the flow head, and the
   chunk-level inference primitives (prefill text / images into a KV cache, one text step, one velocity prediction)
   that `generation.py` composes into text and image generation.

Token layout: text is `[<|im_start|>] + ids + [<|im_end|>]` with consecutive RoPE positions and causal attention;
an image chunk is `[<|vision_start|>] + tokens + [<|vision_end|>]`, all at one RoPE position, bidirectional inside
(see `attention.py`). Latent tokens are 2x2 patches of the normalised VAE latent (`image_processing.patchify`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, SiglipVisionConfig
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm, Qwen2RotaryEmbedding, apply_rotary_pos_emb
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from ...protocol import Box, FlowOutput, GeneratedImage
from . import conversion, generation, understanding
from .attention import AttentionLayout, attend, build_attention_layout
from .cache import KVCache, append_rows
from .configuration_bagel import BagelConfig
from .image_processing import (
    grid_position_ids,
    patchify,
    pil_to_tensor,
    sincos_2d_table,
    tensor_to_pil,
    unpatchify,
)
from .packing import PackedTokens, SequencePacker


# PEFT full-match regex of the generation expert's linear layers. A bare "gate_proj" would also hit the understanding
# MLP; the `_moe_gen` attention names are unique on their own.
GENERATION_LORA_TARGET_MODULES = r".*\.self_attn\.(q|k|v|o)_proj_moe_gen|.*\.mlp_moe_gen\.(gate|up|down)_proj"
GENERATION_ADAPTERS = ("time_embedder", "vae2llm", "llm2vae")


# ----------------------------------------------------------------------------------------------------------- adapters
class TimestepEmbedder(nn.Module):
    """DiT timestep embedding: a 256-dim sinusoid of the raw flow time t in [0, 1] (cos first), then an MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """`timesteps` of shape `(num_tokens,)` -> `(num_tokens, hidden_size)` in the MLP's dtype."""
        half = self.frequency_size // 2
        frequencies = torch.exp(-math.log(10000) * torch.arange(half, device=timesteps.device) / half)
        angles = timesteps.float()[:, None] * frequencies[None, :]
        sinusoid = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return self.mlp(sinusoid.to(self.mlp[0].weight.dtype))


class SinCosPositionTable(nn.Module):
    """A fixed 2D sin-cos table over a `grid_side`-square grid. It is a function of the config, so it is recomputed
    rather than stored (the official checkpoint stores it; that copy is skipped on load)."""

    def __init__(self, embed_dim: int, grid_side: int) -> None:
        super().__init__()
        self.embed_dim, self.grid_side = embed_dim, grid_side
        self.pos_embed = nn.Buffer(sincos_2d_table(embed_dim, grid_side), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


class VisionConnector(nn.Module):
    """Maps ViT features into the LLM: fc1 -> activation -> fc2."""

    def __init__(self, vit_hidden_size: int, llm_hidden_size: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vit_hidden_size, llm_hidden_size)
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(llm_hidden_size, llm_hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


# -------------------------------------------------------------------------------------------- understanding encoder
class NaViTPatchEmbeddings(nn.Module):
    """SigLIP's patch and position embeddings for patches of any grid.

    The patch projection is a Linear over flattened `(patch_row, patch_col, channel)` patches (BAGEL's layout; it
    equals SigLIP's stride-14 conv), and the learned position table is indexed by `row * side + col` with no
    interpolation, so an image smaller than the table uses its top-left corner.
    """

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Linear(config.num_channels * config.patch_size**2, config.hidden_size)
        self.position_embedding = nn.Embedding((config.image_size // config.patch_size) ** 2, config.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(patches) + self.position_embedding(position_ids)


class BagelVisionTransformer(nn.Module):
    """SigLIP vision tower without pooling head; images of a batch are padded and masked from each other."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.embeddings = NaViTPatchEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """
        Args:
            patches: shape `(images, max_patches, patch_features)`, right-padded.
            position_ids: shape `(images, max_patches)`.
            valid: shape `(images, max_patches)` bool, False on padding.

        Returns:
            shape `(images, max_patches, hidden_size)`.
        """
        hidden = self.embeddings(patches, position_ids)
        # Additive key-padding mask: works with both the eager and the SDPA SigLIP attention.
        key_mask = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
        key_mask = key_mask.masked_fill(~valid, torch.finfo(hidden.dtype).min)[:, None, None, :]
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=key_mask).last_hidden_state
        return self.post_layernorm(hidden)


class BagelVisionModel(nn.Module):
    """Holds the tower under `vision_model`, so that parameter names match the official `vit_model.vision_model.*`."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.vision_model = BagelVisionTransformer(config)


# -------------------------------------------------------------------------------------- Mixture-of-Transformers LLM
@dataclass
class ExpertRouting:
    """Which packed tokens use the understanding expert and which the generation expert."""

    und_index: torch.Tensor  # (num_und,) long
    gen_index: torch.Tensor  # (num_gen,) long

    @classmethod
    def from_mask(cls, is_gen: torch.Tensor) -> ExpertRouting:
        return cls(und_index=torch.nonzero(~is_gen).flatten(), gen_index=torch.nonzero(is_gen).flatten())

    def apply(
        self,
        hidden: torch.Tensor,
        und: Callable[[torch.Tensor], torch.Tensor],
        gen: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Run each token through its expert's function; `hidden` is `(num_tokens, ...)`."""
        if len(self.gen_index) == 0:
            return und(hidden)
        if len(self.und_index) == 0:
            return gen(hidden)
        und_out, gen_out = und(hidden[self.und_index]), gen(hidden[self.gen_index])
        out = und_out.new_empty((hidden.shape[0], *und_out.shape[1:]))
        return out.index_copy(0, self.und_index, und_out).index_copy(0, self.gen_index, gen_out.to(und_out.dtype))


class BagelMoTAttention(nn.Module):
    """Qwen2 attention with qk-norm, twice: the expert of each token projects it, one softmax joins all tokens."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        hidden, head_dim = config.hidden_size, config.hidden_size // config.num_attention_heads
        # understanding expert
        self.q_proj = nn.Linear(hidden, self.num_heads * head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * head_dim, hidden, bias=False)
        self.q_norm = Qwen2RMSNorm(head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen2RMSNorm(head_dim, eps=config.rms_norm_eps)
        # generation expert
        self.q_proj_moe_gen = nn.Linear(hidden, self.num_heads * head_dim, bias=True)
        self.k_proj_moe_gen = nn.Linear(hidden, self.num_kv_heads * head_dim, bias=True)
        self.v_proj_moe_gen = nn.Linear(hidden, self.num_kv_heads * head_dim, bias=True)
        self.o_proj_moe_gen = nn.Linear(self.num_heads * head_dim, hidden, bias=False)
        self.q_norm_moe_gen = Qwen2RMSNorm(head_dim, eps=config.rms_norm_eps)
        self.k_norm_moe_gen = Qwen2RMSNorm(head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        routing: ExpertRouting,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        layout: AttentionLayout,
        cached_key: torch.Tensor | None,
        cached_value: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num_tokens = hidden.shape[0]
        query = routing.apply(hidden, self.q_proj, self.q_proj_moe_gen).view(num_tokens, self.num_heads, -1)
        key = routing.apply(hidden, self.k_proj, self.k_proj_moe_gen).view(num_tokens, self.num_kv_heads, -1)
        value = routing.apply(hidden, self.v_proj, self.v_proj_moe_gen).view(num_tokens, self.num_kv_heads, -1)
        # qk-norm before RoPE; keys enter the cache normed and rotated.
        query = routing.apply(query, self.q_norm, self.q_norm_moe_gen)
        key = routing.apply(key, self.k_norm, self.k_norm_moe_gen)
        cos, sin = position_embeddings  # (num_tokens, head_dim)
        query, key = apply_rotary_pos_emb(query, key, cos, sin, unsqueeze_dim=1)
        output, new_key, new_value = attend(query, key, value, layout, cached_key, cached_value)
        output = routing.apply(output.reshape(num_tokens, -1), self.o_proj, self.o_proj_moe_gen)
        return output, new_key, new_value


class BagelMoTDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = BagelMoTAttention(config)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = Qwen2MLP(config)
        self.mlp_moe_gen = Qwen2MLP(config)

    def forward(
        self,
        hidden: torch.Tensor,
        routing: ExpertRouting,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        layout: AttentionLayout,
        cached_key: torch.Tensor | None = None,
        cached_value: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normed = routing.apply(hidden, self.input_layernorm, self.input_layernorm_moe_gen)
        attended, new_key, new_value = self.self_attn(
            normed, routing, position_embeddings, layout, cached_key, cached_value
        )
        hidden = hidden + attended
        normed = routing.apply(hidden, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        hidden = hidden + routing.apply(normed, self.mlp, self.mlp_moe_gen)
        return hidden, new_key, new_value


class BagelMoTDecoder(nn.Module):
    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([BagelMoTDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)

    def forward(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        routing: ExpertRouting,
        layout: AttentionLayout,
        cache: KVCache | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run the packed new tokens through all layers.

        Returns:
            The final hidden states `(num_tokens, hidden_size)` after each expert's final norm, and per layer the new
            keys and values padded per sequence (see `attention.attend`).
        """
        cos, sin = self.rotary_emb(embeds, position_ids[None, :])
        position_embeddings = (cos[0], sin[0])
        hidden, new_keys, new_values = embeds, [], []
        for index, layer in enumerate(self.layers):
            cached = (cache.keys[index], cache.values[index]) if cache is not None else (None, None)
            hidden, new_key, new_value = layer(hidden, routing, position_embeddings, layout, *cached)
            new_keys.append(new_key)
            new_values.append(new_value)
        return routing.apply(hidden, self.norm, self.norm_moe_gen), new_keys, new_values


class BagelLanguageModel(nn.Module):
    def __init__(self, config: Qwen2Config, use_lm_head: bool) -> None:
        super().__init__()
        self.model = BagelMoTDecoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) if use_lm_head else None


@dataclass
class TextForwardOutput:
    cache: KVCache | None = field(metadata={"help": "The cache with the new tokens appended (None if not updated)."})
    logits: list[torch.Tensor] | None = field(
        default=None, metadata={"help": "Per sequence, the next-token logits at every new position, (len, vocab)."}
    )


# ------------------------------------------------------------------------------------------------------------ model
class BagelModel(PreTrainedModel):
    """BAGEL: understanding (image + text -> text) and generation (text -> image by rectified flow) in one LLM.

    It implements `trl_srum.protocol.UnifiedModel`. Text-level methods need a tokenizer: it is loaded by
    `from_pretrained` when the folder has tokenizer files, and can be set with `model.tokenizer = ...`.

    Example:

    ```python
    >>> from trl_srum.models.bagel import BagelModel
    >>> model = BagelModel.from_pretrained("path/to/BAGEL-7B-MoT", dtype=torch.bfloat16)  # the official folder
    >>> images = model.generate_images(["a red cube"], generators=[torch.Generator().manual_seed(0)],
    ...                                image_size=(512, 512))
    ```
    """

    config_class = BagelConfig
    base_model_prefix = "bagel"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["BagelMoTDecoderLayer", "SiglipEncoderLayer", "AutoencoderKL"]
    # Never quantized: the frozen VAE and the small generation adapters (trainable in full). The VAE also stays fp32
    # when the rest of the model is loaded in half precision.
    _keep_in_fp32_modules = ["vae", *GENERATION_ADAPTERS]
    _keep_in_fp32_modules_strict = [r"^vae\."]
    # `from_pretrained` checks every key itself (see `conversion.check_checkpoint_keys`) before transformers loads
    # them; these patterns only keep transformers from warning about keys that are absent on purpose: the VAE of the
    # official layout comes from `ae.safetensors`, and the skipped keys are listed in `conversion`.
    _keys_to_ignore_on_load_missing = [r"^vae\."]
    _keys_to_ignore_on_load_unexpected = conversion.intentionally_absent_patterns(visual_und=False, use_lm_head=False)

    def __init__(self, config: BagelConfig) -> None:
        super().__init__(config)
        llm = config.llm_config
        self.language_model = BagelLanguageModel(llm, config.use_lm_head)
        # generation adapters: latent patch <-> LLM width, and the flow time
        self.time_embedder = TimestepEmbedder(llm.hidden_size)
        self.vae2llm = nn.Linear(config.latent_dim, llm.hidden_size)
        self.llm2vae = nn.Linear(llm.hidden_size, config.latent_dim)
        self.latent_pos_embed = SinCosPositionTable(llm.hidden_size, config.max_latent_size)
        if config.visual_und:
            # SigLIP layers pick their attention kernel from their own config: follow the model's choice.
            config.vit_config._attn_implementation = config._attn_implementation
            self.vit_model = BagelVisionModel(config.vit_config)
            self.connector = VisionConnector(config.vit_config.hidden_size, llm.hidden_size, config.connector_act)
            self.vit_pos_embed = SinCosPositionTable(llm.hidden_size, config.vit_max_num_patch_per_side)
        self.vae = AutoencoderKL(**config.vae_config)
        self.vae.requires_grad_(False)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SinCosPositionTable):
            init.copy_(module.pos_embed, sincos_2d_table(module.embed_dim, module.grid_side))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear | None:
        return self.language_model.lm_head

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype hidden states are kept in (that of the token embeddings, which are never quantized)."""
        return self.language_model.model.embed_tokens.weight.dtype

    # ------------------------------------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any
    ) -> BagelModel:
        """Load a folder written by `save_pretrained`, or a folder in the official release layout.

        Keyword arguments that are `BagelConfig` fields (e.g. `visual_und=False`, `use_lm_head=False`) change the
        config; everything else goes to transformers' `from_pretrained` (`dtype`, `device_map`,
        `quantization_config`, ...). Every checkpoint key is checked against the model before loading.

        Raises:
            ValueError: naming the missing, unexpected or wrongly shaped keys of the checkpoint.
        """
        folder = Path(pretrained_model_name_or_path)
        config = kwargs.pop("config", None)
        if config is None:
            own_fields = set(BagelConfig.__annotations__)
            overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in own_fields}
            config = BagelConfig.from_pretrained(folder, **overrides)
        official = conversion.is_official_checkpoint(folder)
        conversion.check_checkpoint_keys(
            cls.expected_checkpoint_shapes(config),
            conversion.checkpoint_shapes(folder, config.vae_config),
            conversion.intentionally_absent_patterns(config.visual_und, config.use_lm_head),
            source=str(folder),
        )
        model = super().from_pretrained(folder, *model_args, config=config, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model  # output_loading_info=True returns a tuple
        if official:
            loaded.load_official_vae(folder / conversion.OFFICIAL_VAE_WEIGHTS_NAME)
        if conversion.has_tokenizer_files(folder):
            loaded.tokenizer = AutoTokenizer.from_pretrained(folder)
        return model

    @classmethod
    def expected_checkpoint_shapes(cls, config: BagelConfig) -> dict[str, tuple[int, ...]]:
        """Key -> shape of every tensor a model with `config` loads, from an instance on the meta device."""
        with torch.device("meta"):
            reference = cls(config)
        return {key: tuple(tensor.shape) for key, tensor in reference.state_dict().items()}

    def load_official_vae(self, path: str | os.PathLike) -> None:
        """Load the FLUX autoencoder from a BFL/LDM-layout safetensors file (the official `ae.safetensors`)."""
        state_dict = conversion.official_vae_state_dict(load_file(path), self.config.vae_config)
        self.vae.load_state_dict(state_dict, strict=True)
        self.vae.float()  # kept in fp32 whatever the dtype of the rest, as for a save_pretrained folder

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Save weights (VAE included) and config, and the tokenizer when the model has one."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self._tokenizer is not None:
            self._tokenizer.save_pretrained(save_directory)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        ids = conversion.special_token_ids_from_tokenizer(tokenizer)
        mismatched = [
            f"{name}: tokenizer {token_id}, config {getattr(self.config, name)}"
            for name, token_id in ids.items()
            if token_id != getattr(self.config, name)
        ]
        if mismatched:
            raise ValueError(f"The tokenizer's special token ids differ from the model config's: {mismatched}.")
        self._tokenizer = tokenizer

    def require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise ValueError(
                "This BagelModel has no tokenizer, which text-level methods need: load the model from a folder with "
                "tokenizer files (the Qwen2.5 tokenizer of BAGEL-7B-MoT), or set `model.tokenizer = ...`."
            )
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (every text becomes its own wrapped segment)."""
        tokenizer = self.require_tokenizer()
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    def wrap_text(self, token_ids: Sequence[int]) -> list[int]:
        return [self.config.im_start_token_id, *token_ids, self.config.im_end_token_id]

    # ---------------------------------------------------------------------------------------------- embeddings
    def embed_latents(
        self, latent_tokens: torch.Tensor, timesteps: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """`vae2llm(x_t) + time_embedder(t) + latent_pos_embed[id]` per latent token.

        Args:
            latent_tokens: `x_t`, shape `(num_latent, latent_dim)`.
            timesteps: shape `(num_latent,)`, the flow time of each token.
            position_ids: shape `(num_latent,)`, rows of the latent position table.
        """
        projected = self.vae2llm(latent_tokens.to(self.vae2llm.weight.dtype))
        embedding = projected + self.time_embedder(timesteps).to(projected.dtype)
        return (embedding + self.latent_pos_embed(position_ids).to(projected.dtype)).to(self.compute_dtype)

    def embed_images_for_understanding(self, pixel_values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """ViT tokens in LLM space: `connector(SigLIP(patches)) + vit_pos_embed[id]`, one `(rows * cols, D)` per image.

        Args:
            pixel_values: images `(3, height, width)` in [-1, 1], sides multiples of the ViT patch size.
        """
        if not self.config.visual_und:
            raise ValueError("This BagelModel was built with visual_und=False and cannot read images.")
        patch_size, max_side = self.config.vit_config.patch_size, self.config.vit_max_num_patch_per_side
        patches, position_ids = [], []
        for pixels in pixel_values:
            height, width = pixels.shape[-2:]
            if height % patch_size or width % patch_size or max(height, width) > patch_size * max_side:
                raise ValueError(
                    f"Image of {width}x{height} px: the ViT needs sides that are multiples of {patch_size} and at most "
                    f"{patch_size * max_side} px; resize it with `image_processing.resize_for_model`."
                )
            patches.append(patchify(pixels, patch_size))
            position_ids.append(grid_position_ids((height // patch_size, width // patch_size), max_side))
        counts = [len(image_patches) for image_patches in patches]
        device = self.language_model.model.embed_tokens.weight.device
        valid = torch.arange(max(counts))[None, :] < torch.tensor(counts)[:, None]
        padded_patches = torch.nn.utils.rnn.pad_sequence(patches, batch_first=True)
        padded_ids = torch.nn.utils.rnn.pad_sequence(position_ids, batch_first=True)
        features = self.vit_model.vision_model(
            padded_patches.to(device, self.compute_dtype), padded_ids.to(device), valid.to(device)
        )
        tokens = self.connector(features[valid.to(device)]) + self.vit_pos_embed(torch.cat(position_ids).to(device))
        return list(tokens.to(self.compute_dtype).split(counts))

    def _packed_embeddings(self, num_tokens: int, *pieces: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One packed `(num_tokens, hidden_size)` tensor from `(packed positions, embeddings)` pieces."""
        embeds = pieces[0][1].new_zeros(num_tokens, self.config.llm_config.hidden_size)
        for indexes, values in pieces:
            embeds = embeds.index_copy(0, indexes, values)
        return embeds

    def _run_packed(
        self,
        packed: PackedTokens,
        cache: KVCache,
        cache_rows: torch.Tensor | None = None,
        latent_embeddings: torch.Tensor | None = None,
        vit_embeddings: torch.Tensor | None = None,
        update_cache: bool = False,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """The LLM over packed new tokens on top of cache rows.

        Returns:
            The final hidden states `(num_tokens, hidden_size)`, and the cache with the new tokens appended (one row
            per new sequence) when `update_cache`.
        """
        pieces = [(packed.text_indexes, self.language_model.model.embed_tokens(packed.text_ids))]
        if latent_embeddings is not None:
            pieces.append((packed.latent_indexes, latent_embeddings))
        if vit_embeddings is not None:
            pieces.append((packed.vit_indexes, vit_embeddings))
        embeds = self._packed_embeddings(packed.num_tokens, *pieces)
        lengths = cache.lengths if cache_rows is None else cache.lengths[cache_rows]
        layout = build_attention_layout(packed.splits, lengths, cache.width, cache_rows, embeds.device)
        routing = ExpertRouting.from_mask(packed.is_gen)
        hidden, new_keys, new_values = self.language_model.model(embeds, packed.position_ids, routing, layout, cache)
        if not update_cache:
            return hidden, None
        if cache_rows is not None:
            cache = cache.select(cache_rows)
        counts = layout.new_token_counts
        extended = KVCache(
            keys=[append_rows(old, cache.lengths, new, counts) for old, new in zip(cache.keys, new_keys)],
            values=[append_rows(old, cache.lengths, new, counts) for old, new in zip(cache.values, new_values)],
            lengths=cache.lengths + counts,
            next_positions=packed.next_positions,
        )
        return hidden, extended

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache of `batch_size` rows."""
        llm = self.config.llm_config
        return KVCache.empty(
            llm.num_hidden_layers,
            batch_size,
            llm.num_key_value_heads,
            llm.hidden_size // llm.num_attention_heads,
            self.compute_dtype,
            self.language_model.model.embed_tokens.weight.device,
        )

    def _start_positions(self, cache: KVCache, cache_rows: torch.Tensor | None) -> list[int]:
        positions = cache.next_positions if cache_rows is None else cache.next_positions[cache_rows]
        return positions.tolist()

    def _packer(self, start_positions: Sequence[int]) -> SequencePacker:
        return SequencePacker(start_positions, self.config.vision_start_token_id, self.config.vision_end_token_id)

    # -------------------------------------------------------------------------------- inference primitives (ids)
    def forward_text(
        self,
        cache: KVCache,
        token_ids: Sequence[Sequence[int]],
        *,
        cache_rows: Sequence[int] | torch.Tensor | None = None,
        output_logits: bool = False,
        update_cache: bool = True,
    ) -> TextForwardOutput:
        """Append raw text tokens (no wrapping) to each sequence, causally.

        Args:
            cache: the context; sequence b continues row `cache_rows[b]` (row b if None).
            token_ids: per sequence, the new token ids.
            cache_rows: which cache row each sequence continues (repeats share a prefix).
            output_logits: whether to return the next-token logits at every new position.
            update_cache: whether to return the cache with the new tokens appended.
        """
        device = self.language_model.model.embed_tokens.weight.device
        rows = None if cache_rows is None else torch.as_tensor(cache_rows, dtype=torch.long, device=device)
        self._check_token_ids(token_ids)
        packer = self._packer(self._start_positions(cache, rows))
        for sequence, ids in enumerate(token_ids):
            packer.add_text(sequence, ids)
        packed = packer.build(device)
        hidden, new_cache = self._run_packed(packed, cache, rows, update_cache=update_cache)
        logits = None
        if output_logits:
            if self.language_model.lm_head is None:
                raise ValueError("This BagelModel was built with use_lm_head=False and cannot produce text logits.")
            logits = list(self.language_model.lm_head(hidden).split([len(ids) for ids in token_ids]))
        return TextForwardOutput(cache=new_cache, logits=logits)

    def prefill_text(
        self, cache: KVCache, token_ids: Sequence[Sequence[int]], *, output_logits: bool = False
    ) -> TextForwardOutput:
        """Append one text segment `[<|im_start|>] + ids + [<|im_end|>]` to every sequence of the cache."""
        return self.forward_text(cache, [self.wrap_text(ids) for ids in token_ids], output_logits=output_logits)

    def prefill_images(self, cache: KVCache, pixel_values: Sequence[torch.Tensor]) -> KVCache:
        """Append one ViT image chunk to every sequence of the cache (images `(3, H, W)` in [-1, 1])."""
        vit_tokens = self.embed_images_for_understanding(pixel_values)
        packer = self._packer(self._start_positions(cache, None))
        for sequence, tokens in enumerate(vit_tokens):
            packer.add_image(sequence, len(tokens), "full", latent=False)
        packed = packer.build(cache.lengths.device)
        return self._run_packed(packed, cache, vit_embeddings=torch.cat(vit_tokens), update_cache=True)[1]

    def predict_velocity(
        self,
        cache: KVCache,
        latent_tokens: torch.Tensor,
        timesteps: torch.Tensor,
        grid: tuple[int, int],
        *,
        cache_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The flow velocity of noisy latent images given their contexts; the cache is not changed.

        Args:
            cache: the contexts (text prefix of each image).
            latent_tokens: `x_t`, shape `(batch, rows * cols, latent_dim)`.
            timesteps: shape `(batch,)`.
            grid: the latent token grid `(rows, cols)` shared by the batch.
            cache_rows: shape `(batch,)`, the context row of each image (row b if None).

        Returns:
            The velocity `noise - latents`, shape `(batch, rows * cols, latent_dim)`, float32.
        """
        batch, num_latent, _ = latent_tokens.shape
        packer = self._packer(self._start_positions(cache, cache_rows))
        for sequence in range(batch):
            packer.add_image(sequence, num_latent, "full", latent=True)
        packed = packer.build(latent_tokens.device)
        position_ids = grid_position_ids(grid, self.config.max_latent_size).to(latent_tokens.device).repeat(batch)
        latent_embeddings = self.embed_latents(
            latent_tokens.reshape(batch * num_latent, -1), timesteps.repeat_interleave(num_latent), position_ids
        )
        hidden, _ = self._run_packed(packed, cache, cache_rows, latent_embeddings=latent_embeddings)
        velocity = self.llm2vae(hidden[packed.latent_indexes].to(self.llm2vae.weight.dtype))
        return velocity.float().view(batch, num_latent, -1)

    def _check_token_ids(self, token_ids: Sequence[Sequence[int]]) -> None:
        vocab_size = self.config.llm_config.vocab_size
        for ids in token_ids:
            bad = [token for token in ids if not 0 <= token < vocab_size]
            if bad:
                raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary of size {vocab_size}.")

    # ----------------------------------------------------------------------------------------- training forward
    def pack_flow_inputs(
        self,
        prompt_ids: Sequence[Sequence[int] | None],
        noisy_latents: Sequence[torch.Tensor],
        grids: Sequence[tuple[int, int]],
        timesteps: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Pack `[text segment, noisy latent image]` samples into one sequence for `forward` (ids-level).

        Each sample is its own sequence: its text is causal, its image bidirectional and hidden from other tokens, and
        samples never see each other. `prompt_ids[i] = None` drops the text (CFG dropout); the image then sits at
        position 0.

        Args:
            prompt_ids: per sample, the prompt's token ids (unwrapped), or None.
            noisy_latents: per sample, `x_t` of shape `(rows * cols, latent_dim)`.
            grids: per sample, its latent grid `(rows, cols)`.
            timesteps: shape `(num_samples,)`, the flow time of each sample.

        Returns:
            Keyword arguments of `forward`, on the model's device.
        """
        if not len(prompt_ids) == len(noisy_latents) == len(grids) == len(timesteps):
            raise ValueError(
                f"Got {len(prompt_ids)} prompts, {len(noisy_latents)} latents, {len(grids)} grids and "
                f"{len(timesteps)} timesteps; pass one of each per sample."
            )
        if not bool(((timesteps >= 0) & (timesteps <= 1)).all()):
            raise ValueError(f"Flow times must lie in [0, 1]; got {timesteps.tolist()}.")
        device = self.language_model.model.embed_tokens.weight.device
        packer = self._packer([0] * len(prompt_ids))
        latent_position_ids, latent_timesteps = [], []
        for sample, (ids, latents, grid, timestep) in enumerate(zip(prompt_ids, noisy_latents, grids, timesteps)):
            self.check_latent_grid(grid)
            if tuple(latents.shape) != (grid[0] * grid[1], self.config.latent_dim):
                raise ValueError(
                    f"Sample {sample}: latents of shape {tuple(latents.shape)} do not match its grid {grid}; expected "
                    f"({grid[0] * grid[1]}, {self.config.latent_dim})."
                )
            if ids is not None:
                self._check_token_ids([ids])
                packer.add_text(sample, self.wrap_text(ids))
            packer.add_image(sample, len(latents), "noise", latent=True)
            latent_position_ids.append(grid_position_ids(grid, self.config.max_latent_size))
            latent_timesteps.append(torch.full((len(latents),), float(timestep)))
        packed = packer.build(device)
        layout = build_attention_layout(packed.splits, device=device)
        return {
            "text_ids": packed.text_ids,
            "text_indexes": packed.text_indexes,
            "latent_tokens": torch.cat(list(noisy_latents)).to(device),
            "latent_timesteps": torch.cat(latent_timesteps).to(device),
            "latent_indexes": packed.latent_indexes,
            "latent_position_ids": torch.cat(latent_position_ids).to(device),
            "position_ids": packed.position_ids,
            "is_gen": packed.is_gen,
            "query_index": layout.query_index,
            "query_valid": layout.query_valid,
            "attention_mask": layout.mask,
        }

    def prepare_flow_inputs(
        self,
        prompts: Sequence[str | None],
        noisy_latents: Sequence[torch.Tensor],
        grids: Sequence[tuple[int, int]],
        timesteps: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`pack_flow_inputs` for text prompts (see `trl_srum.protocol.UnifiedModel.prepare_flow_inputs`)."""
        prompt_ids = [None if prompt is None else self.tokenize([prompt])[0] for prompt in prompts]
        return self.pack_flow_inputs(prompt_ids, noisy_latents, grids, timesteps)

    def forward(
        self,
        text_ids: torch.Tensor,
        text_indexes: torch.Tensor,
        latent_tokens: torch.Tensor,
        latent_timesteps: torch.Tensor,
        latent_indexes: torch.Tensor,
        latent_position_ids: torch.Tensor,
        position_ids: torch.Tensor,
        is_gen: torch.Tensor,
        query_index: torch.Tensor,
        query_valid: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> FlowOutput:
        """Predict the velocity of every noisy latent token of a batch packed by `pack_flow_inputs`.

        Returns:
            `FlowOutput(velocity)`, velocity of shape `(num_latent_tokens, latent_dim)` in packed order (float32).
        """
        text = self.language_model.model.embed_tokens(text_ids)
        latents = self.embed_latents(latent_tokens, latent_timesteps, latent_position_ids)
        embeds = self._packed_embeddings(len(position_ids), (text_indexes, text), (latent_indexes, latents))
        layout = AttentionLayout(query_index, query_valid, attention_mask, cache_rows=None)
        routing = ExpertRouting.from_mask(is_gen)
        hidden, _, _ = self.language_model.model(embeds, position_ids, routing, layout, cache=None)
        velocity = self.llm2vae(hidden[latent_indexes].to(self.llm2vae.weight.dtype))
        return FlowOutput(velocity=velocity.float())

    def generation_parameter_names(self) -> list[str]:
        """Parameters only generation uses: the `_moe_gen` expert (with `norm_moe_gen`) and the flow adapters."""
        pattern = re.compile(rf"_moe_gen\.|^({'|'.join(GENERATION_ADAPTERS)})\.")
        return [name for name, _ in self.named_parameters() if pattern.search(name)]

    @property
    def generation_lora_target_modules(self) -> str:
        return GENERATION_LORA_TARGET_MODULES

    # ------------------------------------------------------------------------------------------------- latents
    def check_latent_grid(self, grid: tuple[int, int]) -> None:
        rows, cols = grid
        if not (0 < rows <= self.config.max_latent_size and 0 < cols <= self.config.max_latent_size):
            raise ValueError(
                f"Latent grid {grid} is outside 1..{self.config.max_latent_size} tokens per side "
                f"(max_latent_size); the largest image is {self.config.max_latent_size * self.config.latent_stride} px."
            )

    def latent_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The `(rows, cols)` latent grid of an image of `image_size` = (width, height) pixels."""
        width, height = image_size
        stride = self.config.latent_stride
        if width % stride or height % stride:
            raise ValueError(f"Image size {image_size}: width and height must be multiples of {stride} px.")
        grid = (height // stride, width // stride)
        self.check_latent_grid(grid)
        return grid

    def encode_pixels(self, pixels: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """VAE-encode one image `(3, H, W)` in [-1, 1] into normalised latent tokens `(rows * cols, latent_dim)`.

        With `noise` (shape `(latent_channels, H / 8, W / 8)` for the 7B) the posterior is sampled as the official
        code does, `mean + std * noise`; otherwise its mean is used.
        """
        grid = self.latent_grid((pixels.shape[-1], pixels.shape[-2]))
        vae = self.vae
        with torch.no_grad():
            posterior = vae.encode(pixels[None].to(vae.device, vae.dtype)).latent_dist
        latent = posterior.mean[0] if noise is None else posterior.mean[0] + posterior.std[0] * noise.to(vae.device)
        normalised = vae.config.scaling_factor * (latent.float() - vae.config.shift_factor)
        tokens = patchify(normalised, self.config.latent_patch_size)
        return tokens.view(grid[0] * grid[1], -1)

    def decode_latent_tokens(self, latent_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Normalised latent tokens `(rows * cols, latent_dim)` -> decoded pixels `(3, H, W)` (float, unclamped)."""
        self.check_latent_grid(grid)
        if tuple(latent_tokens.shape) != (grid[0] * grid[1], self.config.latent_dim):
            raise ValueError(
                f"Latent tokens of shape {tuple(latent_tokens.shape)} do not match the grid {grid}; expected "
                f"({grid[0] * grid[1]}, {self.config.latent_dim})."
            )
        latent = unpatchify(latent_tokens.float(), grid, self.config.latent_patch_size)
        vae = self.vae
        raw = latent / vae.config.scaling_factor + vae.config.shift_factor
        with torch.no_grad():
            return vae.decode(raw[None].to(vae.device, vae.dtype)).sample[0].float()

    def encode_images(
        self, images: Sequence[Image.Image], *, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Latent tokens `(rows * cols, latent_dim)` of each image (its size must be a valid generation size)."""
        tokens = []
        for image in images:
            pixels = pil_to_tensor(image)
            noise = None
            if generator is not None:
                downsample = self.config.vae_downsample
                shape = (self.config.latent_channels, pixels.shape[1] // downsample, pixels.shape[2] // downsample)
                noise = torch.randn(shape, generator=generator)
            tokens.append(self.encode_pixels(pixels, noise).cpu())
        return tokens

    def decode_latents(self, latents: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]]) -> list[Image.Image]:
        return [tensor_to_pil(self.decode_latent_tokens(tokens, grid)) for tokens, grid in zip(latents, grids)]

    # --------------------------------------------------------------- protocol (in words: understanding.py, generation.py)
    def understanding_pixels(self, image: Image.Image) -> torch.Tensor:
        """The official understanding preprocessing of an image, as the ViT reads it (see `understanding.py`)."""
        return understanding.understanding_pixels(self.config, image)

    def answer_questions(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        generators: Sequence[torch.Generator] | None = None,
        think: bool = False,
    ) -> list[str]:
        """Answer `questions[i]` about `images[i]`; with `think`, the VLM think system prompt comes first."""
        return understanding.answer_questions(
            self,
            images,
            questions,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            generators=generators,
            think=think,
        )

    def score_answers(self, image: Image.Image, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """`log p(answers[a] | image, questions[q])` summed over answer tokens, shape `(questions, answers)`."""
        return understanding.score_answers(self, image, questions, answers)

    @property
    def supports_grounding(self) -> bool:
        return self.config.supports_grounding

    def ground(self, image: Image.Image, phrases: Sequence[str], *, max_new_tokens: int = 256) -> list[list[Box]]:
        """Boxes of every instance of each phrase, parsed from the (greedy) answers to the grounding prompt."""
        return understanding.ground(self, image, phrases, max_new_tokens=max_new_tokens)

    def generate_images(
        self,
        prompts: Sequence[str],
        *,
        generators: Sequence[torch.Generator],
        image_size: tuple[int, int],
        think: bool = False,
        max_think_tokens: int = 1000,
        **sampling_kwargs: Any,
    ) -> list[GeneratedImage]:
        """Draw one image per prompt; prompt i takes all of its randomness from `generators[i]` (see
        `generation.generate_images`)."""
        return generation.generate_images(
            self,
            prompts,
            generators=generators,
            image_size=image_size,
            think=think,
            max_think_tokens=max_think_tokens,
            **sampling_kwargs,
        )
