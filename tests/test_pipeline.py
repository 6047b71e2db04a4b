"""SRUM in rounds (`trl_srum.pipeline`): fresh rollouts each round, one adapter through every round, resuming at any
point, and what a user watches (tensorboard images and scalars, the model card)."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import BitsAndBytesConfig, TrainerCallback

from trl_srum import SRUMConfig
from trl_srum.judge.scoring import SelfJudge
from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.tiny import tiny_bagel_model
from trl_srum.pipeline import RoundsConfig, SRUMPipeline, round_prompts
from trl_srum.rollout import PromptRecord

from .rollout.utils import rollout_config
from .test_srum_trainer import RecordingHubApi


PROMPTS = [
    PromptRecord("p0", "a red circle", "color"),
    PromptRecord("p1", "two blue squares", "numeracy"),
    PromptRecord("p2", "a green triangle above a yellow circle", "spatial"),
]


def training_config(output_dir: Path, **overrides) -> SRUMConfig:
    settings = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": False,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "num_train_epochs": 1,  # each round's samples are used once
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "disable_tqdm": True,
        "loss_type": "nft",
    }
    settings.update(overrides)
    return SRUMConfig(**settings)


def pipeline(output_dir: Path, model=None, *, rounds=2, peft=True, callbacks=(), judge=None, **overrides):
    return SRUMPipeline(
        model if model is not None else tiny_bagel_model(seed=0),
        PROMPTS,
        args=training_config(output_dir, **overrides),
        rollout_config=rollout_config(output_dir / "unused", num_candidates=2, rollout_batch_size=3),
        rounds=RoundsConfig(num_rounds=rounds, prompts_per_round=2, validation_prompts=2, overlay_images=2),
        peft_config=LoraConfig(r=4, lora_alpha=8) if peft else None,
        callbacks=callbacks,
        judge=judge,
    )


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def test_rounds_train_one_adapter_on_a_frozen_base_and_lay_out_their_outputs(tmp_path):
    base = {name: p.detach().clone() for name, p in tiny_bagel_model(seed=0).named_parameters()}
    run = pipeline(tmp_path / "run")
    model = run.run()
    run.save()

    assert isinstance(model, PeftModel) and list(model.peft_config) == ["default"]
    for name, parameter in model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(parameter, base[name.replace(".base_layer", "")]), f"{name} trained"
    out = tmp_path / "run"
    for index in range(2):
        round_dir = out / f"round-{index}"
        assert (round_dir / "rollouts" / "dataset").is_dir() and (
            round_dir / "model" / "adapter_config.json"
        ).is_file()
        summary = json.loads((round_dir / "round.json").read_text())
        assert summary["round"] == index and summary["rows"] == 4 and summary["steps"] == 1  # one pass of 4 rows
        assert 0.0 <= summary["mixed_group_fraction"] <= 1.0
        # Only generation weights train (a LoRA on the generation expert): the judge cannot drift.
        assert summary["understanding_drift_kl"] == 0.0
    # Fresh samples each round: other prompts (a window of 2 of 3) and other seeds.
    first, second = (
        json.loads((out / f"round-{i}" / "rollouts" / "rollout_manifest.json").read_text()) for i in (0, 1)
    )
    assert first["config"]["rollout_seed"] != second["config"]["rollout_seed"]
    final, last_round = adapter(out), adapter(out / "round-1" / "model")
    assert final.keys() == last_round.keys() and all(torch.equal(final[k], last_round[k]) for k in final)
    card = (out / "README.md").read_text()
    assert "## Rounds" in card and "| loss_type | nft |" in card.replace("`", "")
    assert card.count("\n| 0 | 4 | 1 |") == 1 and card.count("\n| 1 | 4 | 1 |") == 1


def test_the_negative_aware_loss_needs_several_candidates(tmp_path):
    with pytest.raises(ValueError, match="num_candidates >= 2"):
        SRUMPipeline(
            tiny_bagel_model(seed=0),
            PROMPTS,
            args=training_config(tmp_path),
            rollout_config=rollout_config(tmp_path, num_candidates=1),
        )
    with pytest.raises(ValueError, match="num_rounds must be 1"):
        RoundsConfig(num_rounds=2, rollout_dataset="somewhere")


def test_round_prompts_visit_every_prompt_before_repeating_one():
    prompts = [PromptRecord(str(i), f"prompt {i}") for i in range(5)]
    rounds = [round_prompts(prompts, r, 2, seed=0) for r in range(5)]  # 10 draws: every prompt twice
    drawn = [p.prompt_id for chosen in rounds for p in chosen]
    assert sorted(drawn[:5]) == sorted(drawn[5:]) == ["0", "1", "2", "3", "4"]
    assert round_prompts(prompts, 3, None, seed=0) == prompts


class Interrupt(TrainerCallback):
    """Stops the process (as a kill would) at one step of one round's training, after its checkpoint is saved."""

    def __init__(self, round_dir: Path, step: int):
        self.round_dir, self.step = round_dir, step

    def on_save(self, args, state, control, **kwargs):
        if Path(args.output_dir) == self.round_dir and state.global_step == self.step:
            raise KeyboardInterrupt


