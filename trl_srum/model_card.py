"""The model card SRUMTrainer writes next to every save and pushes to the Hub."""

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel

from .srum_config import SRUMConfig


TEMPLATE_PATH = Path(__file__).parent / "templates" / "srum_model_card.md"
CARD_SETTINGS = (
    "loss_type",
    "nft_beta",
    "advantage_clip",
    "constraint",
    "lambda_constraint",
    "reference_weight",
    "reward_map_mode",
    "reward_map_pooling",
    "repulsion_margin",
    "missing_global_score",
    "use_global_reward",
    "use_local_rewards",
    "timestep_sampling",
    "logit_mean",
    "logit_std",
    "timestep_shift",
    "timestep_min",
    "timestep_max",
    "text_dropout",
    "latent_source",
    "trainable_parameters",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "adam_beta2",
    "max_grad_norm",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "seed",
)
CARD_PACKAGES = ("trl-srum", "trl", "transformers", "diffusers", "peft", "accelerate", "datasets", "torch")


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


# Bookkeeping the Trainer logs that says nothing about the model.
_UNINFORMATIVE_METRICS = {
    "epoch",
    "step",
    "total_flos",
    "learning_rate",
    "grad_norm",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
}


def _final_metrics(log_history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The last logged value of every training metric (a later log overrides an earlier one)."""
    latest: dict[str, Any] = {}
    for entry in log_history:
        latest.update(
            {
                k: v
                for k, v in entry.items()
                if isinstance(v, int | float) and not k.startswith("eval_") and k not in _UNINFORMATIVE_METRICS
            }
        )
    return [(name, f"{value:.6g}") for name, value in sorted(latest.items())]


# (column title, key of a round's statistics) of the card's table of rounds
_ROUND_COLUMNS = (
    ("round", "round"),
    ("rollout rows", "rows"),
    ("steps", "steps"),
    ("reward mean", "reward_mean"),
    ("reward std", "reward_std"),
    ("global score mean", "global_score_mean"),
    ("mixed prompt groups", "mixed_group_fraction"),
    ("understanding drift (KL)", "understanding_drift_kl"),
)


def _round_rows(rounds: list[dict[str, Any]]) -> list[list[str]]:
    """One row of formatted cells per round; "–" where a round has no such statistic."""

    def cell(value: Any) -> str:
        return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    return [[cell(summary.get(key)) for _, key in _ROUND_COLUMNS] for summary in rounds]


def write_model_card(
    output_dir: str,
    *,
    model: torch.nn.Module,
    args: SRUMConfig,
    log_history: list[dict[str, Any]],
    model_name: str,
    dataset_name: str | None,
    hub_model_id: str | None,
    tags: list[str],
    citation: str,
    image_size: tuple[int, int] = (1024, 1024),
    rounds: list[dict[str, Any]] | None = None,
) -> Path:
    """Render the SRUM card into `output_dir/README.md` and return its path.

    Sample images are the PNG files under `output_dir/samples/`; evaluation results come from
    `output_dir/eval_results.json` when present; `rounds` are the per-round statistics of `trl_srum.pipeline`.
    """
    is_adapter = isinstance(model, PeftModel)
    base = model.get_base_model() if is_adapter else model
    base_model = getattr(base.config, "_name_or_path", None) or None
    if base_model is not None and os.path.isdir(base_model):
        base_model = None  # a local path means nothing on the Hub
    output = Path(output_dir)
    eval_path = output / "eval_results.json"
    samples = sorted(p.relative_to(output).as_posix() for p in (output / "samples").glob("*.png"))
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_name] if dataset_name else None,
        library_name="peft" if is_adapter else "transformers",
        pipeline_tag="text-to-image",
        model_name=model_name,
        tags=tags,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        base_model=base_model,
        repo_id=hub_model_id or model_name,
        dataset_name=dataset_name,
        is_adapter=is_adapter,
        adapter_type=model.peft_config["default"].peft_type.value if is_adapter else "",
        image_width=image_size[0],
        image_height=image_size[1],
        paper_title="SRUM: Fine-Grained Self-Rewarding for Unified Multimodal Models",
        paper_id="2510.12784",
        # Enums (e.g. the scheduler type) print as their value.
        settings=[(name, getattr(getattr(args, name), "value", getattr(args, name))) for name in CARD_SETTINGS],
        metrics=_final_metrics(log_history),
        eval_results=json.dumps(json.loads(eval_path.read_text()), indent=2) if eval_path.is_file() else None,
        samples=samples,
        versions=[(name, _package_version(name)) for name in CARD_PACKAGES],
        citation=citation,
        rounds=_round_rows(rounds or []),
        round_columns=[title for title, _ in _ROUND_COLUMNS],
    )
    output.mkdir(parents=True, exist_ok=True)
    path = output / "README.md"
    card.save(path)
    return path
