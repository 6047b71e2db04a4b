"""What an evaluation leaves behind: `results.json`, `results.md`, `per_prompt.csv`, `scores.jsonl` and `grids/`."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from .. import __version__
from ..rollout.gallery import image_grid
from ..rollout.writer import write_atomically
from .scoring import Aggregate


RESULTS_NAME = "results.json"
SCORES_NAME = "scores.jsonl"


@dataclass
class EvalResults:
    """One evaluation: its table, the per-image rows, and where its files are."""

    protocol: str = field(metadata={"help": "The protocol's name."})
    aggregate: Aggregate = field(metadata={"help": "Category scores, groups and the headline number."})
    rows: list[dict[str, Any]] = field(metadata={"help": "One record per image, in prompt and index order."})
    summary: dict[str, Any] = field(metadata={"help": "The content of results.json."})
    eval_dir: Path = field(metadata={"help": "The output folder."})
    images_dir: Path = field(metadata={"help": "The folder of the images (rows name them relative to it)."})
    grids: dict[str, Path] = field(default_factory=dict, metadata={"help": "Image grid of each category."})

    @property
    def overall(self) -> float | None:
        return self.aggregate.overall

    def scalars(self) -> dict[str, float]:
        """Every number of the table by name (`overall`, each category and group), for a tracker."""
        values = {"overall": self.aggregate.overall}
        values.update({category: line.score for category, line in self.aggregate.categories.items()})
        values.update(self.aggregate.groups)
        values["missing"] = sum(line.missing for line in self.aggregate.categories.values())
        return {name: float(value) for name, value in values.items() if value is not None}


def summarize(
    protocol: str,
    scale: str,
    aggregation: str,
    table: Aggregate,
    rows: Sequence[Mapping[str, Any]],
    *,
    judge: Mapping[str, Any],
    images: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The content of results.json."""
    return {
        "protocol": protocol,
        "scale": scale,
        "aggregation": aggregation,
        "overall": table.overall,
        "overall_rule": table.rule,
        "groups": table.groups,
        "categories": {category: dataclasses.asdict(line) for category, line in table.categories.items()},
        "weights": table.weights,
        "num_prompts": len({row["prompt_id"] for row in rows}),
        "num_images": len(rows),
        "missing_judgements": sum(row["score"] is None for row in rows),
        "judge": dict(judge),
        "images": dict(images),
        "settings": dict(settings),
        "trl_srum_version": __version__,
    }


def _number(value: float | None, scale: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if scale == "0-100" else f"{value:.3f}"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The results as a markdown table: one line per category, then the groups and the headline number."""
    scale = summary["scale"]
    lines = [
        f"# {summary['protocol']} ({scale}, aggregation {summary['aggregation']})",
        "",
        "| category | score | prompts | images | missing |",
        "|---|---:|---:|---:|---:|",
    ]
    for category, line in summary["categories"].items():
        lines.append(
            f"| {category} | {_number(line['score'], scale)} | {line['prompts']} | {line['images']} | "
            f"{line['missing']} |"
        )
    for group, value in summary["groups"].items():
        lines.append(f"| **{group}** | {_number(value, scale)} | | | |")
    lines.append(
        f"| **overall** | **{_number(summary['overall'], scale)}** | {summary['num_prompts']} | "
        f"{summary['num_images']} | {summary['missing_judgements']} |"
    )
    lines += ["", f"overall: {summary['overall_rule']}"]
    lines += [f"{name}: {value}" for name, value in summary["judge"].items()]
    return "\n".join(lines) + "\n"


def per_prompt_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per prompt: its mean over judged images and every image's score (empty: missing)."""
    by_prompt: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["prompt_id", "category", "prompt", "images", "missing", "mean_score", "scores", "seeds"])
    for prompt_id, group in by_prompt.items():
        judged = [row["score"] for row in group if row["score"] is not None]
        writer.writerow(
            [
                prompt_id,
                group[0]["category"],
                group[0]["prompt"],
                len(group),
                len(group) - len(judged),
                f"{sum(judged) / len(judged):.6g}" if judged else "",
                ";".join("" if row["score"] is None else f"{row['score']:.6g}" for row in group),
                ";".join("" if row["seed"] is None else str(row["seed"]) for row in group),
            ]
        )
    return buffer.getvalue()


def _thumbnail(path: Path, score: float | None, side: int, caption: str = "") -> Image.Image:
    """The image padded to a square, its score at the top left and `caption` (cut to fit) at the bottom."""
    with Image.open(path) as image:
        thumbnail = ImageOps.pad(image.convert("RGB"), (side, side), color="white")
    draw = ImageDraw.Draw(thumbnail)
    text = "missing" if score is None else f"{score:.3g}"
    draw.rectangle((0, 0, 6 * len(text) + 4, 12), fill="white")
    draw.text((2, 0), text, fill="black")
    if caption:
        caption = caption[: max(1, (side - 4) // 6)]
        draw.rectangle((0, side - 12, 6 * len(caption) + 4, side), fill="white")
        draw.text((2, side - 12), caption, fill="black")
    return thumbnail


def write_grids(
    rows: Sequence[Mapping[str, Any]], images_dir: Path, folder: Path, prompts: int, side: int
) -> dict[str, Path]:
    """`grids/<category>.png`: the first `prompts` prompts of each category, one row of all their images each, every
    image labelled with its score and each row's first with its prompt."""
    by_category: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], {}).setdefault(row["prompt_id"], []).append(row)
    grids = {}
    for category, by_prompt in by_category.items():
        chosen = list(by_prompt.values())[:prompts]
        if not chosen:
            continue
        picture = image_grid(
            [
                [
                    _thumbnail(images_dir / r["image"], r["score"], side, r["prompt"] if i == 0 else "")
                    for i, r in enumerate(group)
                ]
                for group in chosen
            ]
        )
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', category)}.png"
        write_atomically(path, functools.partial(picture.save, format="PNG"))
        grids[category] = path
    return grids


def write_report(results: EvalResults, grid_prompts: int, grid_side: int) -> None:
    """Write every output file of `results` into its folder (each one atomically) and record the grids in it."""
    folder = results.eval_dir
    results.grids = write_grids(results.rows, results.images_dir, folder / "grids", grid_prompts, grid_side)
    files = {
        RESULTS_NAME: json.dumps(results.summary, indent=2) + "\n",
        "results.md": markdown_table(results.summary),
        "per_prompt.csv": per_prompt_csv(results.rows),
        SCORES_NAME: "".join(json.dumps(row) + "\n" for row in results.rows),
    }
    for name, text in files.items():
        write_atomically(folder / name, functools.partial(Path.write_text, data=text))


def read_run(eval_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The results.json and per-image rows of a finished run.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    folder = Path(eval_dir)
    for name in (RESULTS_NAME, SCORES_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a finished `trl-srum eval` run: no {name}")
    summary = json.loads((folder / RESULTS_NAME).read_text())
    rows = [json.loads(line) for line in (folder / SCORES_NAME).read_text().splitlines() if line.strip()]
    return summary, rows
