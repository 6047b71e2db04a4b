"""The evaluation runner on the shipped shapes-world model: outputs, resuming after an interruption, processes, image
folders, prompt sources and the command line."""

import json
import os
from dataclasses import dataclass

import pytest
import torch
from datasets import Dataset
from PIL import Image

from trl_srum.cli import main as cli_main
from trl_srum.eval import EvalConfig, evaluate_folder, evaluate_model
from trl_srum.eval.images import draw_images, find_images
from trl_srum.eval.protocols import build_protocol
from trl_srum.eval.sources import load_prompt_records
from trl_srum.rollout.prompts import PromptRecord
from trl_srum.shapes import evaluate, parse_prompt
from trl_srum.shapes.eval_protocol import ShapesProtocol

from .utils import COMPBENCH_PROMPTS, SETTINGS, random_images, without_paths, write_compbench_prompts


def image_bytes(eval_dir) -> dict[str, bytes]:
    images = eval_dir / "images"
    return {str(p.relative_to(images)): p.read_bytes() for p in sorted(images.rglob("*.png"))}


def test_a_run_writes_every_output_and_its_numbers_are_the_oracles(reference):
    folder = reference.eval_dir
    summary = json.loads((folder / "results.json").read_text())
    assert summary["num_prompts"] == 12 and summary["num_images"] == 24 and summary["missing_judgements"] == 0
    assert summary["images"]["generation"]["model_weights"] and summary["settings"]["num_images"] == 2
    # every image's score is the oracle's verdict on the saved image, and the table is their mean
    for row in reference.rows:
        with Image.open(folder / "images" / row["image"]) as image:
            assert row["score"] == float(evaluate(image.convert("RGB"), parse_prompt(row["prompt"]))["correct"])
    assert summary["overall"] == pytest.approx(sum(r["score"] for r in reference.rows) / 24)
    for category, line in summary["categories"].items():
        scores = [r["score"] for r in reference.rows if r["category"] == category]
        assert line["score"] == pytest.approx(sum(scores) / len(scores)) and line["images"] == 4
    csv_lines = (folder / "per_prompt.csv").read_text().splitlines()
    assert csv_lines[0] == "prompt_id,category,prompt,images,missing,mean_score,scores,seeds" and len(csv_lines) == 13
    assert "| **overall** |" in (folder / "results.md").read_text()
    assert sorted(p.name for p in (folder / "grids").iterdir()) == sorted(f"{c}.png" for c in summary["categories"])
    with Image.open(folder / "grids" / "counting.png") as grid:
        assert grid.size == (2 + 2 * 66, 2 + 2 * 66)  # 2 prompts x 2 images of 64 px with 2 px padding
    # seeds depend on (base seed, prompt, index) only
    assert len({row["seed"] for row in reference.rows}) == 24


