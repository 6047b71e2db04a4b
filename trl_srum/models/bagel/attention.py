"""Who may attend to whom in BAGEL, and the attention call itself.

This module is the one home of BAGEL's attention-mask rules. A forward processes the *new* tokens of B sequences,
packed one sequence after the other into a flat `(num_tokens, ...)` tensor. Each sequence may continue a row of a KV
cache, and its new tokens are grouped into *splits*:

- `"causal"`: text. A token sees the earlier tokens of its sequence.
- `"full"`: a clean image chunk (ViT patches or clean latents): bidirectional inside the chunk.
- `"noise"`: a noisy latent chunk: bidirectional inside the chunk and invisible to every token outside it (later
  tokens see the clean copy instead, in the official interleaved training data).

Query q may attend key k of its own sequence iff (k is not after q, or q and k lie in the same full/noise split) and
k is not in a noise split other than q's. Cached keys come before all new tokens and are always visible, so a text
chunk appended to a cache gets a *bottom-right* aligned causal mask (new token i sees every cached key and new keys
j <= i); SDPA's own `is_causal` is top-left aligned and would be wrong there. Sequences never see each other.

The attention runs as one SDPA call over the sequences padded to a common length with a dense boolean mask (on a GPU
SDPA picks its memory-efficient kernel for masked attention). Training on a GPU uses FlexAttention instead, which
skips the blocks the mask removes entirely (other samples, noisy latents); it cannot be tested on the CPU, where
FlexAttention has no backward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import repeat_kv


SPLIT_KINDS = ("causal", "full", "noise")
Split = tuple[int, str]  # (number of tokens, kind)


@dataclass
class AttentionLayout:
    """Where the new tokens of each sequence sit in the packed tensor, and what each may attend to.

    `query_index[b, i]` is the packed position of new token i of sequence b (0 for padding, where `query_valid` is
    False). Keys are laid out per sequence as [cache row padded to `cache_width` | new tokens padded to the longest
    sequence]; `mask[b, i, j]` says whether new token i of sequence b may attend to key j.
    """

    query_index: torch.Tensor  # (batch, max_new) long
    query_valid: torch.Tensor  # (batch, max_new) bool
    mask: torch.Tensor  # (batch, max_new, cache_width + max_new) bool
    cache_rows: torch.Tensor | None  # (batch,) long: the cache row each sequence continues; None = row b

    @property
    def new_token_counts(self) -> torch.Tensor:
        return self.query_valid.sum(dim=1)


def build_attention_layout(
    splits: Sequence[Sequence[Split]],
    cache_lengths: torch.Tensor | None = None,
    cache_width: int = 0,
    cache_rows: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> AttentionLayout:
    """Build the layout of a forward from the splits of each sequence.

    Args:
        splits: per sequence, its new tokens as consecutive `(length, kind)` splits, kind in `SPLIT_KINDS`.
        cache_lengths: shape `(batch,)`, the number of cached tokens each sequence continues (None: no cache).
        cache_width: the padded width of the cache's key tensors.
        cache_rows: shape `(batch,)`, the cache row each sequence continues (None: sequence b continues row b).
        device: where to build the tensors.
    """
    for sequence_splits in splits:
        for _, kind in sequence_splits:
            if kind not in SPLIT_KINDS:
                raise ValueError(f"Unknown split kind {kind!r}; expected one of {SPLIT_KINDS}.")
    lengths = [sum(length for length, _ in sequence_splits) for sequence_splits in splits]
    batch, max_new = len(splits), max(lengths)

    # Per new token: its split id within the sequence (-1 for padding) and its kind code.
    split_id = torch.full((batch, max_new), -1, dtype=torch.long)
    kind_code = torch.full((batch, max_new), -1, dtype=torch.long)
    for b, sequence_splits in enumerate(splits):
        start = 0
        for s, (length, kind) in enumerate(sequence_splits):
            split_id[b, start : start + length] = s
            kind_code[b, start : start + length] = SPLIT_KINDS.index(kind)
            start += length
    split_id, kind_code = split_id.to(device), kind_code.to(device)
    valid = split_id >= 0
    is_noise = kind_code == SPLIT_KINDS.index("noise")
    is_bidirectional = kind_code >= SPLIT_KINDS.index("full")

    positions = torch.arange(max_new, device=device)
    causal = positions[None, :, None] >= positions[None, None, :]  # (1, q, k)
    same_split = split_id[:, :, None] == split_id[:, None, :]  # (b, q, k)
    new_mask = causal | (same_split & is_bidirectional[:, :, None])
    new_mask &= ~(is_noise[:, None, :] & ~same_split)
    new_mask &= valid[:, None, :]

    if cache_lengths is None:
        cache_lengths = torch.zeros(batch, dtype=torch.long, device=device)
    cached_visible = torch.arange(cache_width, device=device)[None, :] < cache_lengths.to(device)[:, None]
    mask = torch.cat([cached_visible[:, None, :].expand(batch, max_new, cache_width), new_mask], dim=2)
    # Padded query rows are discarded; let them see everything so that no softmax row is empty.
    mask |= ~valid[:, :, None]

    offsets = torch.tensor([0, *lengths[:-1]], device=device).cumsum(0)
    query_index = torch.where(valid, offsets[:, None] + positions[None, :], 0)
    return AttentionLayout(query_index=query_index, query_valid=valid, mask=mask, cache_rows=cache_rows)


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: AttentionLayout,
    cached_key: torch.Tensor | None = None,
    cached_value: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of the packed new tokens over [their cache row | the new tokens of their sequence].

    Args:
        query: shape `(num_tokens, num_heads, head_dim)`, packed.
        key, value: shape `(num_tokens, num_kv_heads, head_dim)`, packed; query head h reads kv head
            `h // (num_heads // num_kv_heads)`.
        layout: see `build_attention_layout`.
        cached_key, cached_value: shape `(cache_batch, num_kv_heads, cache_width, head_dim)` or None.

    Returns:
        The attention output, shape `(num_tokens, num_heads, head_dim)`, and the new keys and values padded per
        sequence, shape `(batch, num_kv_heads, max_new, head_dim)`, for the cache.
    """
    # (batch, max_new, heads, head_dim) -> (batch, heads, max_new, head_dim)
    padded_query = query[layout.query_index].transpose(1, 2)
    new_key = key[layout.query_index].transpose(1, 2)
    new_value = value[layout.query_index].transpose(1, 2)
    all_key, all_value = new_key, new_value
    if cached_key is not None and cached_key.shape[2] > 0:
        if layout.cache_rows is not None:
            cached_key, cached_value = cached_key[layout.cache_rows], cached_value[layout.cache_rows]
        all_key = torch.cat([cached_key, new_key], dim=2)
        all_value = torch.cat([cached_value, new_value], dim=2)
    output = _scaled_dot_product(padded_query, all_key, all_value, layout.mask)
    return output.transpose(1, 2)[layout.query_valid], new_key, new_value


def _scaled_dot_product(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Masked attention with the default 1/sqrt(head_dim) scale; `mask` is `(batch, queries, keys)`, True = attend."""
    if query.is_cuda and torch.is_grad_enabled():
        return _flex_attention(query, key, value, mask)
    groups = query.shape[1] // key.shape[1]
    return F.scaled_dot_product_attention(
        query, repeat_kv(key, groups), repeat_kv(value, groups), attn_mask=mask[:, None]
    )


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def _flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return mask[b, q, k]

    batch, num_queries, num_keys = mask.shape
    block_mask = create_block_mask(mask_mod, batch, None, num_queries, num_keys, device=query.device)
    return _compiled_flex_attention()(query, key, value, block_mask=block_mask, enable_gqa=True)
