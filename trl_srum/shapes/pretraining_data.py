"""The data of shapes-world pretraining, made once per bank or per chunk and handed to the hot loop as tensors.

- generation: renders of training-split prompts drawn with a documented, seeded category imbalance and caption noise
  (`WorldMix`), VAE-encoded once into a `GenerationBank` that is cached on disk;
- understanding: every category, balanced, with clean labels (the oracle plays the human labeller): renders, a part of
  them degraded like generated images, and the model's own samples, each with several labelled questions
  (`trl_srum.shapes.tasks`) packed into one row after its image (`UnderstandingRows`).

Renders are drawn one scene at a time (0.7 ms each, against 4 ms to VAE-encode one); everything after that is batched.
Held-out combinations are never drawn, captioned or asked about.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..judge.prompts import global_probability_question
from ..models.bagel import BagelModel
from ..models.bagel.image_processing import patchify
from .augment import ALTERATIONS, alter, perturb
from .oracle import Detection, Reading, detect, judge
from .render import render_scene
from .spec import RELATIONS, describe, validate_spec
from .splits import CATEGORIES, all_specs, category_of, is_heldout
from .tasks import LabelledQuestion, scene_questions, shown_spec


BANK_FILE = "generation_bank.pt"


# ------------------------------------------------------------------------------------------------------ the world
@dataclass
class WorldMix:
    """How the generation data under-represents and mis-states composition, as web captions do.

    Scenes are drawn by category with `category_weights`; a caption then states a wrong relation with probability
    `wrong_relation`, swaps the two colours of a two-colour scene with `swapped_colours`, and is off by one on a count
    of 2-4 with `wrong_count`. A noisy caption that would name a held-out combination keeps the true one. The
    understanding data is never noisy.
    """

    category_weights: dict[str, float] = field(
        default_factory=lambda: {
            "single_object": 0.3,
            "counting": 0.2,
            "two_objects": 0.15,
            "colour_binding": 0.15,
            "position": 0.1,
            "complex": 0.1,
        }
    )
    wrong_relation: float = 0.25
    swapped_colours: float = 0.15
    wrong_count: float = 0.15

    def __post_init__(self) -> None:
        unknown = set(self.category_weights) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)} in category_weights; expected {CATEGORIES}")
        for name in ("wrong_relation", "swapped_colours", "wrong_count"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")


@functools.cache
def _train_specs(category: str) -> tuple[dict[str, Any], ...]:
    return tuple(all_specs(category, split="train"))


def random_train_spec(rng: random.Random, weights: dict[str, float] | None = None) -> dict[str, Any]:
    """A training-split spec of a category drawn uniformly or by `weights`, then uniformly within the category."""
    categories = list(weights) if weights else list(CATEGORIES)
    category = rng.choices(categories, weights=list(weights.values()) if weights else None)[0]
    return copy.deepcopy(rng.choice(_train_specs(category)))


def noisy_caption(spec: dict[str, Any], mix: WorldMix, rng: random.Random) -> dict[str, Any]:
    """The spec a caption states for a scene drawn from `spec` (itself, or a seeded mis-statement; see `WorldMix`)."""
    spec = validate_spec(spec)
    objects, relation = [dict(obj) for obj in spec["objects"]], spec["relation"]
    category = category_of(spec)
    if relation is not None and rng.random() < mix.wrong_relation:
        relation = {**relation, "type": rng.choice([r for r in RELATIONS if r != relation["type"]])}
    if category in ("colour_binding", "complex") and rng.random() < mix.swapped_colours:
        objects[0]["color"], objects[1]["color"] = objects[1]["color"], objects[0]["color"]
    if category == "counting" and rng.random() < mix.wrong_count:
        objects[0]["count"] = rng.choice([n for n in (2, 3, 4) if n != objects[0]["count"]])
    stated = validate_spec({"objects": objects, "relation": relation})
    return spec if is_heldout(stated) else stated


def reading_of_render(objects: Sequence[dict[str, Any]]) -> Reading:
    """What the oracle reads in a clean render, from the renderer's own instance list (no pixels to analyse)."""
    return Reading(
        background_ok=True,
        detections=tuple(Detection(o["color"], o["shape"], tuple(o["box"]), 0) for o in objects),
    )


