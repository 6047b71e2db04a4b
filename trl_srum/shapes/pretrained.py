"""The tiny shapes-world BAGEL that ships with trl-srum (trained by `recipes/shapes/pretrain.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "shapes_bagel"
SHAPES_IMAGE_SIZE = 64
# The sampler settings of the shipped model: BAGEL's text-to-image recipe (shift 3, text CFG on the noisy part of the
# trajectory, global renorm) with fewer steps, which a 64x64 scene does not need, and a milder guidance scale (at 4 the
# tiny model's shapes warp; 1.5 to 2.5 drew the most correct scenes).
SHAPES_SAMPLING: dict[str, Any] = {
    "num_timesteps": 20,
    "timestep_shift": 3.0,
    "cfg_text_scale": 2.0,
    "cfg_interval": (0.4, 1.0),
    "cfg_renorm_type": "global",
    "cfg_renorm_min": 0.0,
}


def load_shapes_model(path: str | Path = DEFAULT_MODEL_DIR, **kwargs: Any):
    """The shipped tiny BAGEL (a `BagelModel`), loaded through the same `from_pretrained` as the 7B."""
    from ..models import load_unified_model

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no shapes-world model in {path}; train one with `python recipes/shapes/pretrain.py --output_dir {path}`"
        )
    return load_unified_model(path, **kwargs)
