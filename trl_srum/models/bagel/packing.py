"""Packing the new tokens of a BAGEL forward: one flat sequence of text, image markers, ViT and latent tokens.

Sequences are packed one after the other. Each piece of a sequence becomes a *split* of the attention layout
(`attention.py`): text is causal with consecutive RoPE positions; an image chunk
`[<|vision_start|>] + tokens + [<|vision_end|>]` is bidirectional and takes one RoPE position for all its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .attention import Split


@dataclass
class PackedTokens:
    """The new tokens of one forward, packed sequence after sequence, and what each of them is."""

    num_tokens: int
    text_ids: torch.Tensor  # (num_text,) long: text tokens and image markers
    text_indexes: torch.Tensor  # (num_text,) long: their packed positions
    latent_indexes: torch.Tensor  # (num_latent,) long: packed positions of latent tokens, in order
    vit_indexes: torch.Tensor  # (num_vit,) long: packed positions of ViT tokens, in order
    position_ids: torch.Tensor  # (num_tokens,) long: RoPE positions
    is_gen: torch.Tensor  # (num_tokens,) bool: routed to the generation expert
    splits: list[list[Split]]  # per sequence
    next_positions: torch.Tensor  # (batch,) long


class SequencePacker:
    """Lays out the new tokens of a forward; add the pieces of sequence 0 first, then of sequence 1, and so on."""

    def __init__(self, start_positions: Sequence[int], vision_start_token_id: int, vision_end_token_id: int) -> None:
        self.vision_markers = [vision_start_token_id, vision_end_token_id]
        self.positions = [int(position) for position in start_positions]
        self.splits: list[list[Split]] = [[] for _ in self.positions]
        self.text_ids: list[int] = []
        self.text_indexes: list[int] = []
        self.latent_indexes: list[int] = []
        self.vit_indexes: list[int] = []
        self.position_ids: list[int] = []
        self.is_gen: list[bool] = []
        self.current_sequence = 0

    def _start(self, sequence: int) -> int:
        if sequence < self.current_sequence:
            raise ValueError(f"Sequence {sequence} was packed after sequence {self.current_sequence}.")
        self.current_sequence = sequence
        return len(self.position_ids)

    def add_text(self, sequence: int, token_ids: Sequence[int]) -> None:
        """Text tokens (already wrapped as needed): consecutive positions, causal."""
        start = self._start(sequence)
        self.text_ids.extend(token_ids)
        self.text_indexes.extend(range(start, start + len(token_ids)))
        self.position_ids.extend(range(self.positions[sequence], self.positions[sequence] + len(token_ids)))
        self.is_gen.extend([False] * len(token_ids))
        self.positions[sequence] += len(token_ids)
        self.splits[sequence].append((len(token_ids), "causal"))

    def add_image(self, sequence: int, num_tokens: int, kind: str, latent: bool) -> None:
        """`[<|vision_start|>] + num_tokens image tokens + [<|vision_end|>]`, all at the current position.

        The markers use the understanding expert; latent tokens the generation expert. A noisy chunk does not
        advance the position: in the official interleaved data its clean copy follows at the same position.
        """
        start = self._start(sequence)
        self.text_ids.extend(self.vision_markers)
        self.text_indexes.extend([start, start + num_tokens + 1])
        (self.latent_indexes if latent else self.vit_indexes).extend(range(start + 1, start + 1 + num_tokens))
        self.position_ids.extend([self.positions[sequence]] * (num_tokens + 2))
        self.is_gen.extend([False] + [latent] * num_tokens + [False])
        self.positions[sequence] += kind != "noise"
        self.splits[sequence].append((num_tokens + 2, kind))

    def build(self, device: torch.device | str) -> PackedTokens:
        def long(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return PackedTokens(
            num_tokens=len(self.position_ids),
            text_ids=long(self.text_ids),
            text_indexes=long(self.text_indexes),
            latent_indexes=long(self.latent_indexes),
            vit_indexes=long(self.vit_indexes),
            position_ids=long(self.position_ids),
            is_gen=torch.tensor(self.is_gen, dtype=torch.bool, device=device),
            splits=self.splits,
            next_positions=long(self.positions),
        )
