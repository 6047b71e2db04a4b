"""Dense reward maps: from one global score and per-region scores to one reward per latent token.

Two modes (formulas in docs/concepts.md):

- ``"official"`` reproduces the released SRUM code: a 0.5 background, every region raises its pixels to
  ``(s + 1) / 2`` where that is larger (overlaps take the maximum), and the whole map is scaled by ``(g + 1) / 2``.
  Rewards lie in [0, 1] and a region scored at or below zero has no effect.
- ``"signed"`` is what the paper describes: ``R = (g + s_local) / 2`` in [-1, 1], with ``s_local`` the score of the
  covering region of largest magnitude (0 on the background). Negative tokens are pushed away from their content by
  the bounded repulsion of `trl_srum.loss.srum_loss`.

The pixel map then becomes one value per token in one of two ways (``pooling``):

- ``"bilinear"`` (the released code): bilinear interpolation, ``align_corners=False``, no antialiasing, so each token
  reads the few pixels around its centre. Where a token covers many pixels (BLIP3o: 128 x 128 at 1024 px), a region
  that covers no token centre has no effect at all.
- ``"area"``: each token takes the mean of the pixel map over its own cell, so every region moves the tokens it
  touches in proportion to the part of the cell it covers.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F


RewardMapMode = Literal["official", "signed"]
REWARD_MAP_MODES: tuple[str, ...] = ("official", "signed")
RewardMapPooling = Literal["bilinear", "area"]
REWARD_MAP_POOLINGS: tuple[str, ...] = ("bilinear", "area")


@dataclass
class RewardMapStats:
    """Counts of what `build_reward_map` had to repair; pass one in to accumulate over many maps."""

    clamped_scores: int = field(default=0, metadata={"help": "Scores outside [-1, 1] that were clamped."})
    skipped_boxes: int = field(
        default=0, metadata={"help": "Regions skipped for a malformed, inverted, empty or off-image box."}
    )
    missing_scores: int = field(default=0, metadata={"help": "Regions skipped because they had no score."})
    missing_global: int = field(default=0, metadata={"help": "Maps built without a global score (taken as 0)."})

    def update(self, other: "RewardMapStats") -> None:
        self.clamped_scores += other.clamped_scores
        self.skipped_boxes += other.skipped_boxes
        self.missing_scores += other.missing_scores
        self.missing_global += other.missing_global


def _checked_score(value: Any, what: str, stats: RewardMapStats) -> float | None:
    """A score as a float in [-1, 1]; None when absent. Non-finite scores are errors, never silently zeroed."""
    if value is None:
        return None
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"{what} is {score}: judge scores must be finite")
    if not -1.0 <= score <= 1.0:
        stats.clamped_scores += 1
        score = min(max(score, -1.0), 1.0)
    return score


def _pixel_box(bbox: Any, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box clamped to the image, in whole pixels, or None when it is malformed or covers no pixel."""
    if not isinstance(bbox, Sequence) or isinstance(bbox, str) or len(bbox) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(c) for c in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(c) for c in (x1, y1, x2, y2)) or x1 >= x2 or y1 >= y2:
        return None
    # Boxes from detectors can be fractional; the official data are integers, which round to themselves.
    x1, x2 = max(round(x1), 0), min(round(x2), width)
    y1, y2 = max(round(y1), 0), min(round(y2), height)
    if x1 >= x2 or y1 >= y2:
        return None
    return x1, y1, x2, y2


def build_reward_map(
    global_score: float | None,
    regions: Sequence[Mapping[str, Any]],
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
    mode: RewardMapMode = "official",
    *,
    pooling: RewardMapPooling = "bilinear",
    stats: RewardMapStats | None = None,
) -> torch.Tensor:
    """Build the reward of every latent token of one generated image.

    Args:
        global_score: the layout score g in [-1, 1], or None when the global judge gave none: then treated as 0
            and counted in `stats.missing_global` (whether such a row is trained on at all is the caller's choice;
            `SRUMTrainer` drops it by default, see `SRUMConfig.missing_global_score`).
        regions: dicts with at least ``"bbox"`` = [x1, y1, x2, y2] (pixels, end-exclusive) and ``"score"``. Malformed
            boxes and regions without a score are skipped and counted.
        image_size: (width, height) in pixels of the image the boxes refer to.
        grid_size: (rows, cols) of the latent token grid.
        mode: ``"official"`` or ``"signed"`` (see the module docstring).
        pooling: ``"bilinear"`` (released) or ``"area"`` (see the module docstring).
        stats: optional counters to accumulate into.

    Returns:
        A float32 tensor of shape (rows, cols).

    Raises:
        ValueError: for an unknown mode or pooling, a non-positive size, or a NaN/inf score.
    """
    if mode not in REWARD_MAP_MODES:
        raise ValueError(f"unknown reward map mode {mode!r}; expected one of {REWARD_MAP_MODES}")
    if pooling not in REWARD_MAP_POOLINGS:
        raise ValueError(f"unknown reward map pooling {pooling!r}; expected one of {REWARD_MAP_POOLINGS}")
    width, height = (int(v) for v in image_size)
    rows, cols = (int(v) for v in grid_size)
    if min(width, height, rows, cols) <= 0:
        raise ValueError(f"image_size {tuple(image_size)} and grid_size {tuple(grid_size)} must be positive")
    local_stats = RewardMapStats()

    g = _checked_score(global_score, "global score", local_stats)
    if g is None:
        local_stats.missing_global += 1
        g = 0.0

    background = 0.5 if mode == "official" else 0.0
    pixels = torch.full((height, width), background, dtype=torch.float32)
    for index, region in enumerate(regions):
        box = _pixel_box(region.get("bbox"), width, height)
        if box is None:
            local_stats.skipped_boxes += 1
            continue
        score = _checked_score(region.get("score"), f"score of region {index}", local_stats)
        if score is None:
            local_stats.missing_scores += 1
            continue
        x1, y1, x2, y2 = box
        patch = pixels[y1:y2, x1:x2]
        if mode == "official":
            torch.clamp_min_(patch, (score + 1.0) / 2.0)
        else:
            # The most confident verdict on a pixel wins, whatever its sign.
            candidate = torch.full_like(patch, score)
            pixels[y1:y2, x1:x2] = torch.where(candidate.abs() > patch.abs(), candidate, patch)

    if mode == "official":
        pixels = pixels * ((g + 1.0) / 2.0)
    else:
        pixels = (pixels + g) / 2.0

    if pooling == "bilinear":
        tokens = F.interpolate(pixels[None, None], size=(rows, cols), mode="bilinear", align_corners=False)
    else:
        # Summed in float64: a float32 mean over a 128 x 128 cell is off by up to ~1e-4.
        tokens = F.adaptive_avg_pool2d(pixels.double()[None, None], (rows, cols)).float()
    if stats is not None:
        stats.update(local_stats)
    return tokens[0, 0]
