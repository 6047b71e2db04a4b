"""Log an evaluation to experiment trackers (tensorboard, wandb, ...), e.g. at the end of every SRUM round."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from PIL import Image

from .report import EvalResults


logger = logging.getLogger(__name__)

# Keyword arguments each tracker's `log_images` needs for (1, height, width, 3) uint8 arrays.
_IMAGE_KWARGS: dict[str, dict[str, str]] = {"tensorboard": {"dataformats": "NHWC"}}


def log_results(
    results: EvalResults,
    trackers: Accelerator | Iterable[GeneralTracker],
    step: int,
    *,
    prefix: str = "eval",
    images: bool = True,
) -> dict[str, float]:
    """Log an evaluation's numbers, and its category grids as images, to accelerate trackers.

    Names are `<prefix>/<protocol>/<name>` for `overall`, each category and group, and `missing`; grids are
    `<prefix>/<protocol>/grid/<category>`. A tracker without `log_images` gets the numbers only (noted in the log).

    Args:
        results: what `evaluate_model` / `evaluate_folder` returned.
        trackers: an `Accelerator` (its trackers: `log_with=...` and `init_trackers` done) or trackers themselves.
        step: the x-axis value, e.g. the SRUM round or the trainer's global step.
        prefix: the first part of every name.
        images: also log the grids.

    Returns:
        The numbers logged, by name.
    """
    if isinstance(trackers, Accelerator):
        trackers = trackers.trackers
    base = f"{prefix}/{results.protocol}"
    values = {f"{base}/{name}": value for name, value in results.scalars().items()}
    grids = {}
    if images:
        for category, path in results.grids.items():
            with Image.open(path) as grid:
                grids[f"{base}/grid/{category}"] = np.asarray(grid.convert("RGB"))[None]
    for tracker in trackers:
        tracker.log(values, step=step)
        if not grids:
            continue
        if hasattr(tracker, "log_images"):
            tracker.log_images(grids, step=step, **_IMAGE_KWARGS.get(tracker.name, {}))
        else:
            logger.info(f"tracker {tracker.name!r} cannot log images; the grids are in {results.eval_dir / 'grids'}")
    return values
