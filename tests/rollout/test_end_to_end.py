"""Stage 1 then stage 2: the dataset a rollout writes is one `SRUMTrainer` trains on, for BAGEL and BLIP3o."""

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk

from trl_srum import SRUMConfig, SRUMTrainer
from trl_srum.models.bagel.tiny import tiny_bagel_model
from trl_srum.models.blip3o.tiny import tiny_blip3o
from trl_srum.rollout import ROLLOUT_FEATURES, run_rollouts
from trl_srum.rollout.schema import check_scores_finite

from .utils import PROMPTS, all_boxes_inside, assert_same_rows, rollout_config, scripted_bagel


def train_config(tmp_path: Path, **kwargs) -> SRUMConfig:
    settings = {
        "output_dir": str(tmp_path / "train"),
        "use_cpu": True,
        "bf16": False,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "disable_tqdm": True,
    }
    settings.update(kwargs)
    return SRUMConfig(**settings)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def check_written(dataset, rollout_dir: Path, image_size: tuple[int, int]) -> None:
    """The dataset on disk, the gallery and the summary agree with the returned rows."""
    assert dataset.features == ROLLOUT_FEATURES
    assert_same_rows(load_from_disk(str(rollout_dir / "dataset")), dataset)
    assert dataset["row_id"] == [f"{record.prompt_id}:0" for record in PROMPTS]
    ok = [row for row in dataset if row["status"] == "ok"]
    assert ok
    for row in dataset:
        check_scores_finite(row)
        assert row["image"].size == image_size
        assert all_boxes_inside([region["bbox"] for region in row["regions"]], image_size)
    summary = json.loads((rollout_dir / "summary.json").read_text())
    assert summary["rows"] == len(dataset) and summary["status"]["ok"] == len(ok)
    assert sum(summary["global_score_histogram"]) == sum(row["global_score"] is not None for row in dataset)
    gallery = sorted(path.name for path in (rollout_dir / "gallery").glob("*.png"))
    assert gallery and len(gallery) == min(4, len(ok))


def train_briefly(model, dataset, tmp_path: Path) -> dict[str, torch.Tensor]:
    before = snapshot(model)
    trainer = SRUMTrainer(model, train_config(tmp_path), train_dataset=dataset)
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss_reward" in entry]
    assert len(history) == 2 and all(math.isfinite(entry["loss"]) for entry in history)
    return before


@pytest.mark.parametrize("judge_mode", ["text", "prob"])
def test_bagel_rollouts_with_grounding_train(tmp_path, judge_mode):
    # The scripted writer answers the concise format (grounding and text judgements); scores of `prob` come from
    # the model's own answer probabilities.
    model = scripted_bagel(supports_grounding=True, prompt_style="concise")
    config = rollout_config(
        tmp_path / "rollouts",
        image_width=32,
        image_height=32,
        proposer="grounding",
        judge_mode=judge_mode,
        think=True,
        generation_kwargs={"num_timesteps": 2, "max_think_tokens": 4},
    )
    dataset = run_rollouts(model, PROMPTS, config)
    check_written(dataset, tmp_path / "rollouts", (32, 32))
    assert all(row["status"] == "ok" for row in dataset)
    assert all(isinstance(row["reasoning"], str) for row in dataset)
    regions = [region for row in dataset for region in row["regions"]]
    # one grounded box per object phrase ("... above a yellow circle" has two), labelled with its phrase
    assert [len(row["regions"]) for row in dataset] == [1, 1, 2, 1]
    assert dataset[2]["regions"][1]["label"] == "a yellow circle"
    assert {region["source"] for region in regions} == {"grounding"}
    if judge_mode == "text":
        assert {row["global_score"] for row in dataset} <= {-0.5, 0.5}
        assert [region["score"] for region in dataset[2]["regions"]] == [1.0, -0.5]
        assert dataset[0]["global_judge_output"].startswith("score")
    else:
        assert all(row["global_judge_output"] == "" for row in dataset)
        scores = [region["score"] for region in regions] + list(dataset["global_score"])
        assert all(-1.0 < score < 1.0 for score in scores) and len(set(scores)) > 1

    generation = set(model.generation_parameter_names())
    before = train_briefly(model, dataset, tmp_path)
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed and changed <= generation


def test_bagel_rollouts_with_component_proposals_train(tmp_path):
    model = tiny_bagel_model(seed=0)
    config = rollout_config(tmp_path / "rollouts", proposer="components", judge_mode="prob", num_candidates=2)
    dataset = run_rollouts(model, PROMPTS, config)
    assert dataset["row_id"] == [f"{record.prompt_id}:{k}" for record in PROMPTS for k in range(2)]
    # the candidates of a prompt are different draws
    assert dataset[0]["latents"] != dataset[1]["latents"]
    assert sum(len(regions) for regions in dataset["regions"]) > 0
    assert {region["source"] for regions in dataset["regions"] for region in regions} == {"components"}
    assert all(row["status"] == "ok" for row in dataset)
    before = train_briefly(model, dataset, tmp_path)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_blip3o_rollouts_train_only_the_generator(tmp_path):
    model = tiny_blip3o(seed=0)
    config = rollout_config(
        tmp_path / "rollouts",
        image_width=32,
        image_height=32,
        proposer="components",
        judge_mode="prob",
        max_regions=3,
        generation_kwargs={"num_inference_steps": 2, "decoder_num_inference_steps": 2},
    )
    dataset = run_rollouts(model, PROMPTS, config)
    check_written(dataset, tmp_path / "rollouts", (32, 32))
    assert all(row["latent_grid"] == [8, 8] and len(row["latents"]) == 64 for row in dataset)
    assert all(len(row["latents"][0]) == 32 for row in dataset)
    assert all(0 < len(row["regions"]) <= 3 for row in dataset)

    generation = set(model.generation_parameter_names())
    before = train_briefly(model, dataset, tmp_path)
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed and changed <= generation
