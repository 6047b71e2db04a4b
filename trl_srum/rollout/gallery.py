"""What a person looks at after stage 1: a gallery of judged images with their reward maps, and a summary."""

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from PIL import Image, ImageDraw

from ..reward_map import build_reward_map
from .schema import STATUS_OK


HISTOGRAM_EDGES = np.linspace(-1.0, 1.0, 9)


def _score_colour(score: float | None) -> tuple[int, int, int]:
    if score is None:
        return (128, 128, 128)
    return (0, 170, 0) if score > 0 else (220, 0, 0) if score < 0 else (230, 160, 0)


def _reward_overlay(row: dict[str, Any]) -> Image.Image:
    image: Image.Image = row["image"].convert("RGB")
    width, height = image.size
    grid = tuple(row["latent_grid"]) if row.get("latent_grid") else (max(1, height // 16), max(1, width // 16))
    rewards = build_reward_map(row["global_score"], row["regions"], image.size, grid, mode="official").numpy()
    # Rewards of the official map lie in [0, 1]: blue (no weight) to red (full weight).
    heat = np.stack([rewards, np.zeros_like(rewards), 1.0 - rewards], axis=-1)
    heat = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.NEAREST)
    return Image.blend(image, heat, 0.45)


def draw_rollout(row: dict[str, Any]) -> Image.Image:
    """The image with its boxes and scores (left) and its reward-map overlay (right), with the global score."""
    image: Image.Image = row["image"].convert("RGB")
    width, height = image.size
    scale = max(1, 256 // max(width, height))  # small images are enlarged so the labels stay readable
    boxed = image.resize((width * scale, height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(boxed)
    for index, region in enumerate(row["regions"], start=1):
        box = [c * scale for c in region["bbox"]]
        colour = _score_colour(region["score"])
        draw.rectangle(box, outline=colour, width=2)
        score = "?" if region["score"] is None else f"{region['score']:+.2f}"
        draw.text((box[0] + 2, box[1] + 1), f"{index}:{score}", fill=colour)
    overlay = _reward_overlay(row).resize(boxed.size, Image.NEAREST)
    canvas = Image.new("RGB", (boxed.width * 2 + 4, boxed.height + 14), "white")
    canvas.paste(boxed, (0, 14))
    canvas.paste(overlay, (boxed.width + 4, 14))
    global_text = "none" if row["global_score"] is None else f"{row['global_score']:+.2f}"
    ImageDraw.Draw(canvas).text((2, 1), f"global {global_text} | {row['prompt'][:60]}", fill=(0, 0, 0))
    return canvas


def write_gallery(dataset: Dataset, rollout_dir: str | Path, size: int) -> list[Path]:
    """Draw `size` judged rows, spread evenly over the dataset, into `<rollout_dir>/gallery/`."""
    judged = [i for i, status in enumerate(dataset["status"]) if status == STATUS_OK]
    if size <= 0 or not judged:
        return []
    chosen = [judged[int(j)] for j in np.linspace(0, len(judged) - 1, min(size, len(judged)))]
    folder = Path(rollout_dir) / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in dict.fromkeys(chosen):
        row = dataset[index]
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', row['row_id'])}.png"
        draw_rollout(row).save(path)
        paths.append(path)
    return paths


def _histogram(values: list[float]) -> list[int]:
    return np.histogram(np.asarray(values, dtype=np.float64), bins=HISTOGRAM_EDGES)[0].tolist()


def summarize_rollouts(dataset: Dataset, rollout_dir: str | Path) -> str:
    """Score histograms and failure counts; written to `<rollout_dir>/summary.json` and returned as text."""
    global_scores = [g for g in dataset["global_score"] if g is not None]
    region_lists = dataset["regions"]
    region_scores = [r["score"] for regions in region_lists for r in regions if r["score"] is not None]
    notes = Counter(
        re.sub(r"\d+", "N", note) for error in dataset["error"] for note in filter(None, (error or "").split("; "))
    )
    missing_global = sum(
        status == STATUS_OK and score is None
        for status, score in zip(dataset["status"], dataset["global_score"], strict=True)
    )
    summary = {
        "rows": len(dataset),
        "status": dict(Counter(dataset["status"])),
        # judged rows whose global verdict is missing: SRUMTrainer drops them unless missing_global_score='neutral'
        "ok_rows_without_global_score": missing_global,
        "notes": dict(notes.most_common()),
        "regions_per_image": (sum(len(r) for r in region_lists) / len(dataset)) if len(dataset) else 0.0,
        "histogram_edges": HISTOGRAM_EDGES.tolist(),
        "global_score_histogram": _histogram(global_scores),
        "region_score_histogram": _histogram(region_scores),
        "global_score_mean": float(np.mean(global_scores)) if global_scores else None,
        "region_score_mean": float(np.mean(region_scores)) if region_scores else None,
    }
    Path(rollout_dir, "summary.json").write_text(json.dumps(summary, indent=2))

    lines = [f"stage 1: {summary['rows']} rows, {summary['regions_per_image']:.2f} regions per image"]
    lines += [f"  status {status}: {count}" for status, count in summary["status"].items()]
    lines.append(f"  ok rows without a global score: {missing_global}")
    lines += [f"  note '{note}': {count}" for note, count in summary["notes"].items()]
    for name in ("global_score", "region_score"):
        counts = summary[f"{name}_histogram"]
        peak = max(counts) or 1
        lines.append(f"  {name} histogram:")
        for low, high, count in zip(HISTOGRAM_EDGES[:-1], HISTOGRAM_EDGES[1:], counts, strict=True):
            lines.append(f"    [{low:+.2f}, {high:+.2f}) {'#' * round(30 * count / peak):<30} {count}")
    return "\n".join(lines)


def image_grid(rows: Sequence[Sequence[Image.Image]], pad: int = 2) -> Image.Image:
    """Paste rows of equally sized images into one picture (e.g. before over after, same seeds)."""
    width, height = rows[0][0].size
    columns = max(len(row) for row in rows)
    grid = Image.new("RGB", (columns * (width + pad) + pad, len(rows) * (height + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (pad + c * (width + pad), pad + r * (height + pad)))
    return grid