def interrupt_judging_after(monkeypatch, calls: int) -> None:
    """Stop the process in the middle of a stage 1, after `calls` judgements (the judge itself is unchanged, so the
    resumed run's settings are those of the killed one)."""
    judge = SelfJudge.judge
    remaining = [calls]

    def judge_or_stop(self, *args, **kwargs):
        remaining[0] -= 1
        if remaining[0] < 0:
            raise KeyboardInterrupt
        return judge(self, *args, **kwargs)

    monkeypatch.setattr(SelfJudge, "judge", judge_or_stop)


@pytest.mark.parametrize("where", ["stage 1", "stage 2"])
def test_a_run_killed_in_round_two_resumes_there_and_ends_as_an_uninterrupted_one(tmp_path, where, monkeypatch):
    settings = {"rounds": 2, "per_device_train_batch_size": 2, "save_strategy": "steps", "save_steps": 1}
    reference = pipeline(tmp_path / "reference", **settings)
    reference.run()

    out = tmp_path / "killed"
    with monkeypatch.context() as patch:
        if where == "stage 1":  # 4 judgements of round 0, then 2 of round 1's 4
            interrupt_judging_after(patch, calls=6)
            interrupted = pipeline(out, **settings)
        else:
            interrupted = pipeline(out, callbacks=[Interrupt(out / "round-1", step=1)], **settings)
        with pytest.raises(KeyboardInterrupt):
            interrupted.run()
    assert (out / "round-0" / "round.json").is_file() and not (out / "round-1" / "round.json").exists()

    resumed = pipeline(out, **settings)
    resumed.run()
    expected, got = adapter(tmp_path / "reference" / "round-1" / "model"), adapter(out / "round-1" / "model")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)

    # The resumed round logged the losses of the uninterrupted one, at the same (continuing) steps.
    def losses(run):
        return {e["step"]: e["loss"] for e in run.trainer.state.log_history if "loss" in e}

    assert losses(resumed) == pytest.approx(losses(reference), abs=1e-6)


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    pipeline(tmp_path / "run", rounds=1).run()
    with pytest.raises(ValueError, match="learning_rate: 0.01 then, 0.001 now"):
        pipeline(tmp_path / "run", rounds=1, learning_rate=1e-3).run()


def test_images_and_round_statistics_reach_tensorboard(tmp_path):
    run = pipeline(tmp_path / "run", report_to="tensorboard", logging_steps=1)
    run.rounds.validation_every = 1
    run.run()
    events = EventAccumulator(str(tmp_path / "run" / "runs"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert {"validation/samples", "validation/base", "validation/round-1", "rollouts/reward_maps"} <= images
    # Before training, at every round's end and every log: the same fixed prompts and seeds.
    steps = [event.step for event in events.Images("validation/samples")]
    assert steps[0] == 0 and len(steps) >= 4
    scalars = set(events.Tags()["scalars"])
    assert {"round/reward_mean", "round/mixed_group_fraction", "train/loss"} <= scalars
    # The training loss of round 2 is logged after the steps of round 1, not on top of them.
    loss_steps = [event.step for event in events.Scalars("train/loss")]
    assert loss_steps == sorted(loss_steps) and len(set(loss_steps)) == len(loss_steps) == 2


def test_an_8bit_base_trains_through_rounds(tmp_path):
    tiny_bagel_model(seed=0).save_pretrained(tmp_path / "base")
    model = BagelModel.from_pretrained(tmp_path / "base", quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    run = pipeline(tmp_path / "run", model)
    run.run()
    assert json.loads((tmp_path / "run" / "round-1" / "round.json").read_text())["steps"] == 1


def test_only_the_final_adapter_and_its_card_with_the_rounds_go_to_the_hub(tmp_path, monkeypatch):
    hub = RecordingHubApi(tmp_path / "hub")
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: hub)
    run = pipeline(tmp_path / "run", push_to_hub=True, hub_model_id="srum-rounds")
    run.run()
    assert not (tmp_path / "hub").exists()  # the rounds' trainers push nothing
    run.save(dataset_name="user/shapes-rollouts")
    uploaded = tmp_path / "hub" / "user" / "srum-rounds"
    assert (uploaded / "adapter_model.safetensors").is_file()
    uploaded_names = sorted(path.name for path in uploaded.iterdir())
    assert not any(name.startswith(("round-", "runs", "pipeline")) for name in uploaded_names), uploaded_names
    card = (uploaded / "README.md").read_text()
    assert "## Rounds" in card and "user/shapes-rollouts" in card
