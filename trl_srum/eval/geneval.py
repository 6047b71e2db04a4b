"""`geneval`: GenEval's rules on objects found by a transformers zero-shot detector, colours named by CLIP.

Prompts are GenEval's `evaluation_metadata.jsonl` (or a dataset with the same fields): one object per prompt with
`prompt`, `tag` (the task: single_object, two_object, counting, colors, position, color_attr) and clauses::

    include: [{"class": "dog", "count": 2, "color"?: "red", "position"?: ["left of", 0]}, ...]
    exclude: [{"class": "dog", "count": 3}, ...]

Prompt `i` (0-based line) has the id `f"{i:05d}"`, the name of its folder in GenEval's image layout.

GenEval's rules (`geneval_verdict`), on each class's detections sorted by score:

- an include clause needs at least `count` detections of its class; only the `count` most confident take part in
  the colour and position checks;
- `color`: each of those must be classified as that colour;
- `position` ``[relation, j]``: the clause's objects must stand in `relation` to those of clause `j`, which must
  itself have been met, by GenEval's relative-position rule (`trl_srum.object_rules`, margin `position_threshold`)
  between every pair of instances;
- an exclude clause fails the image when its class has at least `count` detections (counting prompts exclude
  `count + 1`, so their count is exact).

The task score is the fraction of correct images; the headline number is the unweighted mean over tasks.

How this differs from the official GenEval tool (numbers are comparable between models measured with this tool, not
with published GenEval tables): the official detector is Mask2Former (Swin-S, COCO classes) through mmdet, with
score thresholds 0.3 and 0.9 on counting prompts, no overlap suppression, and colours classified by CLIP ViT-L/14 on
the object's mask over a grey background. Here the detector is open-vocabulary (OWLv2 by default) and is asked only
for the classes the prompt names, so it cannot confuse a named class with an unnamed one; its scores run lower,
hence one threshold by default; boxes of one class that overlap are merged (`nms_iou`); and colours are classified on
the box crop (no masks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..object_rules import RELATIONS, group_relations
from ..rollout.prompts import PromptRecord
from .config import EvalConfig
from .detectors import COLORS, ClipColorClassifier, DetectedObject, ZeroShotDetector
from .protocols import EvalImage, EvalProtocol, Judgement
from .sources import load_rows


TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _relation(phrase: str) -> str:
    """GenEval writes relations as "left of"; the shared rules name them "left_of"."""
    return phrase.strip().replace(" ", "_")


def check_metadata(row: Any, where: str) -> dict[str, Any]:
    """Check one GenEval metadata row and return it; raise ValueError naming `where` and what is wrong."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    if not isinstance(row.get("prompt"), str) or not isinstance(row.get("tag"), str):
        raise ValueError(f"{where}: needs string fields 'prompt' and 'tag'")
    include, exclude = row.get("include"), row.get("exclude") or []
    if not isinstance(include, list) or not include or not isinstance(exclude, list):
        raise ValueError(f"{where}: 'include' must be a non-empty list and 'exclude' a list")
    for kind, clauses in (("include", include), ("exclude", exclude)):
        for index, clause in enumerate(clauses):
            name = f"{where}: {kind}[{index}]"
            if not isinstance(clause, Mapping) or not isinstance(clause.get("class"), str):
                raise ValueError(f"{name} needs a string 'class'")
            if type(clause.get("count")) is not int or clause["count"] < 1:
                raise ValueError(f"{name} needs an integer 'count' >= 1, got {clause.get('count')!r}")
            if clause.get("color") is not None and clause["color"] not in COLORS:
                raise ValueError(f"{name}: colour {clause['color']!r} is not one of GenEval's {COLORS}")
            position = clause.get("position")
            if position is not None:
                valid = isinstance(position, list | tuple) and len(position) == 2 and type(position[1]) is int
                if not valid or _relation(position[0]) not in RELATIONS or not 0 <= position[1] < index:
                    raise ValueError(f"{name}: position must be [relation, earlier clause index], got {position!r}")
    return {**row, "include": include, "exclude": exclude}


def load_geneval_prompts(source: str, split: str) -> tuple[list[PromptRecord], dict[str, dict[str, Any]]]:
    """GenEval prompts and their metadata by prompt id (see the module docstring)."""
    records, metadata = [], {}
    for index, row in enumerate(load_rows(source, split)):
        checked = check_metadata(row, f"{source} entry {index}")
        prompt_id = f"{index:05d}"
        records.append(PromptRecord(prompt_id, checked["prompt"], checked["tag"]))
        metadata[prompt_id] = checked
    return records, metadata


def class_names(metadata: Mapping[str, Any]) -> list[str]:
    """The object classes a prompt's clauses name, in order."""
    return list(dict.fromkeys(clause["class"] for clause in [*metadata["include"], *metadata["exclude"]]))


