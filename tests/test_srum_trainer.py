import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import BitsAndBytesConfig

from trl_srum import SRUMConfig, SRUMTrainer
from trl_srum.models.bagel.tiny import tiny_bagel_model

from .helpers import tiny_rollout_dataset


def make_config(tmp_path: Path, **kwargs) -> SRUMConfig:
    settings = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 8,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "disable_tqdm": True,
    }
    settings.update(kwargs)
    return SRUMConfig(**settings)


@pytest.fixture(scope="module")
def dataset():
    return tiny_rollout_dataset(tiny_bagel_model(seed=0), num_rows=8)


@pytest.fixture(scope="module")
def toy_dataset():
    """Four distinct prompts: at high noise the model must recall each prompt's latent, which a few steps can learn."""
    return tiny_rollout_dataset(tiny_bagel_model(seed=0), num_rows=4)


# The toy task trains only at t in [0.9, 1] without text dropout, where the flow target is learnable in a few steps.
TOY = {"timestep_min": 0.9, "text_dropout": 0.0, "learning_rate": 1e-2}
# LoRA on the generation expert of a 2-layer, 32-wide model learns slowly; the latent adapters are trained fully.
TOY_LORA = LoraConfig(r=8, lora_alpha=16, modules_to_save=["llm2vae", "vae2llm"])


def train_and_evaluate(trainer: SRUMTrainer) -> tuple[float, float]:
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    return before, after


def test_full_generation_training_reduces_the_loss_and_keeps_the_judge(tmp_path, toy_dataset):
    model = tiny_bagel_model(seed=0)
    understanding = {n: p.detach().clone() for n, p in model.named_parameters() if "_moe_gen" not in n}
    trainer = SRUMTrainer(
        model, make_config(tmp_path, max_steps=10, **TOY), train_dataset=toy_dataset, eval_dataset=toy_dataset
    )
    before, after = train_and_evaluate(trainer)
    assert after < 0.85 * before
    history = [entry for entry in trainer.state.log_history if "loss_reward" in entry]
    assert history and all(math.isfinite(entry["loss_anchor"]) for entry in history)
    assert {"reward/mean", "reward/min", "global_score/mean", "reward_map/skipped_boxes"} <= set(history[0])
    generation = set(model.generation_parameter_names())
    for name, parameter in model.named_parameters():
        if name in understanding and name not in generation:
            assert torch.equal(parameter, understanding[name]), f"{name} changed"


def test_lora_training_reduces_the_loss_and_targets_only_generation(tmp_path, toy_dataset):
    # CAUSAL_LM is TRL's default task type; the trainer must not wrap an image model as a causal LM.
    peft_config = LoraConfig(r=8, lora_alpha=16, modules_to_save=["llm2vae", "vae2llm"], task_type="CAUSAL_LM")
    trainer = SRUMTrainer(
        tiny_bagel_model(seed=0),
        make_config(tmp_path, max_steps=20, **TOY),
        train_dataset=toy_dataset,
        eval_dataset=toy_dataset,
        peft_config=peft_config,
    )
    assert isinstance(trainer.model, PeftModel) and trainer.model.peft_config["default"].task_type is None
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if "lora_" in n]
    assert lora and all("_moe_gen" in n for n in lora)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    before, after = train_and_evaluate(trainer)
    assert after < 0.85 * before


def test_8bit_base_with_lora_trains(tmp_path, toy_dataset):
    tiny_bagel_model(seed=0).save_pretrained(tmp_path / "base")
    trainer = SRUMTrainer(
        str(tmp_path / "base"),
        make_config(tmp_path, max_steps=20, **TOY),
        train_dataset=toy_dataset,
        eval_dataset=toy_dataset,
        peft_config=TOY_LORA,
        quantization_config=BitsAndBytesConfig(load_in_8bit=True),
    )
    base = trainer.model.get_base_model()
    assert base.is_loaded_in_8bit
    assert type(base.language_model.model.layers[0].mlp_moe_gen.up_proj.base_layer).__name__ == "Linear8bitLt"
    before, after = train_and_evaluate(trainer)
    assert after < 0.85 * before


@pytest.mark.parametrize("use_peft", [True, False])
def test_reference_constraint_starts_at_zero_and_grows(tmp_path, dataset, use_peft):
    trainer = SRUMTrainer(
        tiny_bagel_model(seed=0),
        make_config(tmp_path, constraint="reference", reference_weight=0.5, max_steps=4),
        train_dataset=dataset,
        peft_config=LoraConfig(r=8, lora_alpha=16) if use_peft else None,
    )
    assert (trainer.ref_model is None) == use_peft
    trainer.train()
    constraints = [entry["loss_reference"] for entry in trainer.state.log_history if "loss_reference" in entry]
    # At step 0 the trained model is the reference; then it moves away from it.
    assert constraints[0] == pytest.approx(0.0, abs=1e-10)
    assert constraints[-1] > 0.0


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path, dataset):
    config = make_config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, text_dropout=0.5)
    uninterrupted = SRUMTrainer(tiny_bagel_model(seed=0), config, train_dataset=dataset)
    uninterrupted.train()
    losses = {e["step"]: e["loss"] for e in uninterrupted.state.log_history if "loss" in e}

    checkpoint = Path(config.output_dir) / "checkpoint-2"
    assert checkpoint.is_dir() and (Path(config.output_dir) / "README.md").is_file()
    resumed = SRUMTrainer(tiny_bagel_model(seed=0), config, train_dataset=dataset)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed_losses = {e["step"]: e["loss"] for e in resumed.state.log_history if "loss" in e}
    assert set(resumed_losses) >= {3, 4}
    for step in (3, 4):
        assert resumed_losses[step] == pytest.approx(losses[step], abs=1e-6, rel=0)


