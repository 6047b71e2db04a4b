"""The stage-1 runner on bad input: every failure is recorded on its own row and the run goes on; configuration
errors fail at once; the relevance filter; resuming only with the settings the shards were written with."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from trl_srum.judge.parsing import parse_global_score
from trl_srum.judge.scoring import SelfJudge
from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.tiny import tiny_bagel_model
from trl_srum.rollout import PromptRecord, RolloutRunner, candidate_seed, run_rollouts
from trl_srum.rollout.proposals import RegionProposal

from .utils import ScriptedJudgeBagel, assert_same_rows, by_row_id, pixels, rollout_config, tiny_bagel_of


BOXES = ((0.0, 0.0, 8.0, 8.0), (8.0, 0.0, 16.0, 8.0), (0.0, 8.0, 16.0, 16.0), (4.0, 4.0, 12.0, 12.0))


def fixed_boxes(image: Image.Image, prompt: str) -> list[RegionProposal]:
    return [RegionProposal(box, f"part {i}", 1.0 - i / 10, "fixed") for i, box in enumerate(BOXES)]


@pytest.fixture(scope="module")
def model() -> BagelModel:
    return tiny_bagel_model(seed=0)


def test_candidate_seeds_depend_only_on_the_base_seed_the_prompt_and_the_candidate():
    seeds = {candidate_seed(base, prompt, k) for base in (0, 1) for prompt in ("p0", "p1") for k in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert candidate_seed(3, "p7", 2) == candidate_seed(3, "p7", 2)


class FailingGeneration(BagelModel):
    """Generation raises for any batch holding a prompt that mentions a unicorn."""

    def generate_images(self, prompts, **kwargs):
        if any("unicorn" in prompt for prompt in prompts):
            raise RuntimeError("cannot draw a unicorn")
        return super().generate_images(prompts, **kwargs)


def test_each_failure_is_recorded_on_its_row_and_the_run_goes_on(tmp_path):
    model = tiny_bagel_of(FailingGeneration)
    prompts = [
        PromptRecord("good-circle", "a red circle"),
        PromptRecord("unicorn", "a unicorn"),  # shares its batch with good-circle
        PromptRecord("empty", ""),
        PromptRecord("good-square", "two blue squares"),
        PromptRecord("blank", "  \t "),
    ]

    def proposer(image, prompt):
        if "circle" in prompt:
            raise RuntimeError("proposer exploded")
        return []  # proposes nothing

    config = rollout_config(tmp_path / "run", rollout_batch_size=2)
    dataset = RolloutRunner(model, config, proposer=proposer).run(prompts)
    rows = by_row_id(dataset)
    assert list(rows) == ["good-circle:0", "unicorn:0", "empty:0", "good-square:0", "blank:0"]
    assert {k: r["status"] for k, r in rows.items()} == {
        "good-circle:0": "ok",
        "unicorn:0": "generation_failed",
        "empty:0": "invalid_prompt",
        "good-square:0": "ok",
        "blank:0": "invalid_prompt",
    }
    assert rows["good-circle:0"]["error"] == "proposer failed: proposer exploded"
    assert rows["unicorn:0"]["error"] == "generation failed: cannot draw a unicorn"
    assert rows["empty:0"]["error"] == rows["blank:0"]["error"] == "empty prompt"
    assert rows["good-square:0"]["error"] == "no region proposals"
    for key in ("good-circle:0", "good-square:0"):  # judged globally, without regions
        assert rows[key]["regions"] == [] and -1.0 <= rows[key]["global_score"] <= 1.0
        assert rows[key]["image"].size == (16, 16) and len(rows[key]["latents"]) == 16
    for key in ("unicorn:0", "empty:0", "blank:0"):
        assert rows[key]["image"] is None and rows[key]["latents"] is None and rows[key]["global_score"] is None
        assert rows[key]["seed"] == candidate_seed(0, key.split(":")[0], 0)

    # The batch that held the unicorn was redrawn prompt by prompt: the good prompt keeps its own seed's image.
    with torch.no_grad():
        alone = model.generate_images(
            ["a red circle"],
            generators=[torch.Generator().manual_seed(candidate_seed(0, "good-circle", 0))],
            image_size=(16, 16),
            num_timesteps=2,
        )[0]
    assert np.array_equal(pixels(rows["good-circle:0"]["image"]), pixels(alone.image))
    assert np.array_equal(np.asarray(rows["good-circle:0"]["latents"], np.float32), alone.latents.numpy())


def test_an_unparsable_judge_gives_judge_failed_rows_never_a_neutral_score(tmp_path, model):
    # A random tiny model writes word salad: nothing parses, so nothing may be scored.
    settings = {"judge_mode": "text", "judge_retries": 2, "judge_max_new_tokens": 12}
    config = rollout_config(tmp_path / "run", **settings)
    prompts = [PromptRecord("p0", "a red circle"), PromptRecord("p1", "two blue squares")]
    dataset = RolloutRunner(model, config, proposer=fixed_boxes).run(prompts)
    for row in dataset:
        assert row["status"] == "judge_failed"
        assert row["global_score"] is None
        assert len(row["regions"]) == len(BOXES) and all(region["score"] is None for region in row["regions"])
        assert "the judge's answers could not be parsed" in row["error"]
        assert f"judge gave no score for {len(BOXES)} of {len(BOXES)} regions" in row["error"]
        # greedy first, then two *sampled* retries, all kept; none parses
        attempts = row["global_judge_output"].split("\n---\n")
        assert len(attempts) == 3 and all(attempt.strip() for attempt in attempts)
        assert all(parse_global_score(attempt) is None for attempt in attempts)
        assert len(set(attempts)) > 1, "retries repeated the greedy answer"
        assert len(row["region_judge_output"].split("\n---\n")) == 3
        # the image and latents are kept for inspection
        assert row["image"] is not None and row["latents"] is not None
    assert not (tmp_path / "run" / "gallery").exists() or not any((tmp_path / "run" / "gallery").iterdir())

    # Sampled retries are seeded by the row: the same run elsewhere writes the same text.
    again = RolloutRunner(model, rollout_config(tmp_path / "again", **settings), proposer=fixed_boxes).run(prompts)
    assert again["global_judge_output"] == dataset["global_judge_output"]


class RaisingJudge(SelfJudge):
    def judge(self, image, prompt, boxes, generator=None):
        if "square" in prompt:
            raise RuntimeError("judge crashed")
        return super().judge(image, prompt, boxes, generator)


def test_a_judge_that_raises_fails_its_row_only(tmp_path, model):
    config = rollout_config(tmp_path / "run")
    judge = RaisingJudge(model, mode="prob", style="concise")
    prompts = [PromptRecord("p0", "a red circle"), PromptRecord("p1", "two blue squares")]
    dataset = RolloutRunner(model, config, proposer=fixed_boxes, judge=judge).run(prompts)
    assert dataset["status"] == ["ok", "judge_failed"]
    failed = dataset[1]
    assert failed["error"] == "judge failed: judge crashed" and failed["global_score"] is None
    # what was drawn is kept for inspection
    assert failed["image"].size == (16, 16) and len(failed["latents"]) == 16 and failed["latent_grid"] == [4, 4]


class NaNRegionScores(BagelModel):
    """Answer probabilities are NaN for every region question (e.g. an overflow in half precision)."""

    def score_answers(self, image, questions, answers):
        scores = super().score_answers(image, questions, answers)
        regional = torch.tensor([question.startswith("region") for question in questions])
        return torch.where(regional[:, None], torch.full_like(scores, float("nan")), scores)


def test_non_finite_answer_probabilities_are_missing_scores_not_nan(tmp_path):
    model = tiny_bagel_of(NaNRegionScores)
    dataset = RolloutRunner(model, rollout_config(tmp_path / "run"), proposer=fixed_boxes).run(
        [PromptRecord("p0", "a red circle")]
    )
    row = dataset[0]
    assert row["status"] == "ok" and np.isfinite(row["global_score"])
    assert [region["score"] for region in row["regions"]] == [None] * len(BOXES)
    assert f"judge gave no score for {len(BOXES)} of {len(BOXES)} regions" in row["error"]


def test_relevance_filter_drops_the_regions_the_model_finds_irrelevant(tmp_path, model):
    prompts = [PromptRecord("p0", "a red circle above a blue square")]
    # a threshold of almost 0 keeps every region but records the model's P(relevant) of each
    everything = RolloutRunner(
        model, rollout_config(tmp_path / "all", relevance_threshold=1e-6), proposer=fixed_boxes
    ).run(prompts)[0]
    relevance = [region["relevance"] for region in everything["regions"]]
    assert [tuple(region["bbox"]) for region in everything["regions"]] == list(BOXES)
    assert all(0.0 < r < 1.0 for r in relevance) and len(set(relevance)) == len(BOXES)
    # the same numbers as asking the judge directly
    judge = SelfJudge(model, mode="prob", style="concise")
    with torch.no_grad():
        direct = judge.relevance(everything["image"], prompts[0].prompt, BOXES)
    assert relevance == pytest.approx(direct, abs=1e-6)

    # a threshold between the model's answers keeps exactly the regions above it
    threshold = float(np.median(relevance))
    filtered = RolloutRunner(
        model, rollout_config(tmp_path / "half", relevance_threshold=threshold), proposer=fixed_boxes
    ).run(prompts)[0]
    kept = [box for box, r in zip(BOXES, relevance, strict=True) if r >= threshold]
    assert 0 < len(kept) < len(BOXES)
    assert [tuple(region["bbox"]) for region in filtered["regions"]] == kept
    assert all(region["relevance"] >= threshold for region in filtered["regions"])
    assert f"{len(BOXES) - len(kept)} of {len(BOXES)} proposals judged irrelevant" in filtered["error"]
    # the kept regions are judged as before, and the global judgement does not depend on the filter
    scores = {tuple(r["bbox"]): r["score"] for r in everything["regions"]}
    assert [r["score"] for r in filtered["regions"]] == pytest.approx([scores[box] for box in kept], abs=1e-5)
    assert filtered["global_score"] == pytest.approx(everything["global_score"], abs=1e-6)

    nothing = RolloutRunner(
        model, rollout_config(tmp_path / "none", relevance_threshold=1.0), proposer=fixed_boxes
    ).run(prompts)[0]
    assert nothing["regions"] == [] and nothing["status"] == "ok"
    assert f"{len(BOXES)} of {len(BOXES)} proposals judged irrelevant" in nothing["error"]


def test_a_rerun_reuses_the_shards_and_other_settings_are_refused(tmp_path, model):
    prompts = [PromptRecord(f"p{i}", "a red circle") for i in range(3)]
    config = rollout_config(tmp_path / "run", rollout_batch_size=2)
    first = run_rollouts(model, prompts, config)
    shards = sorted((tmp_path / "run" / "shards").iterdir())
    assert [shard.name for shard in shards] == ["batch-0000000", "batch-0000001"]
    stamps = [os.stat(shard).st_mtime_ns for shard in shards]
    # a finished run is merged again without redoing any batch
    rerun = run_rollouts(model, prompts, rollout_config(tmp_path / "run", rollout_batch_size=2, gallery_size=1))
    assert_same_rows(rerun, first)
    assert [os.stat(shard).st_mtime_ns for shard in shards] == stamps

    with pytest.raises(ValueError, match="rollout_seed: 0 then, 1 now"):
        run_rollouts(model, prompts, rollout_config(tmp_path / "run", rollout_batch_size=2, rollout_seed=1))
    with pytest.raises(ValueError, match="prompts_sha256"):
        run_rollouts(model, prompts[:2], config)
    with pytest.raises(ValueError, match="rollout_batch_size"):
        run_rollouts(model, prompts, rollout_config(tmp_path / "run", rollout_batch_size=3))
    # Another checkpoint of the same architecture (or this one after training) must not extend these rollouts...
    with pytest.raises(ValueError, match="model_weights"):
        run_rollouts(tiny_bagel_model(seed=1), prompts, config)
    # ...while the same weights in a fresh object resume.
    assert_same_rows(run_rollouts(tiny_bagel_model(seed=0), prompts, config), first)
    (tmp_path / "run" / "rollout_manifest.json").unlink()
    with pytest.raises(ValueError, match="holds shards but no rollout_manifest.json"):
        run_rollouts(model, prompts, config)


def test_a_size_the_model_cannot_draw_fails_before_any_image(tmp_path, model):
    with pytest.raises(ValueError, match="18"):
        run_rollouts(model, [PromptRecord("p0", "a red circle")], rollout_config(tmp_path / "run", image_width=18))
    assert not (tmp_path / "run" / "shards").exists()


class RecordsItsMode(BagelModel):
    """Notes whether it was in training mode (dropout on) and whether autograd was recording when asked to draw."""

    def generate_images(self, prompts, **kwargs):
        self.modes.append((self.training, torch.is_grad_enabled()))
        return super().generate_images(prompts, **kwargs)


def test_a_model_in_training_mode_is_rolled_out_in_eval_mode_without_autograd_and_given_back(tmp_path):
    model = tiny_bagel_of(RecordsItsMode)
    model.modes = []
    prompts = [PromptRecord("p0", "a red circle")]
    model.train()
    dataset = run_rollouts(model, prompts, rollout_config(tmp_path / "run"))
    assert model.modes == [(False, False)]
    assert model.training and dataset[0]["status"] == "ok"


class NoGlobalVerdictBagel(ScriptedJudgeBagel):
    """Scores every region but never gives a parsable global verdict."""

    def answer_questions(self, images, questions, **kwargs) -> list[str]:
        answers = super().answer_questions(images, questions, **kwargs)
        return ["no idea" if q.startswith("layout score") else a for q, a in zip(questions, answers, strict=True)]


def test_a_missing_global_score_is_flagged_and_counted_never_neutral(tmp_path):
    model = tiny_bagel_of(NoGlobalVerdictBagel)
    config = rollout_config(tmp_path / "run", judge_mode="text", judge_retries=1)
    dataset = RolloutRunner(model, config, proposer=fixed_boxes).run([PromptRecord("p0", "a red circle")])
    (row,) = dataset
    # Judged (its regions have scores), so the row stays ok; the missing global verdict is null and noted.
    assert row["status"] == "ok" and row["global_score"] is None
    assert all(region["score"] is not None for region in row["regions"])
    assert "judge gave no global score" in row["error"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["ok_rows_without_global_score"] == 1