def test_a_run_interrupted_while_drawing_and_judging_resumes_to_the_same_results(model, reference, tmp_path):
    config = EvalConfig(eval_dir=str(tmp_path / "run"), **SETTINGS)
    draw = model.generate_images
    calls = []

    def draws_two_batches_then_dies(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt  # what a kill looks like from inside: nothing after it runs
        return draw(*args, **kwargs)

    model.generate_images = draws_two_batches_then_dies
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate_model(model, config)
    finally:
        del model.generate_images
    drawn = {p: os.stat(tmp_path / "run" / "images" / p).st_mtime_ns for p in image_bytes(tmp_path / "run")}
    assert len(drawn) == 10  # two batches of 5

    protocol = build_protocol(config)
    judge = protocol.judge
    batches = []

    def judges_one_batch_then_dies(images, device):
        batches.append(len(images))
        if len(batches) > 1:
            raise KeyboardInterrupt
        return judge(images, device)

    protocol.judge = judges_one_batch_then_dies
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(model, config, protocol=protocol)
    assert [p.name for p in (tmp_path / "run" / "judgements").glob("batch-*")] == ["batch-0000000.jsonl"]

    resumed = evaluate_model(model, config)
    # nothing drawn before the interruption was drawn again, and the results equal those of an uninterrupted run
    assert {p: os.stat(tmp_path / "run" / "images" / p).st_mtime_ns for p in drawn} == drawn
    assert image_bytes(tmp_path / "run") == image_bytes(reference.eval_dir)
    assert resumed.rows == reference.rows
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert without_paths(summary) == without_paths(json.loads((reference.eval_dir / "results.json").read_text()))


def test_other_settings_do_not_resume_into_a_run(model, reference):
    with pytest.raises(ValueError, match="eval_seed: 0 then, 1 now"):
        evaluate_model(model, EvalConfig(eval_dir=str(reference.eval_dir), **{**SETTINGS, "eval_seed": 1}))
    with pytest.raises(ValueError, match="judge_batch_size: 7 then, 3 now"):
        evaluate_model(model, EvalConfig(eval_dir=str(reference.eval_dir), **{**SETTINGS, "judge_batch_size": 3}))


@dataclass
class OneOf:
    """The part of an accelerate state the runner uses, for process `process_index` of `num_processes`."""

    process_index: int
    num_processes: int
    device = torch.device("cpu")

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def wait_for_everyone(self) -> None:
        pass


def test_processes_draw_their_round_robin_share_and_together_the_images_of_one(model, reference, tmp_path):
    config = EvalConfig(eval_dir=str(tmp_path / "run"), **SETTINGS)
    prompts = ShapesProtocol(config).load_prompts()
    images = tmp_path / "run" / "images"
    # the main process records the settings, then draws batches 0, 2 and 4 of 5 (images 0-4, 10-14 and 20-23)
    draw_images(model, prompts, config, images, OneOf(0, 2))
    shares = [*range(5), *range(10, 15), *range(20, 24)]
    assert set(image_bytes(tmp_path / "run")) == {reference.rows[i]["image"] for i in shares}
    draw_images(model, prompts, config, images, OneOf(1, 2))
    assert image_bytes(tmp_path / "run") == image_bytes(reference.eval_dir)


def test_a_folder_from_another_generator(tmp_path):
    prompts = write_compbench_prompts(tmp_path / "prompts.json")
    ids = [str(p["Question_id"]) for p in prompts]
    folder = random_images(tmp_path / "images", ids[:3], per_prompt=2, seed=0)
    # one image per prompt as <prompt_id>.png, and GenEval's <prompt_id>/samples/ layout
    Image.new("RGB", (20, 20)).save(folder / f"{ids[3]}.png")
    (folder / ids[4] / "samples").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(folder / ids[4] / "samples" / "0003.jpg")
    records = load_prompt_records(str(tmp_path / "prompts.json"), "train")
    found = find_images(folder, records)
    assert [(i.record.prompt_id, i.index, i.seed) for i in found][-3:] == [
        ("13", 1, None),
        ("14", 0, None),
        ("15", 3, None),
    ]
    (folder / ids[4] / "samples" / "0003.jpg").rename(folder / ids[4] / "samples" / "extra.jpg")
    with pytest.raises(ValueError, match=r"no image for 1 of 5 prompts \(e.g. \['15'\]\)"):
        find_images(folder, records)
    Image.new("RGB", (20, 20)).save(folder / ids[0] / "1.jpg")
    with pytest.raises(ValueError, match="holds image 1 twice"):
        find_images(folder, records)
    with pytest.raises(FileNotFoundError, match="no image folder"):
        find_images(tmp_path / "nowhere", records)


def test_prompts_from_a_saved_dataset_and_from_a_folder_of_data_files(tmp_path):
    write_compbench_prompts(tmp_path / "p.json")
    expected = load_prompt_records(str(tmp_path / "p.json"), "train")
    Dataset.from_list(COMPBENCH_PROMPTS).save_to_disk(str(tmp_path / "saved"))
    assert load_prompt_records(str(tmp_path / "saved"), "train") == expected
    # a folder of data files goes through datasets.load_dataset, as a Hub dataset name does
    (tmp_path / "hub-like").mkdir()
    (tmp_path / "hub-like" / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in COMPBENCH_PROMPTS))
    assert load_prompt_records(str(tmp_path / "hub-like"), "train") == expected
    with pytest.raises(FileNotFoundError, match="no prompt file or dataset"):
        load_prompt_records(str(tmp_path / "missing.json"), "train")


def test_shapes_prompts_from_a_file_take_their_category_from_the_spec(tmp_path):
    (tmp_path / "p.txt").write_text("two red circles\na blue square above a blue circle\n")
    config = EvalConfig(protocol="shapes", prompts=str(tmp_path / "p.txt"))
    assert ShapesProtocol(config).load_prompts() == [
        PromptRecord("0", "two red circles", "counting"),
        PromptRecord("1", "a blue square above a blue circle", "position"),
    ]
    (tmp_path / "p.txt").write_text("a dog\n")
    with pytest.raises(ValueError, match="prompt '0' is not a shapes-world prompt"):
        ShapesProtocol(config).load_prompts()


def test_the_command_line(reference, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["eval", "--help"])
    assert exit_.value.code == 0 and "usage: trl-srum eval" in capsys.readouterr().out
    # judge the reference run's images as a folder: the same table
    images, run = str(reference.eval_dir / "images"), str(tmp_path / "folder")
    cli_main(
        ["eval", *"--protocol shapes --prompts_per_category 2".split(), "--images_dir", images, "--eval_dir", run]
    )
    assert "| **overall** |" in capsys.readouterr().out
    folder = json.loads((tmp_path / "folder" / "results.json").read_text())
    assert folder["overall"] == reference.overall and folder["images"]["generation"]["eval_seed"] == 0
    with pytest.raises(SystemExit):
        cli_main(["eval", "--protocol", "shapes", "--no_such_option", "1"])
    assert "unrecognized arguments: --no_such_option 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["eval", "--protocol", "compbench-vlm", "--prompts", "p.json"])
    assert "give --model_name_or_path" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown evaluation protocol 'clipscore'"):
        evaluate_folder(EvalConfig(protocol="clipscore", images_dir=str(tmp_path)))