def test_non_finite_scores_raise_naming_the_row(tmp_path, dataset):
    broken = dataset.map(
        lambda row, i: {"global_score": float("nan") if i == 3 else row["global_score"]}, with_indices=True
    )
    trainer = SRUMTrainer(tiny_bagel_model(seed=0), make_config(tmp_path, max_steps=2), train_dataset=broken)
    with pytest.raises(ValueError, match=r"rollout row 'p3:0': global_score is nan"):
        trainer.train()


def test_failed_rows_are_dropped_and_bad_datasets_are_refused(tmp_path, dataset):
    statuses = ["ok", "judge_failed"] * 4
    mixed = dataset.map(lambda row, i: {"status": statuses[i]}, with_indices=True)
    trainer = SRUMTrainer(tiny_bagel_model(seed=0), make_config(tmp_path), train_dataset=mixed)
    assert len(trainer.train_dataset) == 4
    with pytest.raises(ValueError, match="lacks the rollout columns"):
        SRUMTrainer(tiny_bagel_model(seed=0), make_config(tmp_path), train_dataset=dataset.remove_columns("regions"))
    failed = dataset.map(lambda row: {"status": "judge_failed"})
    with pytest.raises(ValueError, match="no trainable rows"):
        SRUMTrainer(tiny_bagel_model(seed=0), make_config(tmp_path), train_dataset=failed)


def test_encoded_latents_match_the_released_recipe(tmp_path, dataset):
    # Rows without stored latents (e.g. converted from the released data) are encoded, posterior sampled.
    without_latents = dataset.map(lambda row: {"latents": None, "latent_grid": None})
    trainer = SRUMTrainer(tiny_bagel_model(seed=0), make_config(tmp_path, max_steps=2), train_dataset=without_latents)
    trainer.train()
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)
    with pytest.raises(ValueError, match="latent_source='stored'"):
        SRUMTrainer(
            tiny_bagel_model(seed=0),
            make_config(tmp_path, max_steps=1, latent_source="stored"),
            train_dataset=without_latents,
        ).train()


class RecordingHubApi:
    """A stand-in for `huggingface_hub.HfApi` that uploads into a local folder."""

    def __init__(self, root: Path):
        self.root = root

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=f"user/{repo_id}")

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        target = self.root / repo_id
        shutil.copytree(folder_path, target, ignore=shutil.ignore_patterns(*ignore_patterns), dirs_exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)


def test_push_to_hub_uploads_adapter_config_and_a_complete_card(tmp_path, dataset, monkeypatch):
    hub = RecordingHubApi(tmp_path / "hub")
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: hub)
    config = make_config(tmp_path, max_steps=2, hub_model_id="srum-tiny")
    trainer = SRUMTrainer(
        tiny_bagel_model(seed=0), config, train_dataset=dataset, peft_config=LoraConfig(r=4, lora_alpha=8)
    )
    trainer.train()
    samples = Path(config.output_dir) / "samples"
    samples.mkdir(parents=True)
    dataset[0]["image"].save(samples / "grid.png")
    trainer.push_to_hub(dataset_name="user/shapes-rollouts")

    uploaded = tmp_path / "hub" / "user" / "srum-tiny"
    assert (uploaded / "adapter_model.safetensors").is_file()
    assert (uploaded / "adapter_config.json").is_file()
    card = (uploaded / "README.md").read_text()
    for expected in (
        "library_name: peft",
        "pipeline_tag: text-to-image",
        "- srum",
        "user/shapes-rollouts",
        "## SRUM settings",
        "| `lambda_constraint` | 0.5 |",
        "| `reward_map_mode` | official |",
        "## Training metrics",
        "| loss_reward |",
        "![samples/grid.png](samples/grid.png)",
        "2510.12784",
        "PeftModel.from_pretrained",
    ):
        assert expected in card, expected
    assert (uploaded / "samples" / "grid.png").is_file()


def test_rows_without_a_global_score_are_dropped_by_default_or_trained_on_as_neutral(tmp_path, dataset):
    missing = dataset.map(lambda row, i: {"global_score": None if i < 3 else row["global_score"]}, with_indices=True)
    dropped = SRUMTrainer(tiny_bagel_model(seed=0), make_config(tmp_path, max_steps=1), train_dataset=missing)
    assert len(dropped.train_dataset) == 5 and None not in dropped.train_dataset["global_score"]

    neutral_args = make_config(tmp_path, max_steps=1, per_device_train_batch_size=8, missing_global_score="neutral")
    neutral = SRUMTrainer(tiny_bagel_model(seed=0), neutral_args, train_dataset=missing)
    assert len(neutral.train_dataset) == 8
    neutral.train()
    logged = next(entry for entry in neutral.state.log_history if "reward_map/missing_global" in entry)
    assert logged["reward_map/missing_global"] == 3

    # A dataset that reaches the collator with such a row under "drop" is an error, never a silent g = 0.
    with pytest.raises(ValueError, match="rollout row 'p0:0' has no global score"):
        dropped.data_collator([missing[0]])
    with pytest.raises(ValueError, match="missing_global_score"):
        make_config(tmp_path, missing_global_score="zero")
