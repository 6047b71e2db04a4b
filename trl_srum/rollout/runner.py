"""Stage 1 end to end: prompts -> candidates -> region proposals -> relevance filter -> self-judge -> dataset."""

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Container, Iterator, Sequence
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset, load_from_disk
from tqdm.auto import tqdm

from ..judge.scoring import Judge, SelfJudge
from ..protocol import GeneratedImage, UnifiedModel
from .config import RolloutConfig
from .gallery import summarize_rollouts, write_gallery
from .prompts import PromptRecord
from .proposals import (
    ForegroundComponentsProposer,
    GroundingProposer,
    ProposalFilter,
    RegionProposer,
    SegmentAnythingProposer,
    TransformersSamProposer,
    propose_regions,
)
from .schema import STATUS_OK, make_row_id
from .writer import RolloutWriter


logger = logging.getLogger(__name__)


def rollout_state() -> PartialState:
    """The process group of stage 1.

    Without a CUDA/XPU/... device, `PartialState()` ignores the environment `accelerate launch --multi_gpu` sets up and
    reports a single process, so every process would redo every batch and race on the shards: on such a machine each
    process joins a CPU (gloo) group instead. An already initialised state (e.g. from a trainer) is kept.
    """
    return PartialState(cpu=not torch.accelerator.is_available())


def deal_batches(num_batches: int, done: Container[int], state: PartialState) -> list[int]:
    """The batches this process does: dealt round-robin, skipping those already done.

    Batches are cut in a canonical order before they are dealt, so their composition, hence every result, is the same
    for any process count, and a resumed run redoes none of the finished ones.
    """
    return [b for b in range(num_batches) if b % state.num_processes == state.process_index and b not in done]


def _to_numpy(tensor: torch.Tensor):
    return tensor.detach().float().cpu().numpy()


# Fields that do not change any row (the prompts themselves are compared by content): a run may be resumed with
# different values.
_RESUMABLE_FIELDS = (
    "rollout_dir",
    "gallery_size",
    "prompts_file",
    "num_prompts",
    "prompt_source",
    "prompt_source_size",
)


@torch.no_grad()
def weights_fingerprint(model: object, values_per_tensor: int = 16) -> str | None:
    """A cheap digest of a model's weights: every tensor's name, shape and dtype, and its first and last values.

    Reading a sample rather than every weight keeps it to a fraction of a second for a 14B-parameter model, yet any
    other checkpoint (or the same one after a training round) changes it. None for a model that is not a module.
    """
    if not isinstance(model, torch.nn.Module):
        return None
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:values_per_tensor], flat[-values_per_tensor:]]).cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.float().numpy().tobytes() if sample.is_floating_point() else sample.numpy().tobytes())
    return digest.hexdigest()


