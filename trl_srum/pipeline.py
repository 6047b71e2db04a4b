"""SRUM in rounds: stage 1 with the current model, stage 2 on its fresh rollouts, and again.

The paper runs one offline round. Online, each round draws new candidates from the model as it now is, so the judge
scores what the generator currently does and the samples are used about once (one pass by default), as online
fine-tuning of flow models does (DiffusionNFT, Flow-GRPO); each round's trainer also takes the model at the round's
start as the "old" model of the negative-aware loss (`SRUMConfig.loss_type="nft"`).

Everything a run writes lives under `SRUMConfig.output_dir`:

    round-N/rollouts/     stage 1 of round N (shards, the merged `dataset`, gallery, summary)
    round-N/checkpoint-*  the trainer's checkpoints of round N (`save_strategy`)
    round-N/model/        the weights at the end of round N (the adapter under PEFT)
    round-N/round.json    the round's statistics, written last: a round with this file is complete
    runs/                 tensorboard logs of every round (steps continue across rounds), when `report_to` has it
    pipeline.json         the settings of the run: a rerun with the same settings resumes, other settings are refused
    the final weights (the adapter under PEFT), the tokenizer and the model card

A run killed anywhere resumes where it stopped when started again with the same settings: complete rounds are
loaded, not redone; stage 1 keeps the shards it wrote; stage 2 continues from the round's latest checkpoint.
"""

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from peft import PeftConfig, PeftModel, set_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file
from transformers import PreTrainedModel, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import get_last_checkpoint

from .advantage import group_baselines
from .judge.prompts import PROBABILITY_SCALE, global_probability_question
from .judge.scoring import Judge
from .rollout import RolloutConfig
from .rollout.gallery import draw_rollout, image_grid
from .rollout.prompts import PromptRecord
from .rollout.runner import RolloutRunner, rollout_state, weights_fingerprint
from .rollout.schema import STATUS_OK
from .rollout.writer import check_manifest, write_atomically
from .srum_config import SRUMConfig
from .srum_trainer import SRUMTrainer, apply_peft, reward_maps_by_group


logger = logging.getLogger(__name__)

ROUND_SUMMARY = "round.json"
PIPELINE_MANIFEST = "pipeline.json"
DRIFT_REFERENCE = "drift_reference.pt"
# What `save` pushes to the Hub is gathered here (a leading underscore: never part of an upload of output_dir itself).
HUB_STAGING = "_hub_upload"
# Fields of the configs that change no result: a run may be resumed with other values.
_PRESENTATION_FIELDS = {
    "output_dir",
    "logging_steps",
    "logging_strategy",
    "logging_first_step",
    "report_to",
    "run_name",
    "disable_tqdm",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_token",
    "hub_private_repo",
    "resume_from_checkpoint",
    "dataloader_num_workers",
    "rollout_dir",
    "gallery_size",
    "validation_prompts",
    "validation_every",
    "overlay_images",
}


