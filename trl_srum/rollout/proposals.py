"""Region proposers: where in a generated image the local judge should look.

Four ways, all returning boxes in the pixels of the image they were given:

- `SegmentAnythingProposer`: segment-anything's automatic mask generator (the released recipe uses SAM ViT-H).
- `TransformersSamProposer`: the same idea through transformers' `SamModel` and its mask-generation pipeline.
- `GroundingProposer`: the unified model's own grounding, asked for each object phrase of the prompt.
- `ForegroundComponentsProposer`: connected components of non-background pixels, a class-agnostic proposer for
  flat-coloured scenes such as the shapes world.

The mask-based proposers share `ProposalFilter`: unlike the released code, which keeps the 10 *largest* masks (often
background), it drops boxes that are too small or cover most of the image, removes duplicates with NMS and keeps the
most confident ones.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torchvision.ops import masks_to_boxes, nms

from ..protocol import Box, UnifiedModel


@dataclass
class RegionProposal:
    bbox: Box = field(metadata={"help": "(x1, y1, x2, y2) in pixels, end-exclusive."})
    label: str = field(default="", metadata={"help": "What the proposer thinks the region is ('' if unknown)."})
    confidence: float = field(default=1.0, metadata={"help": "The proposer's own confidence."})
    source: str = field(default="", metadata={"help": "Which proposer produced it."})


class RegionProposer(Protocol):
    def __call__(self, image: Image.Image, prompt: str) -> list[RegionProposal]: ...


@dataclass
class ProposalFilter:
    """Size filter, non-maximum suppression and a cap, applied to candidate boxes with confidences."""

    min_area_fraction: float = field(default=0.002, metadata={"help": "Drop boxes smaller than this image fraction."})
    max_area_fraction: float = field(default=0.8, metadata={"help": "Drop boxes larger than this (background)."})
    nms_iou: float = field(default=0.7, metadata={"help": "IoU above which the less confident box is dropped."})
    max_regions: int = field(default=10, metadata={"help": "Keep at most this many boxes, most confident first."})

    def __call__(self, boxes: torch.Tensor, confidences: torch.Tensor, image_size: tuple[int, int]) -> list[int]:
        """Indices of the kept boxes, most confident first. `boxes` is (K, 4) XYXY in pixels."""
        if boxes.numel() == 0:
            return []
        width, height = image_size
        boxes = boxes.float()
        areas = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
        fraction = areas / float(width * height)
        candidates = torch.nonzero((fraction >= self.min_area_fraction) & (fraction <= self.max_area_fraction))[:, 0]
        if candidates.numel() == 0:
            return []
        kept = nms(boxes[candidates], confidences[candidates].float(), self.nms_iou)
        return candidates[kept][: self.max_regions].tolist()


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """End-exclusive XYXY boxes of (K, H, W) boolean masks (torchvision's boxes include their last pixel)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4))
    return masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])


def _proposals_from_masks(
    masks: torch.Tensor, confidences: torch.Tensor, image_size: tuple[int, int], keep: ProposalFilter, source: str
) -> list[RegionProposal]:
    nonempty = masks.flatten(1).any(dim=1)
    masks, confidences = masks[nonempty], confidences[nonempty]
    boxes = boxes_from_masks(masks)
    return [
        RegionProposal(tuple(boxes[i].tolist()), "", float(confidences[i]), source)
        for i in keep(boxes, confidences, image_size)
    ]


class SegmentAnythingProposer:
    """Automatic masks from a `segment_anything.Sam` model, filtered and turned into boxes."""

    def __init__(self, sam: Any, *, keep: ProposalFilter | None = None, **generator_kwargs: Any):
        from segment_anything import SamAutomaticMaskGenerator

        self.generator = SamAutomaticMaskGenerator(sam, **generator_kwargs)
        self.keep = keep or ProposalFilter()

    @classmethod
    def from_checkpoint(cls, checkpoint: str, model_type: str = "vit_h", device: str = "cpu", **kwargs: Any):
        """Build from an official SAM checkpoint file (e.g. `sam_vit_h_4b8939.pth`)."""
        from segment_anything import sam_model_registry

        if model_type not in sam_model_registry:
            raise ValueError(f"unknown SAM model type {model_type!r}; expected one of {sorted(sam_model_registry)}")
        return cls(sam_model_registry[model_type](checkpoint=checkpoint).to(device), **kwargs)

    def __call__(self, image: Image.Image, prompt: str) -> list[RegionProposal]:
        records = self.generator.generate(np.asarray(image.convert("RGB")))
        if not records:
            return []
        masks = torch.from_numpy(np.stack([r["segmentation"] for r in records]))
        confidences = torch.tensor([r["predicted_iou"] * r["stability_score"] for r in records])
        return _proposals_from_masks(masks, confidences, image.size, self.keep, "sam")


