"""What an evaluation protocol is, and the registry that finds one by name.

A protocol reads its prompts, judges images (one score per image, or None when the judgement is missing) and says how
category scores combine into its headline number. Everything else (drawing, resuming, processes, outputs) is shared
by `trl_srum.eval.runner`.

Protocols are registered as ``"module:attribute"`` strings and imported on first use, so that naming one does not load
the others' dependencies (a VLM, a detector, the shapes world).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image, ImageOps

from ..plugins import load_plugins
from ..rollout.prompts import PromptRecord
from .config import EvalConfig


@dataclass(frozen=True)
class EvalImage:
    """One image to judge: image `index` of a prompt, where it is, and the seed it was drawn from (None if unknown)."""

    record: PromptRecord
    index: int
    path: Path
    seed: int | None = None

    def load(self) -> Image.Image:
        """The image in RGB, turned upright by its EXIF orientation (photos and some generators' JPEGs carry one)."""
        try:
            with Image.open(self.path) as image:
                return ImageOps.exif_transpose(image).convert("RGB")
        except OSError as error:
            raise ValueError(f"cannot read image {self.path} of prompt {self.record.prompt_id!r}: {error}") from error


@dataclass
class Judgement:
    """A protocol's verdict on one image."""

    score: float | None = field(metadata={"help": "The image's score on the protocol's scale; None = missing."})
    output: str = field(default="", metadata={"help": "What the judge wrote or read, for a person to check."})
    attempts: int = field(default=1, metadata={"help": "Judge calls used, retries included."})


class EvalProtocol(ABC):
    """An evaluation protocol; subclasses set `name`, `scale` and implement the abstract methods.

    Aggregation: a category's score is the mean of its images' scores; the headline number is a weighted sum of
    category scores (`category_weights`). By default categories weigh the same, except that the categories of a group
    in `groups` share one weight, and the group's own score is the plain mean of its categories' scores.
    """

    name: ClassVar[str]
    scale: ClassVar[str]  # "0-100" or "accuracy"
    aggregations: ClassVar[tuple[str, ...]] = ("exclude_missing",)
    groups: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __init__(self, config: EvalConfig):
        if config.aggregation not in self.aggregations:
            raise ValueError(
                f"protocol {self.name!r} supports aggregation {self.aggregations}, not {config.aggregation!r}"
            )
        self.config = config

    @abstractmethod
    def load_prompts(self) -> list[PromptRecord]:
        """The prompts the configuration names, checked before any image is drawn or judged."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting a judgement depends on (the judge models by name): recorded with the judgements and in the
        results, and checked when a run resumes."""

    @abstractmethod
    def judge(self, images: Sequence[EvalImage], device: torch.device) -> list[Judgement]:
        """Judge a batch of images, one `Judgement` each, loading the judge models on `device` on first use."""

    def category_weights(self, image_counts: Mapping[str, int]) -> dict[str, float]:
        """The weight of each category's score in the headline number (they sum to 1)."""
        grouped = {member: group for group, members in self.groups.items() for member in members}
        units: dict[str, list[str]] = {}
        for category in image_counts:
            units.setdefault(grouped.get(category, category), []).append(category)
        return {category: 1.0 / len(units) / len(members) for members in units.values() for category in members}

    def group_scores(self, category_scores: Mapping[str, float | None]) -> dict[str, float | None]:
        """The score of each group in `groups` with a category present: the plain mean of its categories' scores."""
        scores = {}
        for group, members in self.groups.items():
            present = [category_scores[m] for m in members if m in category_scores]
            if present:
                scores[group] = None if None in present else sum(present) / len(present)
        return scores

    def overall_rule(self, categories: Sequence[str]) -> str:
        """How the headline number is computed from these categories, in words (written into the results)."""
        grouped = {member for members in self.groups.values() for member in members}
        units = [c for c in categories if c not in grouped]
        for group, members in self.groups.items():
            present = [m for m in members if m in categories]
            if present:
                units.append(f"{group} (mean of {', '.join(present)})")
        return f"unweighted mean of {', '.join(units)}"


# Plug-ins add theirs (`trl_srum.plugins`): the shapes world registers `shapes`.
PROTOCOLS: dict[str, str | type[EvalProtocol]] = {
    "compbench-vlm": "trl_srum.eval.compbench:CompBenchProtocol",
    "geneval": "trl_srum.eval.geneval:GenEvalProtocol",
}


def register_protocol(name: str, protocol: str | type[EvalProtocol]) -> None:
    """Make a protocol available by name: a class, or a ``"module:attribute"`` string imported on first use."""
    PROTOCOLS[name] = protocol


def protocol_class(name: str) -> type[EvalProtocol]:
    """The protocol registered as `name`.

    Raises:
        ValueError: naming the registered protocols when `name` is not one of them.
    """
    load_plugins()
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; registered: {sorted(PROTOCOLS)}")
    target = PROTOCOLS[name]
    if isinstance(target, str):
        module, _, attribute = target.partition(":")
        target = PROTOCOLS[name] = getattr(importlib.import_module(module), attribute)
    return target


def build_protocol(config: EvalConfig, **kwargs: Any) -> EvalProtocol:
    """The protocol `config.protocol` names, built from `config` (and `kwargs`, e.g. an injected judge)."""
    return protocol_class(config.protocol)(config, **kwargs)