@dataclass
class RoundsConfig:
    r"""
    Configuration of SRUM in rounds (`SRUMPipeline`); the rounds' stage 1 and stage 2 take their settings from a
    `RolloutConfig` and an `SRUMConfig`.

    Parameters:
        num_rounds (`int`, *optional*, defaults to `1`):
            Rounds of stage 1 (with the current model) then stage 2 (on those fresh rollouts). One round is the
            paper's offline SRUM.
        prompts_per_round (`int`, *optional*):
            Prompts drawn for each round from the prompt list, in a seeded order that visits every prompt before
            repeating one. `None` rolls out every prompt every round.
        rollout_dataset (`str`, *optional*):
            Train on this saved rollout dataset (e.g. converted official data) instead of running stage 1; one round.
        validation_prompts (`int`, *optional*, defaults to `4`):
            The first this many prompts are drawn with fixed seeds before training, at every round's end and every
            `validation_every` logs, and logged as images (with reward-map overlays of each round's rollouts) to the
            trackers of `report_to` (tensorboard, wandb). 0 turns the images off.
        validation_every (`int`, *optional*, defaults to `0`):
            Also draw the validation images every this many logs (`logging_steps`) inside a round; 0: at round ends.
        overlay_images (`int`, *optional*, defaults to `4`):
            Rollouts per round shown with their boxes, scores and reward map.
        drift_probe (`int`, *optional*, defaults to `8`):
            Images of the first round on which the judge's answer distribution (the `prob` judge's scale) is
            re-measured after every round: the mean KL divergence from the base model's is the understanding drift,
            exactly 0 while only generation weights train. 0 turns it off.
    """

    num_rounds: int = field(default=1, metadata={"help": "Rounds of stage 1 then stage 2 (1 = offline SRUM)."})
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "Prompts rolled out per round (None: all of them every round)."}
    )
    rollout_dataset: str | None = field(
        default=None, metadata={"help": "Train on this saved rollout dataset instead of stage 1 (one round)."}
    )
    validation_prompts: int = field(
        default=4, metadata={"help": "Prompts drawn with fixed seeds and logged as images every round (0: none)."}
    )
    validation_every: int = field(
        default=0, metadata={"help": "Also log validation images every this many logs inside a round (0: no)."}
    )
    overlay_images: int = field(default=4, metadata={"help": "Rollouts logged with their reward maps per round."})
    drift_probe: int = field(
        default=8, metadata={"help": "Images on which the judge's drift is measured every round (0: off)."}
    )

    def __post_init__(self):
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1; got {self.num_rounds}")
        if self.rollout_dataset is not None and self.num_rounds != 1:
            raise ValueError(
                f"rollout_dataset trains offline on one saved dataset: num_rounds must be 1, got {self.num_rounds}"
            )
        if self.prompts_per_round is not None and self.prompts_per_round < 1:
            raise ValueError(f"prompts_per_round must be >= 1; got {self.prompts_per_round}")
        if min(self.validation_prompts, self.validation_every, self.overlay_images, self.drift_probe) < 0:
            raise ValueError("validation_prompts, validation_every, overlay_images and drift_probe must be >= 0")