class TransformersSamProposer:
    """Automatic masks from transformers' `SamModel` through its mask-generation pipeline."""

    def __init__(self, model: Any, image_processor: Any, *, keep: ProposalFilter | None = None, **call_kwargs: Any):
        from transformers import pipeline

        self.pipeline = pipeline("mask-generation", model=model, image_processor=image_processor, device=model.device)
        self.keep = keep or ProposalFilter()
        self.call_kwargs = call_kwargs

    def __call__(self, image: Image.Image, prompt: str) -> list[RegionProposal]:
        output = self.pipeline(image.convert("RGB"), **self.call_kwargs)
        masks = [torch.as_tensor(np.asarray(mask), dtype=torch.bool) for mask in output["masks"]]
        if not masks:
            return []
        confidences = torch.as_tensor(output["scores"], dtype=torch.float32).flatten()
        return _proposals_from_masks(torch.stack(masks), confidences, image.size, self.keep, "sam_hf")


# Connectives that separate object phrases in compositional prompts ("a red cube to the left of two balls").
_PHRASE_SPLIT = re.compile(
    r"\s*(?:,|;|\band\b|\bwith\b|\bnext to\b|\bbeside\b|\bnear\b|\b(?:to the |on the )?(?:left|right) (?:of|side of)\b"
    r"|\babove\b|\bbelow\b|\bunder\b|\bon top of\b|\bin front of\b|\bbehind\b|\bon\b|\bin\b)\s*",
    flags=re.IGNORECASE,
)


def object_phrases(prompt: str) -> list[str]:
    """Split a compositional prompt into its object phrases, in order, without duplicates (a heuristic)."""
    phrases = []
    for part in _PHRASE_SPLIT.split(prompt.strip().rstrip(".")):
        phrase = part.strip()
        if phrase and phrase.lower() not in {p.lower() for p in phrases}:
            phrases.append(phrase)
    return phrases


class GroundingProposer:
    """The unified model's own grounding: boxes for every object phrase of the prompt."""

    def __init__(self, model: UnifiedModel, keep: ProposalFilter | None = None):
        if not model.supports_grounding:
            raise ValueError(f"{type(model).__name__} does not support grounding; choose another proposer")
        self.model = model
        # Grounded boxes are already per object: only duplicates and the cap matter.
        self.keep = keep or ProposalFilter(min_area_fraction=0.0, max_area_fraction=1.0)

    def __call__(self, image: Image.Image, prompt: str) -> list[RegionProposal]:
        phrases = object_phrases(prompt)
        if not phrases:
            return []
        grounded = self.model.ground(image, phrases)
        proposals = [
            RegionProposal(tuple(float(c) for c in box), phrase, 1.0, "grounding")
            for phrase, boxes in zip(phrases, grounded, strict=True)
            for box in boxes
        ]
        if not proposals:
            return []
        boxes = torch.tensor([p.bbox for p in proposals])
        return [proposals[i] for i in self.keep(boxes, torch.ones(len(proposals)), image.size)]


class ForegroundComponentsProposer:
    """Connected components of pixels that differ from the background colour (estimated from the border)."""

    def __init__(self, threshold: float = 60.0, keep: ProposalFilter | None = None):
        self.threshold = threshold
        self.keep = keep or ProposalFilter(min_area_fraction=0.004, max_area_fraction=0.9)

    def __call__(self, image: Image.Image, prompt: str) -> list[RegionProposal]:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        background = np.median(border, axis=0)
        foreground = np.linalg.norm(pixels - background, axis=-1) > self.threshold
        labels, count = ndimage.label(foreground)
        if count == 0:
            return []
        masks = torch.from_numpy(labels[None] == np.arange(1, count + 1)[:, None, None])
        # Bigger components are likelier objects than speckle.
        confidences = masks.flatten(1).sum(dim=1).float()
        return _proposals_from_masks(masks, confidences, image.size, self.keep, "components")


def propose_regions(proposer: RegionProposer | None, image: Image.Image, prompt: str) -> list[RegionProposal]:
    """Run a proposer (None proposes nothing) and make sure every box lies inside the image."""
    if proposer is None:
        return []
    width, height = image.size
    inside = []
    for proposal in proposer(image, prompt):
        x1, y1, x2, y2 = proposal.bbox
        box = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
        if box[0] < box[2] and box[1] < box[3]:
            inside.append(RegionProposal(box, proposal.label, proposal.confidence, proposal.source))
    return inside