def pixels_of(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images -> `(B, 3, H, W)` float in [-1, 1], as `pil_to_tensor` but in one array operation."""
    array = np.stack([np.asarray(image.convert("RGB")) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ------------------------------------------------------------------------------------------------- generation data
@dataclass
class GenerationBank:
    """Renders of training prompts, VAE-encoded once: a generation step then costs only the transformer.

    `captions[i]` is the wrapped caption `[<im_start>] ids [<im_end>]` right-padded to the longest, `lengths[i]` its
    length; `latents[i]` the normalised latent tokens `(rows * cols, latent_dim)` of the scene drawn from `specs[i]`.
    """

    specs: list[dict[str, Any]]
    stated: list[dict[str, Any]]
    captions: torch.Tensor  # (N, T) long
    lengths: torch.Tensor  # (N,) long
    latents: torch.Tensor  # (N, L, D) float

    def __len__(self) -> int:
        return len(self.specs)


def wrapped_ids(model: BagelModel, texts: Sequence[str]) -> list[list[int]]:
    return [model.wrap_text(ids) for ids in model.tokenize(list(texts))]


def pad_rows(rows: Sequence[Sequence[int]], width: int | None = None, value: int = 0) -> torch.Tensor:
    width = width or max(len(row) for row in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


@torch.no_grad()
def encode_latents(model: BagelModel, pixels: torch.Tensor) -> torch.Tensor:
    """`(B, 3, H, W)` pixels in [-1, 1] -> normalised latent tokens `(B, rows * cols, latent_dim)` (posterior mean)."""
    vae, p = model.vae, model.config.latent_patch_size
    latent = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean.float()
    return patchify(vae.config.scaling_factor * (latent - vae.config.shift_factor), p)


def build_generation_bank(
    model: BagelModel, size: int, mix: WorldMix, seed: int, image_size: int = 64, batch: int = 256
) -> GenerationBank:
    rng = random.Random(f"generation-bank/{seed}")
    # Captions draw from a stream of their own, so that the scenes do not depend on the caption noise.
    caption_rng = random.Random(f"generation-captions/{seed}")
    specs, stated, latents = [], [], []
    for start in tqdm(range(0, size, batch), desc="rendering and encoding the generation bank", unit="batch"):
        chunk = [random_train_spec(rng, mix.category_weights) for _ in range(min(batch, size - start))]
        images = [render_scene(spec, image_size, rng.randrange(2**31))[0] for spec in chunk]
        stated += [noisy_caption(spec, mix, caption_rng) for spec in chunk]
        specs += chunk
        latents.append(encode_latents(model, pixels_of(images)))
    rows = wrapped_ids(model, [describe(spec) for spec in stated])
    return GenerationBank(
        specs=specs,
        stated=stated,
        captions=pad_rows(rows),
        lengths=torch.tensor([len(row) for row in rows]),
        latents=torch.cat(latents),
    )


def load_or_build_bank(
    model: BagelModel, path: Path, size: int, mix: WorldMix, seed: int, image_size: int = 64
) -> GenerationBank:
    """The generation bank of these settings and this model's VAE: read from `path` when it holds that bank, else
    built and written there."""
    settings = {
        "size": size,
        "mix": asdict(mix),
        "seed": seed,
        "image_size": image_size,
        "vae": [model.vae.config.shift_factor, model.vae.config.scaling_factor],
    }
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved["settings"] != settings:
            raise ValueError(f"{path} holds a bank of other settings ({saved['settings']}, wanted {settings})")
        return GenerationBank(**saved["bank"])
    bank = build_generation_bank(model, size, mix, seed, image_size)
    temporary = path.with_suffix(".tmp")
    torch.save({"settings": settings, "bank": asdict(bank)}, temporary)
    temporary.replace(path)
    return bank


# ---------------------------------------------------------------------------------------------- understanding data
@dataclass
class UnderstandingRows:
    """Images with their questions packed after them (see the module docstring), as tensors.

    `tokens[i]` holds the question tokens of row i: segment `segments[i, j]` (0: padding, k: question k), RoPE
    position `positions[i, j]` (1 + offset inside its question: every question continues the image alone), and
    `targets[i, j]` the next token where it is an answer token to learn, -100 elsewhere.
    """

    pixels: torch.Tensor  # (N, 3, H, W) float in [-1, 1]
    tokens: torch.Tensor  # (N, R) long
    segments: torch.Tensor  # (N, R) long
    positions: torch.Tensor  # (N, R) long
    targets: torch.Tensor  # (N, R) long

    def __len__(self) -> int:
        return len(self.tokens)

    def select(self, index: torch.Tensor) -> UnderstandingRows:
        return UnderstandingRows(*(getattr(self, name)[index] for name in self.__dataclass_fields__))


@dataclass
class Scene:
    image: Image.Image
    reading: Reading
    spec: dict[str, Any]  # the training-split spec whose questions are asked (what the image shows, or its prompt)
    prompt_spec: dict[str, Any] | None = None  # for the model's own samples: the prompt it was drawn from


def train_alteration(spec: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """A nearby wrong spec (one error) from the training split, or None when no alteration stays in it."""
    kinds = list(ALTERATIONS)
    rng.shuffle(kinds)
    for kind in kinds:
        wrong = alter(spec, kind, rng.randrange(2**31))
        if wrong is not None and not is_heldout(wrong):
            return wrong
    return None


def scene_question_list(scene: Scene, rng: random.Random, image_size: int) -> list[LabelledQuestion]:
    """The questions asked about one scene, first the layout-match questions (the `prob` judge's) with balanced
    answers, then the other kinds in random order.

    Layout match is asked about the scene's spec (yes for renders) and a training-split alteration of it (no); for one
    of the model's own samples also about the prompt it was drawn from, labelled by the oracle, which is exactly the
    question the self-judge is asked in stage 1.
    """
    np_rng = np.random.default_rng(rng.randrange(2**31))
    asked = scene_questions(scene.reading, scene.spec, image_size, np_rng)
    first = [asked[0]]
    wrong = train_alteration(scene.spec, rng)
    if wrong is not None:
        first.append(scene_questions(scene.reading, wrong, image_size, np_rng)[0])
    if scene.prompt_spec is not None:
        verdict = judge(scene.reading, scene.prompt_spec)["correct"]
        question = global_probability_question(describe(scene.prompt_spec), (image_size, image_size), style="concise")
        first.append(LabelledQuestion("layout_match", question, "yes" if verdict else "no"))
    rest = asked[1:]
    rng.shuffle(rest)
    return first + rest


def pack_questions(
    model: BagelModel, scenes_questions: Sequence[Sequence[LabelledQuestion]], row_budget: int
) -> tuple[torch.Tensor, ...]:
    """Pack each scene's questions, in order, into one row of at most `row_budget` tokens (tokens, segments,
    positions, targets). A question that does not fit is skipped; the next, shorter one may still fit."""
    texts = sorted({text for questions in scenes_questions for q in questions for text in (q.question, q.answer)})
    ids = dict(zip(texts, model.tokenize(texts), strict=True))
    start, end = model.config.im_start_token_id, model.config.im_end_token_id
    shape = (len(scenes_questions), row_budget)
    tokens = torch.zeros(shape, dtype=torch.long)
    segments = torch.zeros(shape, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    targets = torch.full(shape, -100, dtype=torch.long)
    for row, questions in enumerate(scenes_questions):
        used, segment = 0, 0
        for labelled in questions:
            question = [start, *ids[labelled.question], end, start]
            answer = [*ids[labelled.answer], end]
            sequence = question + answer
            if used + len(sequence) > row_budget:
                continue
            segment += 1
            span = slice(used, used + len(sequence))
            tokens[row, span] = torch.tensor(sequence)
            segments[row, span] = segment
            positions[row, span] = torch.arange(1, len(sequence) + 1)
            # The logit at a token predicts the next one: from the last <im_start> to the answer's last token.
            first = used + len(question) - 1
            targets[row, first : first + len(answer)] = torch.tensor(answer)
            used += len(sequence)
    return tokens, segments, positions, targets


def render_scenes(specs: Sequence[dict[str, Any]], rng: random.Random, image_size: int, degrade: float) -> list[Scene]:
    """Renders of `specs`; a fraction `degrade` is degraded like a generated image and then read by the oracle."""
    scenes = []
    for spec in specs:
        image, objects = render_scene(spec, image_size, rng.randrange(2**31))
        if rng.random() < degrade:
            image = perturb(image, seed=rng.randrange(2**31), strength=rng.uniform(0.3, 1.5))
            scenes.append(Scene(image, detect(image), spec))
        else:
            scenes.append(Scene(image, reading_of_render(objects), spec))
    return scenes


def own_scenes(
    model: BagelModel, count: int, rng: random.Random, image_size: int, sampling: dict[str, Any], batch: int = 64
) -> list[Scene]:
    """The model's own samples for training prompts, each asked about what it shows (`shown_spec`) and about its
    prompt. Samples whose shown scene no spec can state, or that would name a held-out combination, are dropped."""
    prompts = [random_train_spec(rng) for _ in range(count)]
    scenes = []
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, count, batch), desc="drawing own samples", unit="batch", leave=False):
        specs = prompts[start : start + batch]
        with torch.no_grad():
            drawn = model.generate_images(
                [describe(spec) for spec in specs],
                generators=[torch.Generator().manual_seed(rng.randrange(2**31)) for _ in specs],
                image_size=(image_size, image_size),
                **sampling,
            )
        for spec, generated in zip(specs, drawn, strict=True):
            reading = detect(generated.image)
            shown = shown_spec(reading, np.random.default_rng(rng.randrange(2**31)))
            if shown is not None and not is_heldout(shown):
                scenes.append(Scene(generated.image, reading, shown, prompt_spec=spec))
    model.train(was_training)
    return scenes


def understanding_rows(
    model: BagelModel, scenes: Sequence[Scene], rng: random.Random, image_size: int, row_budget: int
) -> UnderstandingRows:
    questions = [scene_question_list(scene, rng, image_size) for scene in scenes]
    tokens, segments, positions, targets = pack_questions(model, questions, row_budget)
    return UnderstandingRows(pixels_of([s.image for s in scenes]), tokens, segments, positions, targets)
