"""The exact oracle of the shapes world: read an image back into objects, then judge it against a spec.

Reading (`detect`; numpy only, deterministic, a few ms for 64x64):

1. A 3x3 per-channel median filter removes Gaussian noise and lone junk pixels while keeping edges.
2. The background is the per-channel median of the image. It must be nearer the world's `BACKGROUND` than any
   palette colour, else the image is wrong (``background_ok``).
3. Each pixel is explained as a mix of the background and one palette colour, ``p = bg + alpha * (c - bg)``; the colour
   with the smallest residual wins and ``alpha >= 0.5`` makes the pixel foreground. Antialiased, blurred or
   JPEG-softened edges are such mixes, so they read as the object's own colour or as background, never as a third
   colour. A pixel far from the background that no palette colour explains (grey, black, brown junk) is "unknown".
4. 8-connected components per colour. A component is an object if its solid core (pixels whose four neighbours
   share its colour) covers at least `MIN_CORE_FRACTION` of the image (10 px at 64x64); smaller specks and thin
   fragments such as colour rims and lines are noise. The smallest drawn shape at 64x64 has a core of about 36 px,
   a 4x4 px speck one of 4 px.
5. Shape from the moments of the component's soft coverage (alpha of its colour over the component grown by one
   pixel, read from the unfiltered image): an upright triangle's mass sits low (skewed y); discs and squares are told
   apart by a blur-invariant fourth-order cumulant (see `_shape`); elongated or lopsided blobs are "unknown". A
   rounded square reads as a circle once its corner radius passes about 0.29 of its side.

Judging (`judge`, `evaluate`): the image is correct iff the background is right, every spec object is found exactly
``count`` times (detections of its colour and shape), nothing else is found (an extra object of any colour or shape,
including unknown ones, makes the image wrong, like GenEval's exact counting), and the relation, if any, holds by
GenEval's rule (`trl_srum.object_rules`) between the union boxes of the two objects' detected instances.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..object_rules import group_relations
from .spec import BACKGROUND, COLORS, PALETTE, validate_spec
from .splits import CATEGORIES


MIN_CORE_FRACTION = 0.0025
UNKNOWN = "unknown"
# Largest distance (0-255 RGB units) between a pixel and the nearest background-to-palette line for the pixel to
# still take that palette colour; generous enough for colour shifts of +-25 per channel, tight enough for greys.
_MAX_RESIDUAL = 70.0
_PALETTE = np.asarray([PALETTE[c] for c in COLORS], dtype=np.float64)
_LABELS = (*COLORS, UNKNOWN)
# k22 / mass^2 of a uniform disc (-r^4/48 over (pi r^2)^2); see `_shape`.
_DISC_K22 = -1 / (48 * np.pi**2)


@dataclass(frozen=True)
class Detection:
    """One object instance read from an image: colour and shape ("unknown" if neither fits), the end-exclusive box and
    pixel area of its foreground (alpha >= 0.5) pixels."""

    color: str
    shape: str
    box: tuple[int, int, int, int]
    area: int


@dataclass(frozen=True)
class Reading:
    """Everything `detect` reads from an image."""

    background_ok: bool
    detections: tuple[Detection, ...]


def evaluate(image: Image.Image | np.ndarray, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Judge an image against a spec; see `judge` for the result."""
    return judge(detect(image), spec)


def detect(image: Image.Image | np.ndarray) -> Reading:
    """Read every object instance (colour, shape, box) in an image."""
    raw = _as_array(image)
    pixels = _median3(raw)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    distances = np.linalg.norm(np.vstack([_PALETTE, BACKGROUND]) - background, axis=1)
    background_ok = bool(np.argmin(distances) == len(COLORS))
    classes = _classify(pixels, background)
    # Shapes are read from the unfiltered image: the median filter clips the corners of small squares, while the
    # moments `_shape` uses average pixel noise out by themselves.
    alpha = _coverage(raw, background)
    labels, components = _components(classes)
    core = np.bincount(labels[_solid(classes)], minlength=labels.max() + 1)
    detections = []
    for label, cls, box, area in components:
        if core[label] < MIN_CORE_FRACTION * classes.size:
            continue
        detections.append(Detection(_LABELS[cls - 1], _component_shape(labels, label, cls, box, alpha), box, area))
    return Reading(background_ok, tuple(detections))


