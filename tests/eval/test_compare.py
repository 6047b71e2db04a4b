"""`trl-srum eval --compare`: the paired difference of two runs with a bootstrap interval."""

import json

import numpy as np
import pytest

from trl_srum.cli import main as cli_main
from trl_srum.eval import EvalConfig, compare_runs, evaluate_model
from trl_srum.eval.compbench import CompBenchProtocol
from trl_srum.eval.report import EvalResults, summarize, write_report
from trl_srum.eval.scoring import aggregate

from .utils import SETTINGS


def test_two_runs_of_the_same_model_differ_by_an_interval_around_zero(model, reference, tmp_path):
    # the same seeds: the very same images, so exactly no difference
    same = compare_runs(reference.eval_dir, reference.eval_dir, samples=2000, seed=0)
    assert (same.overall.difference, same.overall.low, same.overall.high) == (0.0, 0.0, 0.0)
    # other seeds: other images of the same model, a difference that is noise
    other = evaluate_model(model, EvalConfig(eval_dir=str(tmp_path / "seed1"), **{**SETTINGS, "eval_seed": 1}))
    comparison = compare_runs(reference.eval_dir, other.eval_dir, samples=2000, seed=0)
    assert comparison.overall.contains_zero and comparison.overall.low < comparison.overall.high
    assert comparison.overall.a == pytest.approx(reference.overall) and comparison.overall.b == pytest.approx(
        other.overall
    )
    assert comparison.prompts == 12 and comparison.images == 24
    assert comparison.notes == ["24 image pairs were not drawn from the same known seed: paired by prompt only"]
    # the interval is reproducible from its seed
    assert compare_runs(reference.eval_dir, other.eval_dir, samples=2000, seed=0).overall == comparison.overall


def write_run(folder, scores_by_prompt, judge="judge-a"):
    """A finished compbench-vlm run with the given per-image scores (no images: no grids)."""
    rows = [
        {"prompt_id": pid, "category": category, "prompt": f"prompt {pid}", "index": k, "seed": k, "image": "",
         "score": score, "attempts": 1, "output": ""}
        for (pid, category), scores in scores_by_prompt.items() for k, score in enumerate(scores)
    ]  # fmt: skip
    config = EvalConfig(eval_dir=str(folder), grid_prompts=0)
    protocol = CompBenchProtocol(config)
    table = aggregate(rows, protocol, config.aggregation)
    summary = summarize(protocol.name, protocol.scale, config.aggregation, table, rows, judge={"judge_model": judge},
                        images={}, settings={})  # fmt: skip
    write_report(EvalResults(protocol.name, table, rows, summary, folder, folder), 0, 8)


def shifted_runs(tmp_path, shift):
    rng = np.random.default_rng(0)
    categories = ["color", "shape", "spatial", "complex", "complex_action"]
    base = {(f"p{i}", categories[i % 5]): rng.uniform(30, 90, size=2).round(1).tolist() for i in range(40)}
    moved = {key: [min(100.0, s + shift + rng.normal(0, 3)) for s in scores] for key, scores in base.items()}
    write_run(tmp_path / "a", base)
    write_run(tmp_path / "b", moved)
    return tmp_path / "a", tmp_path / "b"


def test_a_known_shift_is_found_and_its_interval_excludes_zero(tmp_path):
    run_a, run_b = shifted_runs(tmp_path, shift=5.0)
    comparison = compare_runs(run_a, run_b, samples=4000, seed=0)
    summary_a, summary_b = (json.loads((run / "results.json").read_text()) for run in (run_a, run_b))
    assert comparison.overall.difference == pytest.approx(summary_b["overall"] - summary_a["overall"])
    assert not comparison.overall.contains_zero and 3.5 < comparison.overall.low < comparison.overall.high < 6.5
    assert set(comparison.categories) == {"color", "shape", "spatial", "complex", "complex_action"}


def test_the_command_line_prints_the_comparison(tmp_path, capsys):
    run_a, run_b = shifted_runs(tmp_path, shift=5.0)
    cli_main(["eval", "--compare", str(run_a), str(run_b), "--bootstrap_samples", "500", "--bootstrap_seed", "1"])
    out = capsys.readouterr().out
    assert "compbench-vlm (aggregation exclude_missing): B - A on 40 prompts, 80 paired images" in out
    assert "excludes 0; paired bootstrap over prompts within categories, 500 resamples, seed 1" in out
    assert "| **overall** |" in out


def test_runs_judged_differently_do_not_compare(tmp_path):
    write_run(tmp_path / "a", {("p0", "color"): [50.0]})
    write_run(tmp_path / "b", {("p0", "color"): [60.0]}, judge="judge-b")
    with pytest.raises(ValueError, match="judged differently"):
        compare_runs(tmp_path / "a", tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="not a finished `trl-srum eval` run: no results.json"):
        compare_runs(tmp_path / "a", tmp_path / "nothing")
    write_run(tmp_path / "c", {("p0", "color"): [None]})
    with pytest.raises(ValueError, match="no judged image of the same prompt and index"):
        compare_runs(tmp_path / "a", tmp_path / "c")
