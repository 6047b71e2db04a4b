import copy
import hashlib
import logging
import math
import os
from collections import defaultdict
from typing import Any

import torch
from datasets import Dataset
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl.trainer.base_trainer import _BaseTrainer

from .collator import SRUMDataCollator
from .flow import add_noise, sample_timesteps
from .loss import srum_loss
from .model_card import write_model_card
from .protocol import UnifiedModel
from .rollout.schema import STATUS_OK
from .srum_config import SRUMConfig


logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "image", "global_score", "regions")


def _row_generator(seed: int, step: int, row_id: str) -> torch.Generator:
    # Every random draw of a row (posterior sample, t, noise, text dropout) comes from a generator keyed by the row
    # and the optimizer step, so results do not depend on the process count, the batch layout or on resuming.
    digest = hashlib.sha256(f"{seed}:{step}:{row_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class SRUMTrainer(_BaseTrainer):
    """
    Trainer for SRUM: post-training the generator of a unified multimodal model with its own understanding module's
    fine-grained judgements, as described in [SRUM: Fine-Grained Self-Rewarding for Unified Multimodal
    Models](https://huggingface.co/papers/2510.12784).

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            The unified model to train; it must implement `trl_srum.protocol.UnifiedModel`. A string is a model id or
            path loaded with `trl_srum.models.load_unified_model` (`args.model_init_kwargs` and
            `quantization_config` apply).
        args ([`SRUMConfig`], *optional*):
            Configuration. Defaults to `SRUMConfig("<model name>-SRUM")`.
        train_dataset ([`~datasets.Dataset`]):
            A rollout dataset (see `trl_srum.rollout.schema`), e.g. written by `trl-srum rollout` or converted from
            the released SRUM data with `trl_srum.rollout.convert_official_srum_data`.
        eval_dataset ([`~datasets.Dataset`], *optional*):
            A rollout dataset to report the loss on.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Saved next to the model; defaults to the model's own tokenizer.
        callbacks (list of [`~transformers.TrainerCallback`], *optional*):
            Training callbacks.
        optimizers (`tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None]`):
            Optimizer and scheduler; built from `args` when `None`.
        peft_config ([`~peft.PeftConfig`], *optional*):
            LoRA (or other PEFT) configuration. Targets default to the model's generation-only preset and the task
            type is cleared (an image model is not a causal LM).
        quantization_config ([`~transformers.BitsAndBytesConfig`], *optional*):
            Used when `model` is a string, e.g. an 8-bit or 4-bit base under LoRA.
    """

    _tag_names = ["trl", "srum", "text-to-image"]
    _name = "SRUM"
    _paper = {
        "title": "SRUM: Fine-Grained Self-Rewarding for Unified Multimodal Models",
        "id": "2510.12784",
        "citation": (
            "@misc{srum2025,\n"
            "    title         = {{SRUM: Fine-Grained Self-Rewarding for Unified Multimodal Models}},\n"
            "    year          = 2025,\n"
            "    eprint        = {2510.12784},\n"
            "    archivePrefix = {arXiv}\n"
            "}"
        ),
    }
    # `compute_loss` returns a per-micro-batch mean, so the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        args: SRUMConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        peft_config: PeftConfig | None = None,
        quantization_config: Any | None = None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SRUMConfig(f"{os.path.basename(str(name).rstrip('/')) or 'model'}-SRUM")
        model = self._load_model(model, args, quantization_config)
        if not isinstance(model, UnifiedModel):
            raise TypeError(
                f"{type(model).__name__} does not implement trl_srum.protocol.UnifiedModel (see docs/adapters.md)"
            )
        if args.activation_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(
                f"activation_checkpointing=True but {type(model).__name__} does not support gradient checkpointing"
            )
        model = self._prepare_trainable_parameters(model, args, peft_config)

        if processing_class is None:
            processing_class = getattr(model, "tokenizer", None)
        train_dataset = self._prepare_dataset(train_dataset, args, "train_dataset")
        eval_dataset = self._prepare_dataset(eval_dataset, args, "eval_dataset")
        collator = SRUMDataCollator(
            latent_grid=model.latent_grid,
            use_stored_latents=args.latent_source != "encode",
            reward_map_mode=args.reward_map_mode,
            reward_map_pooling=args.reward_map_pooling,
            use_global_reward=args.use_global_reward,
            use_local_rewards=args.use_local_rewards,
            missing_global_score=args.missing_global_score,
        )
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )

        # A reference model is needed only for the "reference" constraint; under PEFT it is the adapter-disabled model.
        self.ref_model = None
        if args.constraint == "reference" and not isinstance(model, PeftModel):
            self.ref_model = copy.deepcopy(self.accelerator.unwrap_model(self.model)).requires_grad_(False).eval()
            self.ref_model = self.accelerator.prepare_model(self.ref_model, evaluation_mode=True)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _load_model(
        model: str | PreTrainedModel | PeftModel, args: SRUMConfig, quantization_config: Any | None
    ) -> PreTrainedModel | PeftModel:
        if not isinstance(model, str):
            if args.model_init_kwargs is not None or quantization_config is not None:
                logger.warning("model is already instantiated: model_init_kwargs and quantization_config are ignored")
            return model
        # The model registry imports every model family; only pay for it when a model id must be resolved.
        from .models import load_unified_model

        kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            if "quantization_config" in kwargs:
                raise ValueError("quantization_config given both as an argument and in args.model_init_kwargs")
            kwargs["quantization_config"] = quantization_config
        return load_unified_model(model, **kwargs)

    @staticmethod
    def _prepare_trainable_parameters(
        model: PreTrainedModel | PeftModel, args: SRUMConfig, peft_config: PeftConfig | None
    ) -> PreTrainedModel | PeftModel:
        if peft_config is not None:
            if isinstance(model, PeftModel):
                raise ValueError("model is already a PeftModel; pass it without peft_config")
            peft_config = copy.copy(peft_config)
            if peft_config.task_type is not None:
                logger.warning(
                    f"peft_config.task_type={peft_config.task_type!r} is for language models; using None for an "
                    "image generator"
                )
                peft_config.task_type = None
            if getattr(peft_config, "target_modules", None) is None:
                peft_config.target_modules = model.generation_lora_target_modules
            model = get_peft_model(model, peft_config)
            if args.activation_checkpointing:
                model.enable_input_require_grads()
            return model
        if isinstance(model, PeftModel) or args.trainable_parameters == "all":
            return model
        generation = set(model.generation_parameter_names())
        if not generation:
            raise ValueError(f"{type(model).__name__}.generation_parameter_names() is empty: nothing to train")
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in generation)
        return model

    @staticmethod
    def _prepare_dataset(dataset: Dataset | None, args: SRUMConfig, name: str) -> Dataset | None:
        if dataset is None:
            return None
        missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
        if missing:
            raise ValueError(f"{name} lacks the rollout columns {missing}; see trl_srum.rollout.schema")
        if "row_id" not in dataset.column_names:
            dataset = dataset.add_column("row_id", [str(i) for i in range(len(dataset))])
        if args.drop_failed_rollouts and "status" in dataset.column_names:
            kept = [i for i, status in enumerate(dataset["status"]) if status == STATUS_OK]
            if len(kept) < len(dataset):
                logger.warning(f"{name}: training on {len(kept)} of {len(dataset)} rows (status != 'ok' dropped)")
                dataset = dataset.select(kept)
        if args.use_global_reward and args.missing_global_score == "drop":
            kept = [i for i, score in enumerate(dataset["global_score"]) if score is not None]
            if len(kept) < len(dataset):
                logger.warning(
                    f"{name}: dropped {len(dataset) - len(kept)} of {len(dataset)} rows without a global score "
                    "(missing_global_score='drop'; 'neutral' trains on them with g = 0)"
                )
                dataset = dataset.select(kept)
        if len(dataset) == 0:
            raise ValueError(f"{name} has no trainable rows")
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["row_id", *REQUIRED_COLUMNS, "latents", "latent_grid", "status"]

    # ------------------------------------------------------------------ the step
    def _clean_latents(
        self, model: UnifiedModel, inputs: dict[str, Any], generators: list[torch.Generator]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Clean latents and constraint anchors of every row: stored latents, or fresh encodes of the images."""
        latents, anchors = [], []
        for image, stored, generator in zip(inputs["images"], inputs["latents"], generators, strict=True):
            if stored is not None:
                latents.append(stored)
                anchors.append(stored)
                continue
            if self.args.latent_source == "stored":
                raise ValueError("latent_source='stored' but a rollout row has no stored latents")
            posterior = generator if self.args.sample_posterior else None
            with torch.no_grad():
                sample = model.encode_images([image], generator=posterior)[0]
                # The released recipe encodes the image twice: the anchor gets its own posterior sample.
                anchor = model.encode_images([image], generator=posterior)[0] if posterior is not None else sample
            latents.append(sample)
            anchors.append(anchor)
        return latents, anchors

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        args: SRUMConfig = self.args
        mode = "train" if self.model.training else "eval"
        unwrapped = self.accelerator.unwrap_model(model)
        # Evaluation reuses one noise draw per row, so that eval losses of different steps are comparable.
        step = self.state.global_step if mode == "train" else -1
        generators = [_row_generator(args.seed, step, row_id) for row_id in inputs["row_ids"]]
        latents, anchors = self._clean_latents(unwrapped, inputs, generators)

        timesteps, noises, prompts = [], [], []
        for prompt, clean, generator in zip(inputs["prompts"], latents, generators, strict=True):
            timesteps.append(
                sample_timesteps(
                    1,
                    generator=generator,
                    sampling=args.timestep_sampling,
                    logit_mean=args.logit_mean,
                    logit_std=args.logit_std,
                    shift=args.timestep_shift,
                    t_min=args.timestep_min,
                    t_max=args.timestep_max,
                )
            )
            noises.append(torch.randn(clean.shape, generator=generator))
            dropped = mode == "train" and torch.rand(1, generator=generator).item() < args.text_dropout
            prompts.append(None if dropped else prompt)
        timesteps = torch.cat(timesteps)

        device = self.accelerator.device
        latents = [x.to(device, torch.float32) for x in latents]
        noises = [n.to(device) for n in noises]
        noisy = [add_noise(x, n, t) for x, n, t in zip(latents, noises, timesteps.to(device), strict=True)]
        flow_inputs = unwrapped.prepare_flow_inputs(prompts, noisy, inputs["grids"], timesteps)
        velocity = model(**flow_inputs).velocity

        v_ref = None
        weight = args.lambda_constraint
        if args.constraint == "reference":
            weight = args.reference_weight
            v_ref = self._reference_velocity(unwrapped, flow_inputs)

        token_rewards = torch.cat(inputs["token_rewards"])
        # Reward statistics come from the collator's CPU tensor (no device syncs): a count, sums and extremes, which
        # reduce exactly across processes, so the logged values do not depend on how the batch is sharded.
        rewards64 = token_rewards.double()
        reward_stats = {
            "reward/count": (rewards64.numel(), "sum"),
            "reward/sum": (rewards64.sum().item(), "sum"),
            "reward/sum_sq": (rewards64.square().sum().item(), "sum"),
            "reward/min": (rewards64.min().item(), "min"),
            "reward/max": (rewards64.max().item(), "max"),
            **{f"reward_map/{k}": (float(v), "sum") for k, v in inputs["reward_stats"].items()},
        }
        token_rewards = token_rewards.to(device)
        loss, metrics = srum_loss(
            velocity,
            torch.cat(noises),
            torch.cat(latents),
            token_rewards,
            lambda_constraint=weight,
            latents_anchor=torch.cat([a.to(device, torch.float32) for a in anchors]),
            v_ref=v_ref,
            constraint=args.constraint,
            repulsion_margin=args.repulsion_margin,
        )
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"non-finite SRUM loss {metrics} on rollout rows {inputs['row_ids']}")

        global_scores = [g for g in inputs["global_scores"] if g is not None]
        stats = {key: (value, "mean") for key, value in metrics.items()}
        stats.update(
            {
                "global_score/sum": (float(sum(global_scores)), "sum"),
                "global_score/count": (len(global_scores), "sum"),
                "timestep/mean": (timesteps.mean().item(), "mean"),
                "text_dropped": (sum(p is None for p in prompts) / len(prompts), "mean"),
                **reward_stats,
            }
        )
        for key, value in self._gather_stats(stats).items():
            self._metrics[mode][key].append(value)
        return (loss, velocity) if return_outputs else loss

    def _gather_stats(self, stats: dict[str, tuple[float, str]]) -> dict[str, float]:
        """Reduce `{key: (local value, "mean" | "sum" | "min" | "max")}` over the processes in one collective (every
        process has the same keys), then turn the reward and global-score sums into means and a standard deviation."""
        keys = sorted(stats)
        local = torch.tensor([float(stats[k][0]) for k in keys], dtype=torch.float32, device=self.accelerator.device)
        per_process = zip(*self.accelerator.gather(local[None]).cpu().tolist(), strict=True)  # one column per key
        reduce = {"mean": lambda v: sum(v) / len(v), "sum": sum, "min": min, "max": max}
        values = {k: float(reduce[stats[k][1]](column)) for k, column in zip(keys, per_process, strict=True)}

        count, total, total_sq = values.pop("reward/count"), values.pop("reward/sum"), values.pop("reward/sum_sq")
        values["reward/mean"] = total / count
        variance = (total_sq - total * total / count) / (count - 1) if count > 1 else 0.0
        values["reward/std"] = max(variance, 0.0) ** 0.5
        score_count, score_sum = values.pop("global_score/count"), values.pop("global_score/sum")
        values["global_score/mean"] = score_sum / score_count if score_count else 0.0
        return values

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        # There are no labels or logits to compare: evaluation is the SRUM loss itself.
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _reference_velocity(self, unwrapped: torch.nn.Module, flow_inputs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            if self.ref_model is not None:
                return self.ref_model(**flow_inputs).velocity
            with unwrapped.disable_adapter():
                return unwrapped(**flow_inputs).velocity

    # ------------------------------------------------------------------ logging and saving
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        super().log({**logs, **metrics}, start_time)
        self._metrics[mode].clear()

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write `output_dir/README.md`: an SRUM card (base model, settings, data, metrics, samples)."""
        if not self.is_world_process_zero():
            return
        extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
        write_model_card(
            self.args.output_dir,
            model=self.accelerator.unwrap_model(self.model),
            args=self.args,
            log_history=self.state.log_history,
            model_name=model_name or os.path.basename(os.path.normpath(self.args.output_dir)),
            dataset_name=dataset_name,
            hub_model_id=self.hub_model_id,
            tags=sorted(set(self._tag_names + extra_tags)),
            citation=self._paper["citation"],
            image_size=self.train_dataset[0]["image"].size if self.train_dataset is not None else (1024, 1024),
        )

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        if self.args.hub_model_id is None:
            model_name = os.path.basename(os.path.normpath(self.args.output_dir))
        else:
            model_name = self.args.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name)
        super()._save_checkpoint(model, trial)
