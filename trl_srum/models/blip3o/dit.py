"""The BLIP3o generator: a Lumina-Next DiT with cross-attention to the backbone's query states.

The blocks are diffusers' own `LuminaNextDiTBlock`: its SwiGLU width, int(8/3 * dim) rounded up to `multiple_of`,
is the checkpoint's (4864 for dim 1792). Only the top of the network differs from diffusers' `LuminaNextDiT2DModel`:
the condition tokens are first projected to the DiT width (`caption_projection`), there is no `pad_token` and no
learned-sigma output, and the 2D RoPE table is computed on the fly instead of being passed in.
"""

import torch
from diffusers.models.embeddings import (
    LuminaCombinedTimestepCaptionEmbedding,
    LuminaPatchEmbed,
    PixArtAlphaTextProjection,
    get_2d_rotary_pos_embed_lumina,
)
from diffusers.models.normalization import LuminaLayerNormContinuous
from diffusers.models.transformers.lumina_nextdit2d import LuminaNextDiTBlock
from torch import nn

from .configuration_blip3o import Blip3oDiTConfig


class Blip3oDiT(nn.Module):
    """Predicts the flow velocity `noise - latents` of an EVA-CLIP feature grid.

    Args:
        config ([`Blip3oDiTConfig`]): the DiT configuration, with `latent_embedding_size` set.
    """

    def __init__(self, config: Blip3oDiTConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        # timestep and pooled-caption embeddings live in a width capped at 1024, as in Lumina-Next
        conditioning_dim = min(config.dim, 1024)

        self.patch_embedder = LuminaPatchEmbed(patch_size=1, in_channels=config.in_channels, embed_dim=config.dim)
        self.caption_projection = PixArtAlphaTextProjection(config.latent_embedding_size, config.dim)
        self.time_caption_embed = LuminaCombinedTimestepCaptionEmbedding(
            hidden_size=conditioning_dim, cross_attention_dim=config.dim
        )
        self.layers = nn.ModuleList(
            LuminaNextDiTBlock(
                config.dim,
                config.n_heads,
                config.n_kv_heads,
                config.multiple_of,
                config.ffn_dim_multiplier,
                config.norm_eps,
                config.qk_norm,
                cross_attention_dim=config.dim,
            )
            for _ in range(config.n_layers)
        )
        self.norm_out = LuminaLayerNormContinuous(
            embedding_dim=config.dim,
            conditioning_embedding_dim=conditioning_dim,
            elementwise_affine=False,
            eps=1e-6,
            out_dim=config.in_channels,
        )

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, in_channels, rows, cols)`):
                The noisy latent grid x_t.
            timestep (`torch.Tensor` of shape `(batch_size,)`):
                The flow time on the 0-1000 scale (1000 = pure noise), float or integer.
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, num_queries, latent_embedding_size)`):
                The condition; all zeros is the unconditional branch.

        Returns:
            `torch.Tensor` of the shape of `hidden_states`: the predicted velocity.
        """
        batch_size, channels, rows, cols = hidden_states.shape
        head_dim = self.config.dim // self.config.n_heads
        # the official table covers a 384x384 grid and is sliced to the top-left rows x cols; positions start at 0,
        # so building it at the grid size gives the same values
        rotary_table = get_2d_rotary_pos_embed_lumina(head_dim, rows, cols)
        tokens, token_mask, _, rotary_emb = self.patch_embedder(hidden_states, rotary_table)  # (B, rows*cols, dim)

        condition = self.caption_projection(encoder_hidden_states)  # (B, num_queries, dim)
        condition_mask = torch.ones(condition.shape[:2], dtype=torch.bool, device=condition.device)
        temb = self.time_caption_embed(timestep, condition, condition_mask)

        for layer in self.layers:
            layer_inputs = (tokens, token_mask, rotary_emb, condition, condition_mask, temb, {})
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = self._gradient_checkpointing_func(layer.__call__, *layer_inputs)
            else:
                tokens = layer(*layer_inputs)

        velocity = self.norm_out(tokens, temb)  # (B, rows*cols, in_channels)
        return velocity.transpose(1, 2).reshape(batch_size, channels, rows, cols)
