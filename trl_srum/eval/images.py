"""The images of an evaluation: their folder layout, drawing them resumably across processes, and finding them again.

Layout (the one `trl-srum eval` writes, and what a folder made by any other generator must follow)::

    <images_dir>/
        <prompt_id>/0000.png, 0001.png, ...    images 0, 1, ... of a prompt (any of .png .jpg .jpeg .webp)
        <prompt_id>/samples/0000.png, ...      the same, in GenEval's own layout
        <prompt_id>.png                        a single image (index 0), as the SRUM evaluation scripts save them
        generation_manifest.json               written when `trl-srum eval` draws: model, seeds, sampler settings

Drawing cuts the (prompt, index) pairs into batches in prompt order and deals them round-robin to the processes, as
stage 1 does (`trl_srum.rollout.runner.deal_batches`); each image is written atomically, so a batch is done when all
of its files exist, and a killed run redraws at most the batch each process was drawing. Image `k` of prompt `p` is
drawn from the seed `candidate_seed(eval_seed, p, k)`: the same noise for every model evaluated with the same base
seed, whatever the batch size or process count.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..protocol import UnifiedModel
from ..rollout.prompts import PromptRecord
from ..rollout.runner import candidate_seed, deal_batches, weights_fingerprint
from ..rollout.writer import check_manifest, write_atomically
from .config import EvalConfig
from .protocols import EvalImage


logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
GENERATION_MANIFEST = "generation_manifest.json"


def image_path(images_dir: Path, prompt_id: str, index: int) -> Path:
    """Where `trl-srum eval` writes image `index` of a prompt."""
    return images_dir / prompt_id / f"{index:04d}.png"


def prompts_digest(prompts: Sequence[PromptRecord]) -> str:
    digest = hashlib.sha256()
    for record in prompts:
        digest.update(json.dumps([record.prompt_id, record.prompt, record.category]).encode())
    return digest.hexdigest()


def generation_manifest(model: UnifiedModel, prompts: Sequence[PromptRecord], config: EvalConfig) -> dict[str, Any]:
    """Everything the drawn images depend on; a resumed run must match it (the model by a digest of its weights)."""
    return {
        "model": type(model).__name__,
        "model_weights": weights_fingerprint(model),
        "num_prompts": len(prompts),
        "prompts_sha256": prompts_digest(prompts),
        "num_images": config.num_images,
        "eval_seed": config.eval_seed,
        "image_size": list(config.image_size),
        "think": config.think,
        "generation_kwargs": config.generation_kwargs or {},
        "generation_batch_size": config.generation_batch_size,
    }


def draw_images(
    model: UnifiedModel,
    prompts: Sequence[PromptRecord],
    config: EvalConfig,
    images_dir: Path,
    state: PartialState,
) -> None:
    """Draw `config.num_images` images of every prompt into `images_dir`, skipping the batches already there.

    Raises:
        ValueError: when `images_dir` holds images drawn with other settings, or the model cannot draw the size.
        RuntimeError: naming the prompts of a batch the model failed to draw.
    """
    # A size the model cannot draw is a configuration error: fail before any image.
    model.latent_grid(config.image_size)
    existing = images_dir if any(images_dir.glob("*/[0-9]*.png")) else None
    check_manifest(
        images_dir / GENERATION_MANIFEST,
        generation_manifest(model, prompts, config),
        results=existing,
        write=state.is_main_process,
    )
    state.wait_for_everyone()
    items = [(record, k) for record in prompts for k in range(config.num_images)]
    size = config.generation_batch_size
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    done = {
        b for b, batch in enumerate(batches) if all(image_path(images_dir, r.prompt_id, k).is_file() for r, k in batch)
    }
    mine = deal_batches(len(batches), done, state)
    logger.info(
        f"eval: process {state.process_index} of {state.num_processes} draws {len(mine)} of {len(batches)} "
        f"batches ({len(done)} already done) into {images_dir}"
    )
    with tqdm(
        total=sum(len(batches[b]) for b in mine),
        unit="img",
        desc=f"drawing evaluation images [{state.process_index}/{state.num_processes}]",
        disable=not mine,
    ) as progress:
        for batch_index in mine:
            _draw_batch(model, batches[batch_index], config, images_dir)
            progress.update(len(batches[batch_index]))
    state.wait_for_everyone()


def _draw_batch(
    model: UnifiedModel, batch: Sequence[tuple[PromptRecord, int]], config: EvalConfig, images_dir: Path
) -> None:
    seeds = [candidate_seed(config.eval_seed, record.prompt_id, k) for record, k in batch]
    try:
        generated = model.generate_images(
            [record.prompt for record, _ in batch],
            generators=[torch.Generator().manual_seed(seed) for seed in seeds],
            image_size=config.image_size,
            think=config.think,
            **(config.generation_kwargs or {}),
        )
    except Exception as error:
        names = ", ".join(f"{record.prompt_id!r} image {k}" for record, k in batch)
        raise RuntimeError(f"drawing {names} failed: {error}") from error
    for (record, k), sample in zip(batch, generated, strict=True):
        path = image_path(images_dir, record.prompt_id, k)
        # The plan goes first: a batch counts as done once its images exist.
        if sample.reasoning is not None:
            write_atomically(path.with_suffix(".think.txt"), functools.partial(Path.write_text, data=sample.reasoning))
        write_atomically(path, functools.partial(sample.image.save, format="PNG"))


def find_images(images_dir: Path, prompts: Sequence[PromptRecord]) -> list[EvalImage]:
    """Every image of every prompt in a folder laid out as the module docstring says, in prompt and index order.

    Seeds are known when `trl-srum eval` drew the folder (its `generation_manifest.json`), else None.

    Raises:
        FileNotFoundError: when the folder does not exist.
        ValueError: naming the prompts without any image, or an index given twice.
    """
    if not images_dir.is_dir():
        raise FileNotFoundError(f"no image folder at {images_dir}")
    manifest_path = images_dir / GENERATION_MANIFEST
    base_seed = json.loads(manifest_path.read_text())["eval_seed"] if manifest_path.is_file() else None
    images, missing = [], []
    for record in prompts:
        found = _prompt_images(images_dir, record.prompt_id)
        if not found:
            missing.append(record.prompt_id)
        for index, path in found:
            seed = candidate_seed(base_seed, record.prompt_id, index) if base_seed is not None else None
            images.append(EvalImage(record, index, path, seed))
    if missing:
        raise ValueError(
            f"{images_dir} has no image for {len(missing)} of {len(prompts)} prompts (e.g. {missing[:5]}); "
            f"expected <prompt_id>/0000.png, <prompt_id>/samples/0000.png or <prompt_id>.png (docs/evaluation.md)"
        )
    return images


def _prompt_images(images_dir: Path, prompt_id: str) -> list[tuple[int, Path]]:
    for folder in (images_dir / prompt_id / "samples", images_dir / prompt_id):
        if not folder.is_dir():
            continue
        found: dict[int, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.stem.isdigit():
                continue
            index = int(path.stem)
            if index in found:
                raise ValueError(f"{folder} holds image {index} twice: {found[index].name} and {path.name}")
            found[index] = path
        if found:
            return sorted(found.items())
    for suffix in IMAGE_SUFFIXES:
        path = images_dir / f"{prompt_id}{suffix}"
        if path.is_file():
            return [(0, path)]
    return []
