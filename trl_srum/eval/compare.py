"""`trl-srum eval --compare A B`: the paired difference B - A of two runs, with a bootstrap 95% interval.

Images are paired by (prompt id, image index): with the same base seed, the two models drew each pair from the same
noise, so the difference is free of most sampling noise. Only pairs judged in both runs count (under the official
aggregation a missing judgement counts as -1 and every pair counts).

The interval is a percentile bootstrap over prompts, resampled within each category so that every resample keeps the
categories and their weights (the images of a prompt are correlated, so prompts, not images, are the unit). Each
resample recomputes both runs' headline numbers with the protocol's own rule and takes their difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import EvalConfig
from .protocols import protocol_class
from .report import read_run
from .scoring import image_value


@dataclass
class Difference:
    """B - A of one number, with its 95% interval."""

    a: float
    b: float
    difference: float
    low: float
    high: float

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high


@dataclass
class Comparison:
    """The paired comparison of two runs."""

    protocol: str
    aggregation: str
    overall: Difference
    categories: dict[str, Difference]
    prompts: int = field(metadata={"help": "Prompts with at least one image judged in both runs."})
    images: int = field(metadata={"help": "Image pairs compared."})
    samples: int = field(metadata={"help": "Bootstrap resamples."})
    seed: int = field(metadata={"help": "Seed of the resampling."})
    notes: list[str] = field(default_factory=list)


def _pairs(
    rows_a: list[Mapping[str, Any]], rows_b: list[Mapping[str, Any]], aggregation: str
) -> tuple[dict[str, tuple[str, float, float, int]], list[str]]:
    """Per prompt: (category, sum of A's values, sum of B's values, image pairs), and notes on what was left out."""
    by_key = {(row["prompt_id"], row["index"]): row for row in rows_b}
    prompts: dict[str, list] = {}
    unpaired, seeds_differ, unjudged = 0, 0, 0
    for row in rows_a:
        other = by_key.pop((row["prompt_id"], row["index"]), None)
        if other is None:
            unpaired += 1
            continue
        if other["prompt"] != row["prompt"]:
            raise ValueError(
                f"prompt {row['prompt_id']!r} differs between the runs: {row['prompt']!r}, {other['prompt']!r}"
            )
        seeds_differ += row["seed"] != other["seed"] or row["seed"] is None
        a, b = image_value(row["score"], aggregation), image_value(other["score"], aggregation)
        entry = prompts.setdefault(row["prompt_id"], [row["category"], 0.0, 0.0, 0])
        if a is None or b is None:
            unjudged += 1
            continue
        entry[1] += a
        entry[2] += b
        entry[3] += 1
    notes = []
    if unpaired or by_key:
        notes.append(f"{unpaired + len(by_key)} images are in one run only and were left out")
    if unjudged:
        notes.append(f"{unjudged} image pairs with a missing judgement were left out")
    if seeds_differ:
        notes.append(f"{seeds_differ} image pairs were not drawn from the same known seed: paired by prompt only")
    empty = [prompt for prompt, entry in prompts.items() if entry[3] == 0]
    if empty:
        notes.append(f"{len(empty)} prompts without a judged pair were left out")
    return {prompt: tuple(entry) for prompt, entry in prompts.items() if entry[3]}, notes


def compare_runs(run_a: str | Path, run_b: str | Path, *, samples: int = 10_000, seed: int = 0) -> Comparison:
    """Compare two finished runs (their `eval_dir`s) of the same protocol and aggregation; see the module docstring.

    Raises:
        ValueError: when the runs used different protocols, aggregations or judges, or share no judged image.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    summary_a, rows_a = read_run(run_a)
    summary_b, rows_b = read_run(run_b)
    for key in ("protocol", "aggregation"):
        if summary_a[key] != summary_b[key]:
            raise ValueError(
                f"the runs differ in {key}: {summary_a[key]!r} ({run_a}) and {summary_b[key]!r} ({run_b})"
            )
    if summary_a["judge"] != summary_b["judge"]:
        # Another judge (or judge size, or detector threshold) measures on another scale: no paired difference.
        raise ValueError(
            f"the runs were judged differently: {summary_a['judge']} ({run_a}), {summary_b['judge']} ({run_b})"
        )
    protocol_name, aggregation = summary_a["protocol"], summary_a["aggregation"]
    pairs, notes = _pairs(rows_a, rows_b, aggregation)
    if not pairs:
        raise ValueError(f"{run_a} and {run_b} have no judged image of the same prompt and index")
    protocol = protocol_class(protocol_name)(EvalConfig(protocol=protocol_name, aggregation=aggregation))

    categories = list(dict.fromkeys(entry[0] for entry in pairs.values()))
    columns = {
        c: np.array([entry[1:] for entry in pairs.values() if entry[0] == c], dtype=np.float64) for c in categories
    }
    weights = protocol.category_weights({c: int(columns[c][:, 2].sum()) for c in categories})
    rng = np.random.default_rng(seed)
    means: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for category, table in columns.items():
        # Row 0 is the observed data; rows 1.. are resamples of the category's prompts.
        picks = np.vstack([np.arange(len(table)), rng.integers(0, len(table), size=(samples, len(table)))])
        sums = table[picks].sum(axis=1)
        means[category] = (sums[:, 0] / sums[:, 2], sums[:, 1] / sums[:, 2])

    def summarize(values_a: np.ndarray, values_b: np.ndarray) -> Difference:
        low, high = np.percentile(values_b[1:] - values_a[1:], [2.5, 97.5])
        return Difference(
            float(values_a[0]), float(values_b[0]), float(values_b[0] - values_a[0]), float(low), float(high)
        )

    overall_a = sum(weights[c] * means[c][0] for c in categories)
    overall_b = sum(weights[c] * means[c][1] for c in categories)
    return Comparison(
        protocol=protocol_name,
        aggregation=aggregation,
        overall=summarize(overall_a, overall_b),
        categories={c: summarize(*means[c]) for c in categories},
        prompts=len(pairs),
        images=int(sum(entry[3] for entry in pairs.values())),
        samples=samples,
        seed=seed,
        notes=notes,
    )


def format_comparison(comparison: Comparison, run_a: str | Path, run_b: str | Path) -> str:
    """The comparison as text: the headline difference with its interval, then one line per category."""
    digits = 2 if protocol_class(comparison.protocol).scale == "0-100" else 3

    def line(name: str, d: Difference) -> str:
        return (
            f"| {name} | {d.a:.{digits}f} | {d.b:.{digits}f} | {d.difference:+.{digits}f} | "
            f"[{d.low:+.{digits}f}, {d.high:+.{digits}f}] |"
        )

    overall = comparison.overall
    lines = [
        f"{comparison.protocol} (aggregation {comparison.aggregation}): B - A on {comparison.prompts} prompts, "
        f"{comparison.images} paired images",
        f"A: {run_a}",
        f"B: {run_b}",
        f"overall B - A = {overall.difference:+.{digits}f}, "
        f"95% CI [{overall.low:+.{digits}f}, {overall.high:+.{digits}f}]"
        f" ({'contains' if overall.contains_zero else 'excludes'} 0; paired bootstrap over prompts within categories, "
        f"{comparison.samples} resamples, seed {comparison.seed})",
        "",
        "| category | A | B | B - A | 95% CI |",
        "|---|---:|---:|---:|---:|",
        *(line(name, d) for name, d in comparison.categories.items()),
        line("**overall**", overall),
    ]
    lines += [f"note: {note}" for note in comparison.notes]
    return "\n".join(lines)
