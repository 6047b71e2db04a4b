"""What the `geneval` protocol sees with: a zero-shot object detector and a CLIP colour classifier, from transformers.

Both load by Hub id or folder through the Auto classes, so any zero-shot detector of transformers works (OWLv2,
OWL-ViT, Grounding DINO, ...) and any CLIP-like dual encoder names colours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..object_rules import Box


# GenEval's colour vocabulary.
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# Zero-shot phrasings of "an object of this colour"; a colour's text embedding is their normalised mean.
COLOR_TEMPLATES: tuple[str, ...] = ("a {color} {name}", "a photo of a {color} {name}", "a {color} object")


@dataclass(frozen=True)
class DetectedObject:
    """One detected instance: its box in the image's pixels, the detector's score, and its colour once named."""

    box: Box
    score: float
    color: str | None = None


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def match_name(label: str, names: Sequence[str]) -> str | None:
    """The queried name a detector's text label stands for, or None when it names none or several.

    OWL-style detectors return the query itself; Grounding DINO returns the query's tokens it matched, which may be a
    part of one name or run over several.
    """
    words = _words(label)
    exact = [name for name in names if _words(name) == words]
    if exact:
        return exact[0]
    inside = [name for name in names if words and (words in _words(name) or _words(name) in words)]
    return inside[0] if len(inside) == 1 else None


class ZeroShotDetector:
    """Boxes of named object classes in an image, from a transformers zero-shot object detector.

    Per class, detections above the threshold are sorted by score, the `max_objects` most confident are kept (as
    GenEval does), then boxes overlapping a more confident one by more than `nms_iou` are dropped.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
        nms_iou: float = 0.5,
        max_objects: int = 16,
    ):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.name = str(model_name_or_path)
        self.device = torch.device(device)
        self.processor = AutoProcessor.from_pretrained(self.name)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(self.name, dtype=dtype).to(self.device).eval()
        self.nms_iou = nms_iou
        self.max_objects = max_objects

    @torch.no_grad()
    def detect(self, image: Image.Image, names: Sequence[str], threshold: float) -> dict[str, list[DetectedObject]]:
        """Every detected instance of each name, most confident first (one forward for all names)."""
        from torchvision.ops import nms

        # One image per forward: detectors' processors pad the text of a batch in ways that differ per model.
        inputs = self.processor(text=[list(names)], images=[image], return_tensors="pt")
        inputs = inputs.to(self.device, dtype=self.model.dtype)
        outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, target_sizes=[(image.height, image.width)], text_labels=[list(names)]
        )[0]
        found: dict[str, list[DetectedObject]] = {}
        for label, score, box in zip(result["text_labels"], result["scores"].tolist(), result["boxes"].tolist()):
            name = match_name(label, names)
            if name is not None:
                found.setdefault(name, []).append(DetectedObject(tuple(box), float(score)))
        for name, objects in found.items():
            objects = sorted(objects, key=lambda obj: -obj.score)[: self.max_objects]
            if self.nms_iou < 1.0:
                boxes = torch.tensor([obj.box for obj in objects], dtype=torch.float32)
                scores = torch.tensor([obj.score for obj in objects], dtype=torch.float32)
                objects = [objects[i] for i in nms(boxes, scores, self.nms_iou).tolist()]
            found[name] = objects
        return found


class ClipColorClassifier:
    """Names the colour of objects (one of `COLORS`) by zero-shot CLIP classification of their box crops."""

    def __init__(
        self, model_name_or_path: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto"
    ):
        from transformers import AutoModel, AutoProcessor

        self.name = str(model_name_or_path)
        self.device = torch.device(device)
        self.processor = AutoProcessor.from_pretrained(self.name)
        self.model = AutoModel.from_pretrained(self.name, dtype=dtype).to(self.device).eval()
        self._classifiers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _classifier(self, name: str) -> torch.Tensor:
        """One unit text embedding per colour for objects called `name`, shape (len(COLORS), dim)."""
        if name not in self._classifiers:
            texts = [template.format(color=color, name=name) for color in COLORS for template in COLOR_TEMPLATES]
            inputs = self.processor(text=texts, return_tensors="pt", padding=True).to(self.device)
            embeddings = self.model.get_text_features(**inputs).pooler_output.float()
            embeddings = torch.nn.functional.normalize(embeddings, dim=-1).view(len(COLORS), len(COLOR_TEMPLATES), -1)
            self._classifiers[name] = torch.nn.functional.normalize(embeddings.mean(dim=1), dim=-1)
        return self._classifiers[name]

    @torch.no_grad()
    def classify(self, image: Image.Image, boxes: Sequence[Box], name: str) -> list[str]:
        """The colour of the object in each box (boxes in the image's pixels)."""
        if not boxes:
            return []
        crops = []
        for x1, y1, x2, y2 in boxes:
            left, top = min(max(int(x1), 0), image.width - 1), min(max(int(y1), 0), image.height - 1)
            right, bottom = max(int(round(x2)), left + 1), max(int(round(y2)), top + 1)
            crops.append(image.crop((left, top, min(right, image.width), min(bottom, image.height))))
        inputs = self.processor(images=crops, return_tensors="pt").to(self.device, dtype=self.model.dtype)
        features = self.model.get_image_features(**inputs).pooler_output.float()
        features = torch.nn.functional.normalize(features, dim=-1)
        return [COLORS[i] for i in (features @ self._classifier(name).T).argmax(dim=-1).tolist()]
