"""An evaluation end to end: prompts -> images (drawn or found) -> judgements -> table and files.

Judging is resumable and spread over processes the same way drawing is: the images are cut into batches in prompt
order, dealt round-robin (`deal_batches`), and each finished batch is written atomically as one JSON-lines shard under
`<eval_dir>/judgements/`, next to a manifest of the judge's settings and the images judged. A restarted run judges only
the batches without a shard; since a judgement depends only on its image, its batch and its seed, the results equal
those of an uninterrupted run. The main process then writes the outputs (`trl_srum.eval.report`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..protocol import UnifiedModel
from ..rollout.prompts import PromptRecord
from ..rollout.runner import deal_batches, rollout_state
from ..rollout.writer import check_manifest, write_atomically
from .config import EvalConfig
from .images import GENERATION_MANIFEST, draw_images, find_images
from .protocols import EvalImage, EvalProtocol, Judgement, build_protocol
from .report import EvalResults, summarize, write_report
from .scoring import aggregate
from .sources import check_prompts


logger = logging.getLogger(__name__)

JUDGEMENTS_DIRNAME = "judgements"
JUDGEMENTS_MANIFEST = "manifest.json"


def _shard_path(folder: Path, batch_index: int) -> Path:
    return folder / f"batch-{batch_index:07d}.jsonl"


def judge_images(
    protocol: EvalProtocol, images: Sequence[EvalImage], images_dir: Path, config: EvalConfig, state: PartialState
) -> list[dict[str, Any]]:
    """Judge every image (skipping the batches already judged) and return one row per image, in order.

    Raises:
        ValueError: when the judgements on disk were made with other settings or of other images.
    """
    folder = Path(config.eval_dir) / JUDGEMENTS_DIRNAME
    manifest = {
        "protocol": protocol.name,
        "settings": protocol.settings(),
        "judge_batch_size": config.judge_batch_size,
        # The image files by name and size: other images must not mix with these judgements.
        "images": [[image.path.relative_to(images_dir).as_posix(), image.path.stat().st_size] for image in images],
    }
    existing = folder if any(folder.glob("batch-*.jsonl")) else None
    check_manifest(folder / JUDGEMENTS_MANIFEST, manifest, results=existing, write=state.is_main_process)
    state.wait_for_everyone()
    size = config.judge_batch_size
    batches = [images[i : i + size] for i in range(0, len(images), size)]
    done = {b for b in range(len(batches)) if _shard_path(folder, b).is_file()}
    mine = deal_batches(len(batches), done, state)
    logger.info(
        f"eval: process {state.process_index} of {state.num_processes} judges {len(mine)} of {len(batches)} "
        f"batches ({len(done)} already done) with {protocol.name}"
    )
    with tqdm(
        total=sum(len(batches[b]) for b in mine),
        unit="img",
        desc=f"judging ({protocol.name}) [{state.process_index}/{state.num_processes}]",
        disable=not mine,
    ) as progress:
        for batch_index in mine:
            batch = batches[batch_index]
            judgements = protocol.judge(batch, state.device)
            if len(judgements) != len(batch):
                raise RuntimeError(f"{protocol.name} returned {len(judgements)} judgements for {len(batch)} images")
            for image, judgement in zip(batch, judgements, strict=True):
                if judgement.score is not None and not math.isfinite(judgement.score):
                    raise RuntimeError(
                        f"{protocol.name} scored {image.path} {judgement.score}: a score must be finite"
                    )
            text = "".join(
                json.dumps(_row(image, judgement, images_dir)) + "\n"
                for image, judgement in zip(batch, judgements, strict=True)
            )
            write_atomically(_shard_path(folder, batch_index), functools.partial(Path.write_text, data=text))
            progress.update(len(batch))
    state.wait_for_everyone()
    return [json.loads(line) for b in range(len(batches)) for line in _shard_path(folder, b).read_text().splitlines()]


def _row(image: EvalImage, judgement: Judgement, images_dir: Path) -> dict[str, Any]:
    return {
        "prompt_id": image.record.prompt_id,
        "category": image.record.category or "all",
        "prompt": image.record.prompt,
        "index": image.index,
        "seed": image.seed,
        "image": image.path.relative_to(images_dir).as_posix(),
        "score": judgement.score,
        "attempts": judgement.attempts,
        "output": judgement.output,
    }


def evaluate(
    config: EvalConfig,
    model: UnifiedModel | None = None,
    *,
    protocol: EvalProtocol | None = None,
    state: PartialState | None = None,
) -> EvalResults:
    """Draw (unless `config.images_dir` names images), judge and report; see `evaluate_model` / `evaluate_folder`."""
    state = state or rollout_state()
    protocol = protocol or build_protocol(config)
    if protocol.name != config.protocol:
        raise ValueError(f"config.protocol is {config.protocol!r} but the protocol given is {protocol.name!r}")
    prompts = protocol.load_prompts()[: config.max_prompts]
    check_prompts(prompts, config.prompts or protocol.name)
    if config.images_dir is not None:
        images_dir = Path(config.images_dir)
    else:
        if model is None:
            raise ValueError("an evaluation needs a model to draw images, or images_dir with images to judge")
        images_dir = Path(config.eval_dir) / "images"
        _draw(model, prompts, config, images_dir, state)
    images = find_images(images_dir, prompts)
    rows = judge_images(protocol, images, images_dir, config, state)
    table = aggregate(rows, protocol, config.aggregation)
    manifest = images_dir / GENERATION_MANIFEST
    summary = summarize(
        protocol.name,
        protocol.scale,
        config.aggregation,
        table,
        rows,
        judge=protocol.settings(),
        images={
            "images_dir": str(images_dir),
            "generation": json.loads(manifest.read_text()) if manifest.is_file() else None,
        },
        settings=dataclasses.asdict(config),
    )
    results = EvalResults(protocol.name, table, rows, summary, Path(config.eval_dir), images_dir)
    if state.is_main_process:
        write_report(results, config.grid_prompts, config.grid_thumbnail)
        overall = "n/a" if table.overall is None else f"{table.overall:.4g}"
        logger.info(f"eval: {protocol.name} overall {overall} ({table.rule}); results in {config.eval_dir}")
    state.wait_for_everyone()
    return results


def _draw(
    model: UnifiedModel, prompts: Sequence[PromptRecord], config: EvalConfig, images_dir: Path, state: PartialState
) -> None:
    # Inference only, in eval mode: a model fresh from a training round would otherwise draw with dropout on.
    training = getattr(model, "training", False)
    if training:
        model.eval()
    try:
        with torch.no_grad():
            draw_images(model, prompts, config, images_dir, state)
    finally:
        if training:
            model.train()


def evaluate_model(
    model: UnifiedModel,
    config: EvalConfig,
    *,
    protocol: EvalProtocol | None = None,
    state: PartialState | None = None,
) -> EvalResults:
    """Evaluate a unified model: draw `config.num_images` images per prompt into `<eval_dir>/images`, judge, report.

    The hook for training loops (e.g. after each SRUM round, with one `eval_dir` per round): pass the same `protocol`
    every time to load its judge models once, then `log_results` the returned results to the run's trackers.
    Resumable and multi-process (every process of the accelerate group calls it; see the module docstring).
    """
    if config.images_dir is not None:
        raise ValueError("evaluate_model draws its own images: leave images_dir unset (or use evaluate_folder)")
    return evaluate(config, model, protocol=protocol, state=state)


def evaluate_folder(
    config: EvalConfig, *, protocol: EvalProtocol | None = None, state: PartialState | None = None
) -> EvalResults:
    """Evaluate the images in `config.images_dir` (made by any generator; layout in `trl_srum.eval.images`)."""
    if config.images_dir is None:
        raise ValueError("evaluate_folder needs config.images_dir")
    return evaluate(config, protocol=protocol, state=state)