def geneval_verdict(
    metadata: Mapping[str, Any],
    objects: Mapping[str, Sequence[DetectedObject]],
    *,
    position_threshold: float = 0.1,
) -> tuple[bool, list[str]]:
    """Whether the detections satisfy a prompt's clauses by GenEval's rules, and why not.

    Args:
        metadata: the prompt's checked metadata (`include`, `exclude`).
        objects: per class, its detections, most confident first, with `color` set for the ones a colour clause
            looks at.
        position_threshold: the margin of the relative-position rule.

    Returns:
        (correct, the reasons it is not; empty when correct).
    """
    reasons: list[str] = []
    met: list[Sequence[DetectedObject] | None] = []
    for clause in metadata["include"]:
        name, count = clause["class"], clause["count"]
        chosen = list(objects.get(name, []))[:count]
        ok = len(chosen) >= count
        if not ok:
            reasons.append(f"expected at least {count} {name}, found {len(chosen)}")
        if ok and clause.get("color") is not None:
            colored = sum(obj.color == clause["color"] for obj in chosen)
            if colored < count:
                ok = False
                seen = ", ".join(sorted(str(obj.color) for obj in chosen))
                reasons.append(f"expected {count} {clause['color']} {name}, found {colored} ({seen})")
        if ok and clause.get("position") is not None:
            phrase, target = clause["position"]
            if met[target] is None:
                ok = False
                reasons.append(f"no {metadata['include'][target]['class']} for {name} to be {phrase}")
            else:
                holds = group_relations(
                    [obj.box for obj in chosen],
                    [obj.box for obj in met[target]],
                    locate="every_pair",
                    threshold=position_threshold,
                )
                if _relation(phrase) not in holds:
                    ok = False
                    found = " and ".join(sorted(holds)) or "no relation"
                    reasons.append(f"expected {name} {phrase} {metadata['include'][target]['class']}, found {found}")
        met.append(chosen if ok else None)
    for clause in metadata["exclude"]:
        found = len(objects.get(clause["class"], []))
        if found >= clause["count"]:
            reasons.append(f"expected fewer than {clause['count']} {clause['class']}, found {found}")
    return not reasons, reasons


class GenEvalProtocol(EvalProtocol):
    """GenEval's rules on a zero-shot detector's objects (see the module docstring). The detector and the colour
    classifier can be injected (`detector`, `colors`); otherwise they load on first use."""

    name = "geneval"
    scale = "accuracy"

    def __init__(
        self,
        config: EvalConfig,
        detector: ZeroShotDetector | None = None,
        colors: ClipColorClassifier | None = None,
    ):
        super().__init__(config)
        self._detector, self._colors = detector, colors
        self.metadata: dict[str, dict[str, Any]] = {}

    def load_prompts(self) -> list[PromptRecord]:
        if not self.config.prompts:
            raise ValueError("geneval needs prompts: GenEval's evaluation_metadata.jsonl, or a dataset of its rows")
        records, self.metadata = load_geneval_prompts(self.config.prompts, self.config.prompts_split)
        return records

    def settings(self) -> dict[str, Any]:
        config = self.config
        return {
            "detector_model": self._detector.name if self._detector is not None else config.detector_model,
            "clip_model": self._colors.name if self._colors is not None else config.clip_model,
            "judge_dtype": config.judge_dtype,
            "detection_threshold": config.detection_threshold,
            "counting_threshold": self._counting_threshold,
            "nms_iou": config.nms_iou,
            "max_objects": config.max_objects,
            "position_threshold": config.position_threshold,
        }

    @property
    def _counting_threshold(self) -> float:
        threshold = self.config.counting_threshold
        return self.config.detection_threshold if threshold is None else threshold

    def _models(self, device: torch.device) -> tuple[ZeroShotDetector, ClipColorClassifier]:
        config = self.config
        if self._detector is None:
            self._detector = ZeroShotDetector(
                config.detector_model,
                device=device,
                dtype=config.judge_dtype,
                nms_iou=config.nms_iou,
                max_objects=config.max_objects,
            )
        if self._colors is None:
            self._colors = ClipColorClassifier(config.clip_model, device=device, dtype=config.judge_dtype)
        return self._detector, self._colors

    def judge(self, images: Sequence[EvalImage], device: torch.device) -> list[Judgement]:
        detector, colors = self._models(device)
        judgements = []
        for image in images:
            metadata = self.metadata[image.record.prompt_id]
            picture = image.load()
            counting = metadata["tag"] == "counting"
            threshold = self._counting_threshold if counting else self.config.detection_threshold
            objects = detector.detect(picture, class_names(metadata), threshold)
            for clause in metadata["include"]:
                name, chosen = clause["class"], objects.get(clause["class"], [])[: clause["count"]]
                if clause.get("color") is not None and len(chosen) == clause["count"]:
                    named = colors.classify(picture, [obj.box for obj in chosen], name)
                    recolored = [DetectedObject(o.box, o.score, c) for o, c in zip(chosen, named, strict=True)]
                    objects[name] = recolored + objects[name][len(chosen) :]
            correct, reasons = geneval_verdict(metadata, objects, position_threshold=self.config.position_threshold)
            found = {
                name: [
                    {"box": [round(v, 1) for v in obj.box], "score": round(obj.score, 4), "color": obj.color}
                    for obj in group
                ]
                for name, group in objects.items()
            }
            output = json.dumps({"correct": correct, "reasons": reasons, "objects": found})
            judgements.append(Judgement(float(correct), output))
        return judgements