def round_prompts(prompts: Sequence[PromptRecord], round_index: int, per_round: int | None, seed: int):
    """The prompts of one round: all of them, or the round's window of consecutive seeded permutations of the list
    (every prompt once before any twice)."""
    if per_round is None:
        return list(prompts)
    start, stop = round_index * per_round, (round_index + 1) * per_round
    chosen = []
    for lap in range(start // len(prompts), (stop - 1) // len(prompts) + 1):
        order = np.random.default_rng([seed, lap]).permutation(len(prompts))
        for position in range(max(start, lap * len(prompts)), min(stop, (lap + 1) * len(prompts))):
            chosen.append(prompts[order[position - lap * len(prompts)]])
    return chosen


def _trackers(report_to: Sequence[str], logging_dir: Path) -> list[Any]:
    """accelerate's trackers for what the Trainer reports to, writing where the Trainer writes (main process only)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    trackers = []
    if "tensorboard" in report_to:
        trackers.append(TensorBoardTracker("", logging_dir))
    if "wandb" in report_to:
        trackers.append(WandBTracker("trl-srum"))
    for tracker in trackers:
        tracker.start()
    return trackers


def log_images(trackers: Sequence[Any], tag: str, images: Sequence[Image.Image], step: int) -> None:
    """Log a row of images to every tracker (tensorboard wants one array, wandb a list)."""
    from accelerate.tracking import TensorBoardTracker

    for tracker in trackers:
        if isinstance(tracker, TensorBoardTracker):
            batch = np.stack([np.asarray(image.convert("RGB")) for image in images])
            tracker.log_images({tag: batch}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({tag: list(images)}, step=step)


class _ValidationImages(TrainerCallback):
    """Draws the validation prompts every `every` logs of a round's training."""

    def __init__(self, pipeline: "SRUMPipeline", every: int, step_offset: int):
        self.pipeline, self.every, self.step_offset, self.logs = pipeline, every, step_offset, 0

    def on_log(self, args, state, control, model=None, **kwargs):
        self.logs += 1
        if self.every and self.logs % self.every == 0:
            self.pipeline.log_validation(f"step-{state.global_step}", self.step_offset + state.global_step)


class SRUMPipeline:
    """Run SRUM in rounds on a unified model.

    Args:
        model: the model (it implements `trl_srum.protocol.UnifiedModel`), on the device it samples on.
        prompts: the prompt list the rounds draw from (`trl_srum.rollout.load_prompts` reads files).
        args: stage 2's settings; `output_dir` holds the whole run (see the module docstring).
        rollout_config: stage 1's settings (its `rollout_dir` is replaced by `<output_dir>/round-N/rollouts`, and
            round N draws its candidates from seed `rollout_seed + N`).
        rounds: the rounds' settings.
        peft_config: a PEFT adapter to train (one adapter through every round, on a base that stays frozen, possibly
            4/8-bit); `None` trains the model's generation weights (or all, see `SRUMConfig.trainable_parameters`).
        callbacks: extra `TrainerCallback`s for every round's trainer.
        judge: stage 1's judge (default: the model's own, as `rollout_config` describes); e.g. an oracle for upper
            bounds.

    Example:

    ```python
    >>> pipeline = SRUMPipeline(model, load_prompts("prompts.json"), args=SRUMConfig("out", loss_type="nft"),
    ...                         rollout_config=RolloutConfig(num_candidates=8, proposer="grounding"),
    ...                         rounds=RoundsConfig(num_rounds=20, prompts_per_round=64), peft_config=LoraConfig(r=32))
    >>> model = pipeline.run()
    >>> pipeline.save()  # final weights and the model card in args.output_dir
    ```
    """

    def __init__(
        self,
        model: PreTrainedModel,
        prompts: Sequence[PromptRecord],
        *,
        args: SRUMConfig,
        rollout_config: RolloutConfig,
        rounds: RoundsConfig | None = None,
        peft_config: PeftConfig | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        judge: Judge | None = None,
    ):
        self.rounds = rounds or RoundsConfig()
        if self.rounds.rollout_dataset is None and not prompts:
            raise ValueError("SRUMPipeline needs prompts for stage 1 (or rounds.rollout_dataset to train offline)")
        if args.loss_type == "nft" and self.rounds.rollout_dataset is None and rollout_config.num_candidates < 2:
            raise ValueError(
                "loss_type='nft' compares the candidates of each prompt: set rollout_config.num_candidates >= 2 "
                "(8 recommended)"
            )
        # Sampling with a sharded model works only when every process runs the same forwards: under FSDP the
        # validation images and the drift probe (drawn on the main process) are skipped, and rounds are refused.
        self.fsdp = os.environ.get("ACCELERATE_USE_FSDP") == "true"
        if self.rounds.num_rounds > 1 and self.fsdp:
            raise ValueError(
                "several rounds under FSDP are not supported: from round 2 on, stage 1 would sample with a sharded "
                "model whose processes draw different numbers of batches; run rounds with DDP or one process"
            )
        self.args, self.rollout_config = args, rollout_config
        self.prompts = list(prompts)
        self.peft_config, self.callbacks, self.judge = peft_config, list(callbacks), judge
        self.output_dir = Path(args.output_dir)
        self.state = rollout_state()
        self.trackers = _trackers(args.report_to or [], self.output_dir / "runs") if self.state.is_main_process else []
        self.summaries: list[dict[str, Any]] = []
        # Called with the round's index once a round is complete (e.g. an evaluation logged to `self.trackers`).
        self.round_end_hooks: list[Callable[[int], None]] = []
        self.trainer: SRUMTrainer | None = None
        self.steps = 0  # optimizer steps of the rounds so far: where the next round's logged steps start
        self._drift_reference: tuple[list[Image.Image], list[str], torch.Tensor] | None = None
        self._checkpoint: str | None = None
        self.model = apply_peft(model, peft_config, args.seed, args.activation_checkpointing) if peft_config else model

    # ------------------------------------------------------------------ the run
    def run(self, resume_from_checkpoint: str | bool | None = None) -> PreTrainedModel | PeftModel:
        """Run every round, or resume a run of the same settings where it stopped (see the module docstring).

        Args:
            resume_from_checkpoint: a trainer checkpoint folder to resume the first unfinished round's stage 2 from
                (by default its latest checkpoint in `round-N/`, if any); `True` or `"true"` is the default.

        Returns:
            The trained model (a `PeftModel` under PEFT).
        """
        self._check_manifest()
        self._checkpoint = (
            resume_from_checkpoint if resume_from_checkpoint not in (None, True, "true", "True") else None
        )
        done = self._completed_rounds()
        if done:
            if self.rounds.drift_probe and self.rounds.rollout_dataset is None and not self.fsdp:
                self._measure_drift_reference(
                    load_from_disk(str(self.output_dir / "round-0" / "rollouts" / "dataset"))
                )
            self._load_round(done - 1)
            logger.info(f"resuming after round {done - 1} of {self.rounds.num_rounds} in {self.output_dir}")
        else:
            self.log_validation("base", 0)
        for round_index in range(done, self.rounds.num_rounds):
            self._run_round(round_index)
        return self.model

    def save(self, dataset_name: str | None = None) -> None:
        """Write the final weights (the adapter under PEFT), the tokenizer and the model card, which lists every round,
        to `output_dir`; with `args.push_to_hub`, push them (and the card's samples and evaluation) without the rounds'
        folders."""
        card = {"dataset_name": dataset_name, "rounds": self.summaries, "image_size": self.rollout_config.image_size}
        final = self._final_trainer(self.output_dir, pushes=False)
        final.save_model(str(self.output_dir))
        final.create_model_card(**card)
        if not self.args.push_to_hub:
            return
        # The Hub gets what a model repository holds: what the card shows, beside what `push_to_hub` saves.
        staging = self.output_dir / HUB_STAGING
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        for name in ("samples", "eval_results.json"):
            if (self.output_dir / name).is_dir():
                shutil.copytree(self.output_dir / name, staging / name)
            elif (self.output_dir / name).is_file():
                shutil.copy2(self.output_dir / name, staging / name)
        self._final_trainer(staging, pushes=True).push_to_hub(**card)

    def _final_trainer(self, folder: Path, pushes: bool) -> SRUMTrainer:
        """A trainer over the final model that writes to `folder`, with every round's log for the model card.
        (`Trainer.save_model` pushes whatever it saves when `push_to_hub` is on: only the staged copy may.)"""
        args = dataclasses.replace(self.args, output_dir=str(folder), report_to="none", push_to_hub=pushes)
        final = SRUMTrainer(self.model, args)
        if self.trainer is not None:
            final.state.log_history = list(self.trainer.state.log_history)
        return final

    def _run_round(self, round_index: int) -> None:
        round_dir = self.output_dir / f"round-{round_index}"
        started = time.perf_counter()
        dataset = self._stage1(round_index, round_dir)
        stage1_seconds = time.perf_counter() - started
        # Only the final weights go to the Hub (`save`), not every round's checkpoints.
        args = dataclasses.replace(
            self.args, output_dir=str(round_dir), seed=self.args.seed + round_index, push_to_hub=False
        )
        callbacks = [*self.callbacks, _ValidationImages(self, self.rounds.validation_every, self.steps)]
        trainer = SRUMTrainer(self.model, args, train_dataset=dataset, callbacks=callbacks)
        trainer.logging_step_offset = self.steps
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback):
                callback.logging_dir = str(self.output_dir / "runs")  # one run for all rounds
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is None and round_dir.is_dir():
            checkpoint = get_last_checkpoint(str(round_dir))
        if checkpoint is not None:
            logger.info(f"round {round_index}: resuming stage 2 from {checkpoint}")
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=checkpoint)
        stage2_seconds = time.perf_counter() - started
        self.model, self.trainer = trainer.model, trainer
        self.steps += trainer.state.global_step
        trainer.save_model(str(round_dir / "model"))

        summary = self._round_statistics(round_index, trainer)
        # Wall time of this process (of this run, when a round was resumed part-way).
        summary.update(stage1_seconds=stage1_seconds, stage2_seconds=stage2_seconds)
        self.summaries.append(summary)
        if self.state.is_main_process:
            write_atomically(round_dir / ROUND_SUMMARY, lambda path: path.write_text(json.dumps(summary, indent=2)))
            for tracker in self.trackers:
                tracker.log({f"round/{k}": v for k, v in summary.items() if isinstance(v, int | float)}, self.steps)
            overlays = [draw_rollout(row) for row in _ok_rows(dataset, self.rounds.overlay_images)]
            if overlays:
                log_images(self.trackers, "rollouts/reward_maps", _same_size(overlays), self.steps)
        self.log_validation(f"round-{round_index}", self.steps)
        logger.info(f"round {round_index}: {summary}")
        for hook in self.round_end_hooks:
            hook(round_index)
        self.state.wait_for_everyone()

    def _stage1(self, round_index: int, round_dir: Path) -> Dataset:
        if self.rounds.rollout_dataset is not None:
            return load_from_disk(self.rounds.rollout_dataset)
        config = dataclasses.replace(
            self.rollout_config,
            rollout_dir=str(round_dir / "rollouts"),
            rollout_seed=self.rollout_config.rollout_seed + round_index,
        )
        prompts = round_prompts(
            self.prompts, round_index, self.rounds.prompts_per_round, self.rollout_config.rollout_seed
        )
        dataset = RolloutRunner(self.model, config, judge=self.judge).run(prompts)
        if round_index == 0 and self.rounds.drift_probe and not self.fsdp:
            self._measure_drift_reference(dataset)
        return dataset

    # ------------------------------------------------------------------ what a user watches
    def _round_statistics(self, round_index: int, trainer: SRUMTrainer) -> dict[str, Any]:
        maps = reward_maps_by_group(trainer.data_collator, trainer.train_dataset, f"round {round_index}")
        groups = group_baselines(maps)
        rewards = torch.cat([m.flatten() for group in maps.values() for m in group]).double()
        global_scores = [g for g in trainer.train_dataset["global_score"] if g is not None]
        summary = {
            "round": round_index,
            "rows": len(trainer.train_dataset),
            "steps": trainer.state.global_step,
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
            "global_score_mean": float(np.mean(global_scores)) if global_scores else None,
            "prompt_groups": len(groups),
            # Only prompts whose candidates scored differently teach the negative-aware loss anything.
            "mixed_group_fraction": sum(b.mixed for b in groups.values()) / len(groups),
        }
        if self._drift_reference is not None:
            summary["understanding_drift_kl"] = self._understanding_drift()
        return summary

    def log_validation(self, label: str, step: int) -> None:
        """Draw the validation prompts with fixed seeds and log the images (main process)."""
        count = min(self.rounds.validation_prompts, len(self.prompts))
        if not self.trackers or count == 0 or self.fsdp:
            return
        prompts = [record.prompt for record in self.prompts[:count]]
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            images = [
                sample.image
                for sample in self.model.generate_images(
                    prompts,
                    generators=[torch.Generator().manual_seed(index) for index in range(count)],
                    image_size=self.rollout_config.image_size,
                    **(self.rollout_config.generation_kwargs or {}),
                )
            ]
        self.model.train(training)
        log_images(self.trackers, "validation/samples", images, step)
        log_images(self.trackers, f"validation/{label}", [image_grid([images])], step)

    def _measure_drift_reference(self, dataset: Dataset) -> None:
        """The base model's answer distribution on the probe images (the first rollouts of round 0), kept on disk so
        that a resumed run measures drift against the same reference."""
        rows = _ok_rows(dataset, self.rounds.drift_probe)
        images = [row["image"] for row in rows]
        questions = [
            global_probability_question(row["prompt"], row["image"].size, style=self.rollout_config.judge_style)
            for row in rows
        ]
        path = self.output_dir / DRIFT_REFERENCE
        if path.is_file():
            reference = torch.load(path)
        else:
            reference = self._answer_log_probs(images, questions)
            if self.state.is_main_process:
                write_atomically(path, lambda temporary: torch.save(reference, temporary))
        self._drift_reference = (images, questions, reference)

    def _answer_log_probs(self, images: Sequence[Image.Image], questions: Sequence[str]) -> torch.Tensor:
        answers = [answer for answer, _ in PROBABILITY_SCALE]
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            rows = [self.model.score_answers(i, [q], answers)[0] for i, q in zip(images, questions, strict=True)]
        self.model.train(training)
        return torch.log_softmax(torch.stack(rows).float().cpu(), dim=-1)

    def _understanding_drift(self) -> float:
        """Mean KL(base || now) of the judge's answer distribution on the probe images."""
        images, questions, reference = self._drift_reference
        current = self._answer_log_probs(images, questions)
        kl = (reference.exp() * (reference - current)).sum(dim=-1)
        return float(torch.nan_to_num(kl, nan=0.0).mean())

    # ------------------------------------------------------------------ resuming
    def _manifest(self) -> dict[str, Any]:
        def settings(config: Any) -> dict[str, Any]:
            values = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
            return {k: v for k, v in values.items() if k not in _PRESENTATION_FIELDS and not k.startswith("_")}

        return {
            "training": settings(self.args),
            "rollouts": settings(self.rollout_config),
            "rounds": settings(self.rounds),
            "peft": self.peft_config.to_dict() if self.peft_config is not None else None,
            "prompts": [[r.prompt_id, r.prompt, r.category] for r in self.prompts],
            "model_weights": weights_fingerprint(self.model),
        }

    def _check_manifest(self) -> None:
        first_round = self.output_dir / "round-0"
        check_manifest(
            self.output_dir / PIPELINE_MANIFEST,
            self._manifest(),
            results=first_round if first_round.exists() else None,
            write=self.state.is_main_process,
        )
        self.state.wait_for_everyone()

    def _completed_rounds(self) -> int:
        done = 0
        while (self.output_dir / f"round-{done}" / ROUND_SUMMARY).is_file() and done < self.rounds.num_rounds:
            summary = json.loads((self.output_dir / f"round-{done}" / ROUND_SUMMARY).read_text())
            self.summaries.append(summary)
            self.steps += summary["steps"]
            done += 1
        return done

    def _load_round(self, round_index: int) -> None:
        """Put the weights of the end of round `round_index` into the model."""
        folder = self.output_dir / f"round-{round_index}" / "model"
        if isinstance(self.model, PeftModel):
            state = load_file(folder / "adapter_model.safetensors")
            result = set_peft_model_state_dict(self.model, state)
            if result.unexpected_keys:
                raise ValueError(f"{folder}: adapter weights the model does not have: {result.unexpected_keys[:5]}")
        else:
            state = load_file(folder / "model.safetensors")
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            trainable = {name for name, p in self.model.named_parameters() if p.requires_grad} & set(missing)
            if unexpected or trainable:
                raise ValueError(
                    f"{folder} does not match the model: missing {sorted(trainable)[:5]}, "
                    f"unexpected {sorted(unexpected)[:5]}"
                )


def _ok_rows(dataset: Dataset, count: int) -> list[dict[str, Any]]:
    rows = []
    for index, status in enumerate(dataset["status"]):
        if len(rows) == count:
            break
        if status == STATUS_OK:
            rows.append(dataset[index])
    return rows


def _same_size(images: Sequence[Image.Image]) -> list[Image.Image]:
    width, height = images[0].size
    return [image if image.size == (width, height) else image.resize((width, height)) for image in images]


__all__ = ["RoundsConfig", "SRUMPipeline", "log_images", "round_prompts"]
