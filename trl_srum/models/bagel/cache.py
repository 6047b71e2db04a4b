"""The key/value cache of a batch of BAGEL token prefixes.

Every row is one sequence: its keys (after k-norm and RoPE) and values per layer, right-padded to a common width, the
number of valid tokens, and the RoPE position its next chunk takes. Positions and lengths differ because all tokens of
an image chunk share one position. A cache is never modified in place: appending returns a new cache, so a context
can be reused by several continuations (the CFG branches, think decoding on a copy, several questions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    keys: list[torch.Tensor]  # per layer, (batch, num_kv_heads, width, head_dim)
    values: list[torch.Tensor]
    lengths: torch.Tensor  # (batch,) long: valid tokens per row
    next_positions: torch.Tensor  # (batch,) long: RoPE position of the next chunk

    @classmethod
    def empty(
        cls,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        shape = (batch_size, num_kv_heads, 0, head_dim)
        return cls(
            keys=[torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)],
            values=[torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)],
            lengths=torch.zeros(batch_size, dtype=torch.long, device=device),
            next_positions=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def width(self) -> int:
        return self.keys[0].shape[2]

    def select(self, rows: Sequence[int] | torch.Tensor) -> KVCache:
        """A cache made of the given rows (repeats allowed), e.g. to share one image prefix between questions."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        return KVCache(
            keys=[key[rows] for key in self.keys],
            values=[value[rows] for value in self.values],
            lengths=self.lengths[rows],
            next_positions=self.next_positions[rows],
        )

    @classmethod
    def concat(cls, caches: Sequence[KVCache]) -> KVCache:
        """Stack the rows of several caches, padding them to a common width."""
        width = max(cache.width for cache in caches)

        def pad(tensor: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(tensor, (0, 0, 0, width - tensor.shape[2]))

        num_layers = len(caches[0].keys)
        return cls(
            keys=[torch.cat([pad(cache.keys[layer]) for cache in caches]) for layer in range(num_layers)],
            values=[torch.cat([pad(cache.values[layer]) for cache in caches]) for layer in range(num_layers)],
            lengths=torch.cat([cache.lengths for cache in caches]),
            next_positions=torch.cat([cache.next_positions for cache in caches]),
        )


def append_rows(
    cached: torch.Tensor, cached_lengths: torch.Tensor, new: torch.Tensor, new_counts: torch.Tensor
) -> torch.Tensor:
    """Write each row's new entries right after its valid cached ones.

    Args:
        cached: shape `(batch, heads, width, head_dim)`, rows already matched to the new sequences.
        cached_lengths: shape `(batch,)`.
        new: shape `(batch, heads, max_new, head_dim)`, right-padded.
        new_counts: shape `(batch,)`, valid entries of each row of `new`.

    Returns:
        shape `(batch, heads, max(cached_lengths + new_counts), head_dim)`.
    """
    batch, heads, max_new, head_dim = new.shape
    width = int((cached_lengths + new_counts).max())
    out = new.new_zeros(batch, heads, width, head_dim)
    kept = min(cached.shape[2], width)
    out[:, :, :kept] = cached[:, :, :kept]
    rows, offsets = torch.nonzero(
        torch.arange(max_new, device=new.device)[None, :] < new_counts[:, None], as_tuple=True
    )
    out[rows, :, cached_lengths[rows] + offsets] = new[rows, :, offsets]
    return out