def judge(reading: Reading, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Judge a reading against a spec.

    Returns ``{"correct": bool, "background_ok": bool, "objects": [...], "extra": [...], "relation": ...,
    "detections": [...]}`` where each entry of ``objects`` (in spec order) holds ``expected`` and ``found`` counts,
    ``count_ok``, and ``color_seen`` / ``shape_seen`` (whether any detection has the object's colour / shape, to tell a
    wrong colour from a wrong shape); ``extra`` lists detections that match no spec object; ``relation`` is None or
    ``{"type", "holds", "found"}`` with ``found`` every relation between the two objects by GenEval's rule.
    """
    spec = validate_spec(spec)
    matched: dict[tuple[str, str], list[Detection]] = defaultdict(list)
    for det in reading.detections:
        matched[(det.color, det.shape)].append(det)
    objects = []
    for obj in spec["objects"]:
        found = len(matched[(obj["color"], obj["shape"])])
        objects.append(
            {
                "shape": obj["shape"],
                "color": obj["color"],
                "expected": obj["count"],
                "found": found,
                "count_ok": found == obj["count"],
                "color_seen": any(det.color == obj["color"] for det in reading.detections),
                "shape_seen": any(det.shape == obj["shape"] for det in reading.detections),
            }
        )
    wanted = {(obj["color"], obj["shape"]) for obj in spec["objects"]}
    extra = [asdict(det) for det in reading.detections if (det.color, det.shape) not in wanted]
    relation = None
    if spec["relation"] is not None:
        a, b = ((o["color"], o["shape"]) for o in spec["objects"])
        found_relations = group_relations(
            [det.box for det in matched[a]], [det.box for det in matched[b]], locate="union"
        )
        kind = spec["relation"]["type"]
        relation = {"type": kind, "holds": kind in found_relations, "found": sorted(found_relations)}
    correct = (
        reading.background_ok
        and all(obj["count_ok"] for obj in objects)
        and not extra
        and (relation is None or relation["holds"])
    )
    return {
        "correct": bool(correct),
        "background_ok": reading.background_ok,
        "objects": objects,
        "extra": extra,
        "relation": relation,
        "detections": [asdict(det) for det in reading.detections],
    }


def accuracy_table(results: Iterable[tuple[str, bool]]) -> dict[str, dict[str, float]]:
    """Per-category and overall accuracy of (category, correct) pairs: ``{cat: {"n", "correct", "accuracy"}}``."""
    totals: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for category, correct in results:
        for key in (category, "overall"):
            totals[key] += 1
            hits[key] += bool(correct)
    others = sorted(k for k in totals if k not in CATEGORIES and k != "overall")
    keys = [c for c in CATEGORIES if c in totals] + others
    return {
        key: {"n": totals[key], "correct": hits[key], "accuracy": hits[key] / totals[key]}
        for key in [*keys, "overall"]
        if totals[key]
    }


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"an image array must be uint8 of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr.astype(np.float64)


def _median3(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    padded = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), mode="edge")
    stack = np.stack([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return np.median(stack, axis=0)


def _directions(background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background-to-palette vectors and their squared lengths (at least 1, for a background equal to a colour)."""
    d = _PALETTE - background
    return d, np.maximum(np.einsum("kc,kc->k", d, d), 1.0)


def _coverage(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per-pixel, per-colour alpha of the best mix background + alpha * (colour - background), unclipped."""
    d, dd = _directions(background)
    return (pixels - background) @ d.T / dd


def _classify(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per-pixel class: 0 background, 1..6 the colours of `COLORS`, 7 unknown."""
    q = pixels - background
    d, dd = _directions(background)
    projection = q @ d.T
    # Slightly beyond the palette colour (alpha above 1) still counts: generated colours are often more saturated.
    alpha = np.clip(projection / dd, 0.0, 1.3)
    residual = np.einsum("hwc,hwc->hw", q, q)[..., None] - 2 * alpha * projection + alpha**2 * dd
    best = np.argmin(residual, axis=-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0]
    best_residual = np.sqrt(np.maximum(np.take_along_axis(residual, best[..., None], axis=-1)[..., 0], 0))
    explained = best_residual <= _MAX_RESIDUAL
    classes = np.where(explained & (best_alpha >= 0.5), best + 1, 0)
    far = np.linalg.norm(q, axis=-1) >= 0.5 * np.sqrt(dd.min())
    classes[far & ~explained] = len(COLORS) + 1
    return classes


def _solid(classes: np.ndarray) -> np.ndarray:
    """Non-background pixels whose four neighbours share their class (erosion by a 3x3 cross)."""
    padded = np.pad(classes, 1)
    h, w = classes.shape
    solid = classes > 0
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        solid &= padded[dy : dy + h, dx : dx + w] == classes
    return solid


def _components(classes: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, tuple[int, int, int, int], int]]]:
    """8-connected components of equal non-zero class.

    Returns a label map (0 for background) and (label, class, box, area) per component. Works on horizontal runs (a
    union-find over a few hundred runs), so it needs neither scipy nor a per-pixel Python loop.
    """
    padded = np.pad(classes, ((0, 0), (1, 1)))
    ys, xs = np.nonzero(padded[:, 1:] != padded[:, :-1])
    same_row = ys[:-1] == ys[1:]
    run_y, run_x0, run_x1 = ys[:-1][same_row], xs[:-1][same_row], xs[1:][same_row]
    run_c = classes[run_y, run_x0]
    keep = run_c != 0
    runs = list(zip(run_y[keep].tolist(), run_x0[keep].tolist(), run_x1[keep].tolist(), run_c[keep].tolist()))
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev_row: list[int] = []
    row: list[int] = []
    current_y = -1
    for i, (y, x0, x1, c) in enumerate(runs):
        if y != current_y:
            prev_row = row if y == current_y + 1 else []
            row, current_y = [], y
        for j in prev_row:
            _, px0, px1, pc = runs[j]
            # 8-connectivity: runs in adjacent rows touch if they overlap or meet at a corner.
            if pc == c and px0 <= x1 and px1 >= x0:
                parent[find(i)] = find(j)
        row.append(i)
    labels = np.zeros(classes.shape, dtype=np.int32)
    stats: dict[int, list[int]] = {}
    for i, (y, x0, x1, c) in enumerate(runs):
        root = find(i)
        labels[y, x0:x1] = root + 1
        if root not in stats:
            stats[root] = [c, x0, y, x1, y + 1, 0]
        st = stats[root]
        st[1], st[2], st[3], st[4] = min(st[1], x0), min(st[2], y), max(st[3], x1), max(st[4], y + 1)
        st[5] += x1 - x0
    return labels, [(root + 1, c, (x0, y0, x1, y1), area) for root, (c, x0, y0, x1, y1, area) in stats.items()]


