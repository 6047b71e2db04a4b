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
from torch.distributed.tensor import DTensor, distribute_tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl.trainer.base_trainer import _BaseTrainer

from .advantage import GroupBaseline, group_baselines
from .collator import SRUMDataCollator, group_key
from .flow import add_noise, sample_timesteps
from .loss import nft_loss, srum_loss
from .metrics import StepMetrics
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


def reward_maps_by_group(
    collator: SRUMDataCollator, dataset: Dataset, name: str = "dataset"
) -> dict[str, list[torch.Tensor]]:
    """The token reward map of every row of a rollout dataset, grouped by prompt, as `collator` builds them."""
    # The stored latents are not needed for the maps: leave them on disk.
    rows = dataset.remove_columns([c for c in ("latents",) if c in dataset.column_names])
    maps: dict[str, list[torch.Tensor]] = defaultdict(list)
    for row in tqdm(rows, desc=f"{name}: reward maps", unit="row", leave=False):
        maps[group_key(row)].append(collator.reward_map(row))
    return dict(maps)


def apply_peft(
    model: PreTrainedModel, peft_config: PeftConfig, seed: int, activation_checkpointing: bool = False
) -> PeftModel:
    """Wrap a unified model in a PEFT adapter as SRUM trains it: targets default to the model's generation-only
    preset and the task type is cleared (an image generator is not a causal LM, which TRL's defaults assume).

    The adapter's random initialisation is drawn from `seed` alone, so a resumed run rebuilds the same adapter.
    """
    if isinstance(model, PeftModel):
        raise ValueError("model is already a PeftModel; pass it without peft_config")
    peft_config = copy.copy(peft_config)
    if peft_config.task_type is not None:
        logger.warning(
            f"peft_config.task_type={peft_config.task_type!r} is for language models; using None for an image generator"
        )
        peft_config.task_type = None
    if getattr(peft_config, "target_modules", None) is None:
        peft_config.target_modules = model.generation_lora_target_modules
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(model, peft_config)
    if activation_checkpointing:
        model.enable_input_require_grads()
    return model


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
            advantage_clip=args.advantage_clip,
        )
        if args.loss_type == "nft":
            collator.baselines = self._group_baselines(
                collator, {"train_dataset": train_dataset, "eval_dataset": eval_dataset}
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
        # The negative-aware loss compares the trained model with the "old" model: the one this trainer starts from.
        self._old_parameters: dict[str, torch.Tensor] = {}
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self.logging_step_offset = 0

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        # Before a checkpoint is resumed: the old model is the one training started from (in rounds, the round's start).
        if self.args.loss_type == "nft" and not self._old_parameters:
            self.refresh_old_model()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def refresh_old_model(self) -> None:
        """Take the model's current trainable weights as the "old" model of the negative-aware loss.

        `train` does it when it starts; a custom loop that calls `training_step` itself calls it at the points where
        the old model should catch up (e.g. every round).
        """
        unwrapped = self.accelerator.unwrap_model(self.model)
        self._old_parameters = {
            name: parameter.detach().clone()
            for name, parameter in unwrapped.named_parameters()
            if parameter.requires_grad
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
            return apply_peft(model, peft_config, args.seed, args.activation_checkpointing)
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

    @staticmethod
    def _group_baselines(collator: SRUMDataCollator, datasets: dict[str, Dataset | None]) -> dict[str, GroupBaseline]:
        """The baseline of every prompt group of the datasets (`trl_srum.advantage`), for the negative-aware loss.

        Raises:
            ValueError: when no prompt of a dataset has two candidates (nothing to compare), or when two datasets
                share a prompt id.
        """
        baselines: dict[str, GroupBaseline] = {}
        for name, dataset in datasets.items():
            if dataset is None:
                continue
            groups = group_baselines(reward_maps_by_group(collator, dataset, name))
            if max(baseline.size for baseline in groups.values()) < 2:
                raise ValueError(
                    f"loss_type='nft' compares the candidates of each prompt, but every prompt of {name} has one: "
                    "draw several per prompt (RolloutConfig.num_candidates; 8 recommended)"
                )
            shared = sorted(baselines.keys() & groups.keys())
            if shared:
                raise ValueError(f"{name} shares prompt ids with another dataset ({shared[:5]}); give them their own")
            mixed = sum(baseline.mixed for baseline in groups.values())
            logger.info(f"{name}: {len(groups)} prompt groups, {mixed} with mixed rewards (the ones that teach)")
            baselines.update(groups)
        return baselines

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["row_id", *REQUIRED_COLUMNS, "prompt_id", "latents", "latent_grid", "status"]

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
        # The no-grad forwards come first: the old model's forward swaps weights in place, which must not happen
        # between the trained forward and its backward.
        v_old = self._old_velocity(unwrapped, flow_inputs) if args.loss_type == "nft" else None
        v_ref = self._reference_velocity(unwrapped, flow_inputs) if args.constraint == "reference" else None
        velocity = model(**flow_inputs).velocity

        token_rewards = torch.cat(inputs["token_rewards"])
        reference_weight = args.reference_weight if args.constraint == "reference" else 0.0
        if args.loss_type == "nft":
            token_weights = torch.cat(inputs["token_weights"])
            loss, loss_metrics = nft_loss(
                velocity,
                v_old,
                torch.cat(noises),
                torch.cat(latents),
                token_weights.to(device),
                beta=args.nft_beta,
                reference_weight=reference_weight,
                v_ref=v_ref,
            )
        else:
            loss, loss_metrics = srum_loss(
                velocity,
                torch.cat(noises),
                torch.cat(latents),
                token_rewards.to(device),
                anchor_weight=args.lambda_constraint if args.constraint == "self" else 0.0,
                latents_anchor=torch.cat([a.to(device, torch.float32) for a in anchors]),
                reference_weight=reference_weight,
                v_ref=v_ref,
                repulsion_margin=args.repulsion_margin,
            )
        if not math.isfinite(loss_metrics["loss"]):
            raise FloatingPointError(f"non-finite SRUM loss {loss_metrics} on rollout rows {inputs['row_ids']}")

        # Batch statistics come from the collator's CPU tensors: no device syncs.
        metrics = StepMetrics()
        for name, value in loss_metrics.items():
            metrics.add(name, value)
        metrics.add_moments("reward", token_rewards)
        metrics.add_moments(
            "global_score", torch.tensor([g for g in inputs["global_scores"] if g is not None]), spread=False
        )
        for name, value in inputs["reward_stats"].items():
            metrics.add(f"reward_map/{name}", value, "sum")
        if args.loss_type == "nft":
            # How much of the batch is pushed toward its target (w > ½) or away from it (w < ½).
            metrics.add("advantage/positive_fraction", (token_weights > 0.5).double().mean().item())
            metrics.add("advantage/negative_fraction", (token_weights < 0.5).double().mean().item())
        metrics.add("timestep/mean", timesteps.mean().item())
        metrics.add("text_dropped", sum(p is None for p in prompts) / len(prompts))
        for key, value in metrics.reduce(self.accelerator.gather, self.accelerator.device).items():
            self._metrics[mode][key].append(value)
        return (loss, velocity) if return_outputs else loss

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

    @torch.no_grad()
    def _old_velocity(self, unwrapped: torch.nn.Module, flow_inputs: dict[str, Any]) -> torch.Tensor:
        """v_old: the model as it was when this trainer was built (the start of a round), on the same inputs.

        Only the trainable parameters can have changed since, so they alone are swapped for their snapshot for one
        forward and put back: one copy of the trainable weights (an adapter under PEFT) instead of a second model.
        The module stays in its training mode: bitsandbytes on CPU repacks a 4-bit layer on an eval-mode no-grad
        forward, after which training through it fails.
        """
        parameters = dict(unwrapped.named_parameters())
        current = {}
        for name, old in self._old_parameters.items():
            parameter = parameters[name]
            if isinstance(parameter, DTensor) and not isinstance(old, DTensor):
                # FSDP2 shards the parameters when training starts; shard the snapshot the same way, once.
                old = self._old_parameters[name] = distribute_tensor(
                    old.to(parameter.device), parameter.device_mesh, parameter.placements
                )
            current[name] = parameter.detach().clone()
            parameter.copy_(old)
        try:
            return unwrapped(**flow_inputs).velocity
        finally:
            for name, value in current.items():
                parameters[name].copy_(value)

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
        # Each round of `trl_srum.pipeline` has a trainer of its own: shifted by the steps of the rounds before, the
        # logged steps (log history, tensorboard, wandb) continue one another instead of restarting at 0.
        self.state.global_step += self.logging_step_offset
        try:
            super().log({**logs, **metrics}, start_time)
        finally:
            self.state.global_step -= self.logging_step_offset
        self._metrics[mode].clear()

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        rounds: list[dict[str, Any]] | None = None,
        image_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write `output_dir/README.md`: an SRUM card (base model, settings, data, metrics, samples, and the
        statistics of each round when `trl_srum.pipeline` trained it in rounds)."""
        if not self.is_world_process_zero():
            return
        if image_size is None:
            image_size = self.train_dataset[0]["image"].size if self.train_dataset is not None else (1024, 1024)
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
            image_size=image_size,
            rounds=rounds,
        )

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        if self.args.hub_model_id is None:
            model_name = os.path.basename(os.path.normpath(self.args.output_dir))
        else:
            model_name = self.args.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name)
        super()._save_checkpoint(model, trial)
