"""`SRUMTrainer` with the negative-aware, group-centred loss (`loss_type="nft"`)."""

import math

import pytest
import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig

from trl_srum import SRUMConfig, SRUMTrainer
from trl_srum.models.bagel.tiny import tiny_bagel_model

from .helpers import tiny_rollout_dataset
from .test_srum_trainer import TOY, make_config


@pytest.fixture(scope="module")
def groups():
    """Two prompts with four candidates each, every candidate scored differently."""
    return tiny_rollout_dataset(tiny_bagel_model(seed=0), num_rows=8, candidates_per_prompt=4)


def nft_config(tmp_path, **kwargs) -> SRUMConfig:
    return make_config(tmp_path, loss_type="nft", **kwargs)


def test_contradictory_settings_fail_at_construction(tmp_path, groups):
    alone = tiny_rollout_dataset(tiny_bagel_model(seed=0), num_rows=4)  # one candidate per prompt
    with pytest.raises(ValueError, match="every prompt of train_dataset has one"):
        SRUMTrainer(tiny_bagel_model(seed=0), nft_config(tmp_path), train_dataset=alone)
    with pytest.raises(ValueError, match="the self anchor is an imitation term"):
        nft_config(tmp_path, constraint="self")
    with pytest.raises(ValueError, match="nft_beta and advantage_clip must be > 0"):
        nft_config(tmp_path, nft_beta=0.0)
    assert nft_config(tmp_path).constraint == "none" and make_config(tmp_path).constraint == "self"


def test_candidates_that_score_alike_teach_nothing(tmp_path, groups):
    # Every candidate of a prompt gets the same scores: all weights are ½ and the model is exactly where it started.
    alike = groups.map(lambda row: {"global_score": 0.3, "regions": [dict(r, score=0.5) for r in row["regions"]]})
    model = tiny_bagel_model(seed=0)
    initial = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    trainer = SRUMTrainer(model, nft_config(tmp_path, max_steps=3), train_dataset=alike)
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "advantage/positive_fraction" in entry]
    assert history and all(e["advantage/positive_fraction"] == e["advantage/negative_fraction"] == 0 for e in history)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, initial[name]), name


def plain_flow_loss(model, dataset, tmp_path) -> float:
    """Flow-matching error of `model` on `dataset` (uniform weights, no anchor), with fixed noise."""
    args = make_config(
        tmp_path / "probe", use_global_reward=False, use_local_rewards=False, lambda_constraint=0.0, **TOY
    )
    return SRUMTrainer(model, args, eval_dataset=dataset, train_dataset=dataset).evaluate()["eval_loss"]


def test_training_moves_toward_better_candidates_and_away_from_worse(tmp_path):
    # Two prompts, two candidates each: one the judge liked (g = +1), one it did not (g = -1). At high noise the
    # model must recall a latent per prompt, which a few steps can learn.
    data = tiny_rollout_dataset(tiny_bagel_model(seed=0), num_rows=4, candidates_per_prompt=2)
    data = data.map(lambda row: {"global_score": 1.0 if row["candidate_index"] == 0 else -1.0, "regions": []})
    good = data.filter(lambda row: row["global_score"] > 0)
    bad = data.filter(lambda row: row["global_score"] < 0)
    model = tiny_bagel_model(seed=0)
    before = plain_flow_loss(model, good, tmp_path), plain_flow_loss(model, bad, tmp_path)
    SRUMTrainer(model, nft_config(tmp_path, max_steps=20, **TOY), train_dataset=data).train()
    after = plain_flow_loss(model, good, tmp_path), plain_flow_loss(model, bad, tmp_path)
    # The liked samples get likelier and the others less likely. The loss's optimum moves the old model by the
    # difference between them rather than fitting the liked ones outright, so the pull is the gentler side here.
    assert after[0] < before[0] and after[1] > 1.05 * before[1], (before, after)
    assert after[1] - after[0] > 1.5 * (before[1] - before[0]), (before, after)


@pytest.mark.parametrize("quantization", [None, "8bit", "4bit"])
def test_lora_on_full_and_quantized_bases_trains(tmp_path, groups, quantization):
    tiny_bagel_model(seed=0).save_pretrained(tmp_path / "base")
    quantization_config = {
        None: None,
        "8bit": BitsAndBytesConfig(load_in_8bit=True),
        "4bit": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
    }[quantization]
    trainer = SRUMTrainer(
        str(tmp_path / "base"),
        nft_config(tmp_path, max_steps=3, learning_rate=1e-2),
        train_dataset=groups,
        peft_config=LoraConfig(r=4, lora_alpha=8),
        quantization_config=quantization_config,
    )
    lora_b = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    # No evaluation first: on CPU, bitsandbytes breaks training through a 4-bit layer after an eval no-grad forward.
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    changed = [n for n, p in trainer.model.named_parameters() if n in lora_b and not torch.equal(p, lora_b[n])]
    assert changed