def _component_shape(
    labels: np.ndarray, label: int, cls: int, box: tuple[int, int, int, int], alpha: np.ndarray
) -> str:
    """The shape of one component, read from its colour's coverage around it."""
    if cls > len(COLORS):
        return UNKNOWN
    h, w = labels.shape
    x0, y0, x1, y1 = max(box[0] - 1, 0), max(box[1] - 1, 0), min(box[2] + 1, w), min(box[3] + 1, h)
    window = labels[y0:y1, x0:x1]
    member = np.pad(window == label, 1)
    # The component grown by one pixel, so its soft antialiased rim counts, but no other component does.
    grown = np.zeros(window.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            grown |= member[dy : dy + window.shape[0], dx : dx + window.shape[1]]
    grown &= (window == 0) | (window == label)
    # Unclipped below zero, so background noise inside the window averages out instead of adding mass.
    return _shape(np.clip(alpha[y0:y1, x0:x1, cls - 1], -1.0, 1.0) * grown)


def _shape(weights: np.ndarray) -> str:
    """Classify a soft silhouette (coverage per pixel, y growing downwards) by its moments.

    - Skewness of y: an upright triangle has its mass low (-0.57); discs and squares are symmetric (0).
    - Roundness: the joint cumulant k22 = E[x^2 y^2] - E[x^2] E[y^2] - 2 E[xy]^2 over the squared mass, scaled so that
      a disc is 1 and a square 0 (x and y independent). Blurring with any isotropic Gaussian leaves k22 and the mass
      unchanged, so unlike fill ratios it does not turn blurred squares into circles. A rounded square reads as a
      circle once its corner radius passes about 0.29 of its side (roundness 0.5).
    - The variance ratio var(x) / var(y) (1 for discs and squares, 0.75 for the triangle) rejects elongated blobs,
      such as two shapes run together.
    Soft coverage rather than a thresholded mask averages out the ragged edges that noise and JPEG leave.
    """
    h, w = weights.shape
    ys, xs = np.mgrid[0:h, 0:w]
    mass = weights.sum()
    x = xs - (weights * xs).sum() / mass
    y = ys - (weights * ys).sum() / mass
    var_x, var_y = (weights * x * x).sum() / mass, (weights * y * y).sum() / mass
    skew = (weights * y**3).sum() / mass / var_y**1.5
    aspect = var_x / var_y
    if skew <= -0.25:
        return "triangle" if 0.45 <= aspect <= 1.25 else UNKNOWN
    if abs(skew) >= 0.2 or not 0.55 <= aspect <= 1.8:
        return UNKNOWN
    k22 = (weights * x * x * y * y).sum() / mass - var_x * var_y - 2 * ((weights * x * y).sum() / mass) ** 2
    roundness = k22 / mass**2 / _DISC_K22
    return "circle" if roundness >= 0.5 else "square"
