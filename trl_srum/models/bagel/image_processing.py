"""Pixels and latents in BAGEL's layouts: resizing, [-1, 1] tensors, patch tokens and grid position ids."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _round_to_stride(value: float, stride: int) -> int:
    return max(stride, int(round(value / stride) * stride))


def resize_for_model(image: Image.Image, max_size: int, min_size: int, stride: int) -> Image.Image:
    """The official resize: long edge at most `max_size`, short edge at least `min_size`, both multiples of `stride`.

    (The official transform also caps the pixel count at 14*14*9*1024, which no image within 1024 px reaches.)
    """
    width, height = image.size
    scale = max(min(max_size / max(width, height), 1.0), min_size / min(width, height))
    new_width, new_height = _round_to_stride(width * scale, stride), _round_to_stride(height * scale, stride)
    if max(new_width, new_height) > max_size:
        scale = max_size / max(new_width, new_height)
        new_width, new_height = (
            _round_to_stride(new_width * scale, stride),
            _round_to_stride(new_height * scale, stride),
        )
    if (new_width, new_height) == image.size:
        return image
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor `(3, height, width)` in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


def tensor_to_pil(pixels: torch.Tensor) -> Image.Image:
    """Float tensor `(3, height, width)` in [-1, 1] -> RGB image, truncating to uint8 as the official code does."""
    scaled = ((pixels.float() * 0.5 + 0.5).clamp(0, 1) * 255).permute(1, 2, 0)
    return Image.fromarray(scaled.to(torch.uint8).cpu().numpy())


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(..., channels, height, width)` -> `(..., rows * cols, patch_size * patch_size * channels)` tokens, row-major
    (leading batch dimensions are kept).

    Features are ordered (patch row, patch col, channel), channel fastest: the layout of both BAGEL's latent tokens
    and its ViT patch embedding.
    """
    *batch, channels, height, width = image.shape
    rows, cols = height // patch_size, width // patch_size
    tokens = image.reshape(*batch, channels, rows, patch_size, cols, patch_size)
    lead = len(batch)
    tokens = tokens.permute(*range(lead), lead + 1, lead + 3, lead + 2, lead + 4, lead)
    return tokens.reshape(*batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Inverse of `patchify`: `(rows * cols, patch_size**2 * channels)` -> `(channels, rows * p, cols * p)`."""
    rows, cols = grid
    channels = tokens.shape[-1] // patch_size**2
    image = tokens.reshape(rows, cols, patch_size, patch_size, channels).permute(4, 0, 2, 1, 3)
    return image.reshape(channels, rows * patch_size, cols * patch_size)


def grid_position_ids(grid: tuple[int, int], max_side: int) -> torch.Tensor:
    """Rows of a `max_side`-square position table for a `(rows, cols)` grid: `row * max_side + col`, row-major."""
    rows, cols = grid
    return (torch.arange(rows)[:, None] * max_side + torch.arange(cols)[None, :]).flatten()


def sincos_2d_table(embed_dim: int, grid_side: int) -> torch.Tensor:
    """The fixed 2D sin-cos table (MAE / DiT), shape `(grid_side**2, embed_dim)`, row `r * grid_side + c`.

    The first half of the features encodes the column, the second half the row; each half is
    `[sin(pos * omega), cos(pos * omega)]` with `omega_k = 10000 ** (-k / (embed_dim / 4))`.
    """
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
    coordinate = torch.arange(grid_side, dtype=torch.float64)

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows = coordinate.repeat_interleave(grid_side)
    cols = coordinate.repeat(grid_side)
    return torch.cat([encode(cols), encode(rows)], dim=1).float()