def candidate_seed(base_seed: int, prompt_id: str, candidate_index: int) -> int:
    """The seed of one candidate, from (base seed, prompt id, candidate index) only: no process or order enters it."""
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}:{candidate_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_proposer(
    config: RolloutConfig, model: UnifiedModel, device: str | torch.device = "cpu"
) -> RegionProposer | None:
    """The region proposer a rollout config asks for; SAM models are put on `device`."""
    keep = ProposalFilter(
        min_area_fraction=config.min_region_area,
        max_area_fraction=config.max_region_area,
        nms_iou=config.nms_iou,
        max_regions=config.max_regions,
    )
    if config.proposer == "sam":
        return SegmentAnythingProposer.from_checkpoint(
            config.sam_checkpoint, config.sam_model_type, device=device, keep=keep
        )
    if config.proposer == "sam_hf":
        from transformers import SamImageProcessor, SamModel

        return TransformersSamProposer(
            SamModel.from_pretrained(config.sam_checkpoint).to(device).eval(),
            SamImageProcessor.from_pretrained(config.sam_checkpoint),
            keep=keep,
        )
    if config.proposer == "grounding":
        return GroundingProposer(model, ProposalFilter(0.0, 1.0, config.nms_iou, config.max_regions))
    if config.proposer == "components":
        return ForegroundComponentsProposer(keep=keep)
    return None


class RolloutRunner:
    """Produce the rollout dataset of one model on a prompt list, resumably and across processes.

    Call `run()`; it returns the merged dataset (on every process) once all shards exist.
    """

    def __init__(
        self,
        model: UnifiedModel,
        config: RolloutConfig,
        proposer: RegionProposer | None = None,
        judge: Judge | None = None,
    ):
        self.model = model
        self.config = config
        self.state = rollout_state()
        self.proposer = proposer if proposer is not None else build_proposer(config, model, self.state.device)
        self.judge = judge or SelfJudge(
            model,
            mode=config.judge_mode,
            style=config.judge_style,
            think=config.judge_think,
            max_new_tokens=config.judge_max_new_tokens,
            retries=config.judge_retries,
            retry_temperature=config.judge_retry_temperature,
        )
        self.writer = RolloutWriter(config.rollout_dir)
        # Wall time of each phase of this process's share (what recipes/benchmarks/bench_end_to_end.py reports).
        self.seconds: Counter[str] = Counter()

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started

    # ------------------------------------------------------------------ one image
    def _judge_row(self, record: PromptRecord, candidate: int, seed: int, generated: GeneratedImage) -> dict[str, Any]:
        row = self._empty_row(record, candidate, seed)
        row.update(
            image=generated.image,
            latents=_to_numpy(generated.latents),
            latent_grid=list(generated.grid),
            reasoning=generated.reasoning,
        )
        notes = []
        try:
            with self._timed("proposals"):
                proposals = propose_regions(self.proposer, generated.image, record.prompt)
        except Exception as error:  # a broken proposer must not stop the run: judge globally only
            logger.warning(f"region proposals for {record.prompt_id!r} failed: {error}")
            notes.append(f"proposer failed: {error}")
            proposals = []
        else:
            if self.proposer is not None and not proposals:
                notes.append("no region proposals")

        relevance: list[float | None] = [None] * len(proposals)
        if proposals and self.config.relevance_threshold > 0:
            with self._timed("relevance"):
                relevance = self.judge.relevance(generated.image, record.prompt, [p.bbox for p in proposals])
            kept = [i for i, r in enumerate(relevance) if r >= self.config.relevance_threshold]
            if len(kept) < len(proposals):
                notes.append(f"{len(proposals) - len(kept)} of {len(proposals)} proposals judged irrelevant")
            proposals, relevance = [proposals[i] for i in kept], [relevance[i] for i in kept]

        # Retries sample from a generator of their own, so a row stays reproducible from its seed.
        judge_generator = torch.Generator().manual_seed(candidate_seed(seed, "judge", 0))
        with self._timed("judging"):
            judgement = self.judge.judge(generated.image, record.prompt, [p.bbox for p in proposals], judge_generator)
        if judgement.clamped_scores:
            notes.append(f"clamped {judgement.clamped_scores} out-of-range scores")
        missing = sum(score is None for score in judgement.region_scores)
        if missing:
            notes.append(f"judge gave no score for {missing} of {len(proposals)} regions")
        row.update(
            global_score=judgement.global_score,
            regions=[
                {"bbox": list(p.bbox), "label": p.label, "score": score, "relevance": rel, "source": p.source}
                for p, score, rel in zip(proposals, judgement.region_scores, relevance, strict=True)
            ],
            global_judge_output=judgement.global_output,
            region_judge_output=judgement.region_output,
        )
        judged = judgement.global_score is not None or any(s is not None for s in judgement.region_scores)
        if not judged:
            row["status"] = "judge_failed"
            notes.append("the judge's answers could not be parsed")
        elif judgement.global_score is None:
            # Still a judged row (its regions have scores); the trainer decides whether it is trained on.
            notes.append("judge gave no global score")
        row["error"] = "; ".join(notes)
        return row

    def _empty_row(self, record: PromptRecord, candidate: int, seed: int) -> dict[str, Any]:
        return {
            "row_id": make_row_id(record.prompt_id, candidate),
            "prompt_id": record.prompt_id,
            "prompt": record.prompt,
            "category": record.category,
            "candidate_index": candidate,
            "seed": seed,
            "image": None,
            "latents": None,
            "latent_grid": None,
            "reasoning": None,
            "global_score": None,
            "regions": [],
            "global_judge_output": "",
            "region_judge_output": "",
            "status": STATUS_OK,
            "error": "",
        }

    # ------------------------------------------------------------------ one batch
    def _generate(self, prompts: list[str], seeds: list[int]) -> list[GeneratedImage | Exception]:
        def draw(batch_prompts: list[str], batch_seeds: list[int]) -> list[GeneratedImage]:
            return self.model.generate_images(
                batch_prompts,
                generators=[torch.Generator().manual_seed(s) for s in batch_seeds],
                image_size=self.config.image_size,
                think=self.config.think,
                **(self.config.generation_kwargs or {}),
            )

        try:
            return list(draw(prompts, seeds))
        except Exception:
            # Find the culprit(s): redraw one by one so that one bad prompt does not sink its batch.
            results: list[GeneratedImage | Exception] = []
            for prompt, seed in zip(prompts, seeds, strict=True):
                try:
                    results.append(draw([prompt], [seed])[0])
                except Exception as error:
                    results.append(error)
            return results

    def _rollout_batch(self, items: Sequence[tuple[PromptRecord, int]]) -> list[dict[str, Any]]:
        seeds = [candidate_seed(self.config.rollout_seed, record.prompt_id, k) for record, k in items]
        rows: list[dict[str, Any] | None] = [None] * len(items)
        valid = []
        for index, ((record, k), seed) in enumerate(zip(items, seeds, strict=True)):
            if record.prompt.strip():
                valid.append(index)
            else:
                rows[index] = {**self._empty_row(record, k, seed), "status": "invalid_prompt", "error": "empty prompt"}
        with self._timed("sampling"):
            results = self._generate([items[i][0].prompt for i in valid], [seeds[i] for i in valid]) if valid else []
        for index, result in zip(valid, results, strict=True):
            record, k = items[index]
            if isinstance(result, Exception):
                logger.warning(f"generating {record.prompt_id!r} failed: {result}")
                rows[index] = {
                    **self._empty_row(record, k, seeds[index]),
                    "status": "generation_failed",
                    "error": f"generation failed: {result}",
                }
                continue
            try:
                rows[index] = self._judge_row(record, k, seeds[index], result)
            except Exception as error:  # recorded per row; the run goes on
                logger.warning(f"judging {record.prompt_id!r} failed: {error}")
                rows[index] = {
                    **self._empty_row(record, k, seeds[index]),
                    "image": result.image,
                    "latents": _to_numpy(result.latents),
                    "latent_grid": list(result.grid),
                    "status": "judge_failed",
                    "error": f"judge failed: {error}",
                }
        return rows

    # ------------------------------------------------------------------ the run
    def manifest(self, prompts: Sequence[PromptRecord]) -> dict[str, Any]:
        """Everything the rows depend on: a resumed run must match it (the model by a fingerprint of its weights)."""
        settings = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in _RESUMABLE_FIELDS}
        digest = hashlib.sha256()
        for record in prompts:
            digest.update(json.dumps([record.prompt_id, record.prompt, record.category]).encode())
        return {
            "config": settings,
            "num_prompts": len(prompts),
            "prompts_sha256": digest.hexdigest(),
            "model": type(self.model).__name__,
            "model_weights": weights_fingerprint(self.model),
            "proposer": type(self.proposer).__name__ if self.proposer is not None else None,
            "judge": type(self.judge).__name__,
        }

    def run(self, prompts: Sequence[PromptRecord]) -> Dataset:
        # Inference only (the protocol's generation and judge calls expect no autograd), in eval mode: a model fresh
        # from a training round would otherwise draw and judge with dropout on.
        training = getattr(self.model, "training", False)
        if training:
            self.model.eval()
        try:
            with torch.no_grad():
                return self._run(prompts)
        finally:
            if training:
                self.model.train()

    def _run(self, prompts: Sequence[PromptRecord]) -> Dataset:
        config, state = self.config, self.state
        # A size the model cannot draw is a configuration error, not a per-row failure.
        self.model.latent_grid(config.image_size)
        items = [(record, k) for record in prompts for k in range(config.num_candidates)]
        batches = [items[i : i + config.rollout_batch_size] for i in range(0, len(items), config.rollout_batch_size)]
        self.writer.check_manifest(self.manifest(prompts), write=state.is_main_process)
        state.wait_for_everyone()
        done = self.writer.completed_batches()
        mine = deal_batches(len(batches), done, state)
        logger.info(
            f"stage 1: process {state.process_index} of {state.num_processes} takes {len(mine)} of {len(batches)} "
            f"batches ({len(done)} already done) in {config.rollout_dir}"
        )

        images_done, started = 0, time.perf_counter()
        with tqdm(
            total=sum(len(batches[b]) for b in mine),
            unit="img",
            desc=f"stage 1 rollouts [{state.process_index}/{state.num_processes}]",
            disable=not mine,
        ) as progress:
            for batch_index in mine:
                rows = self._rollout_batch(batches[batch_index])
                with self._timed("writing"):
                    self.writer.write_batch(batch_index, rows)
                images_done += len(batches[batch_index])
                progress.update(len(batches[batch_index]))
                progress.set_postfix(images_per_s=f"{images_done / (time.perf_counter() - started):.2f}")

        state.wait_for_everyone()
        if state.is_main_process:
            dataset = self.writer.merge(len(batches))
            write_gallery(dataset, config.rollout_dir, config.gallery_size)
            summary = summarize_rollouts(dataset, config.rollout_dir)
            logger.info(summary)
        state.wait_for_everyone()
        return load_from_disk(str(self.writer.dataset_dir))


def run_rollouts(model: UnifiedModel, prompts: Sequence[PromptRecord], config: RolloutConfig) -> Dataset:
    """Stage 1 with the components `config` names; see `RolloutRunner`."""
    return RolloutRunner(model, config).run(prompts)
