"""Wall time of each stage of the main job (`recipes/srum_bagel.py`, i.e. `trl-srum run`), round by round.

    python recipes/benchmarks/bench_end_to_end.py                                  # the default shapes-world recipe
    python recipes/benchmarks/bench_end_to_end.py --num_rounds 3 --prompts_per_round 24 --loss_type nft \\
        --num_train_epochs 1 --max_steps -1                                          # online rounds

It runs what the main job runs — load, evaluate the base model, the rounds of stage 1 then stage 2, evaluate the
trained model — in a fresh folder, and prints each piece's seconds and share of the whole; any recipe key can be
overridden. Stage 1 and stage 2 of every round come from the round's statistics (`round.json`).
"""

import sys
import tempfile
import time
from pathlib import Path

import torch
from accelerate import PartialState
from trl import get_peft_config

from trl_srum.eval import evaluate_model
from trl_srum.pipeline import RoundsConfig, SRUMPipeline
from trl_srum.rollout import RolloutConfig, config_prompts
from trl_srum.scripts.run import RunArguments, evaluation_config
from trl_srum.scripts.utils import SRUMModelConfig, load_model, parse_arguments
from trl_srum.srum_config import SRUMConfig


DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "bagel" / "srum" / "config_shapes.yaml"


def main() -> None:
    run_args, rounds, training_args, rollout_config, model_args = parse_arguments(
        (RunArguments, RoundsConfig, SRUMConfig, RolloutConfig, SRUMModelConfig),
        sys.argv[1:],
        prog="bench_end_to_end.py",
        default_config=DEFAULT_CONFIG,
    )
    # A fresh folder: a resumed run would time nothing.
    workdir = Path(tempfile.mkdtemp(prefix="srum-bench-"))
    training_args.output_dir = str(workdir / "out")
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    model = load_model(model_args, PartialState(cpu=training_args.use_cpu).device)
    seconds["load model"] = time.perf_counter() - started

    evaluation = evaluation_config(run_args, rollout_config, workdir / "eval-base") if run_args.eval_protocol else None
    if evaluation is not None:
        started = time.perf_counter()
        evaluate_model(model, evaluation)
        seconds["evaluation before"] = time.perf_counter() - started

    pipeline = SRUMPipeline(
        model,
        config_prompts(rollout_config),
        args=training_args,
        rollout_config=rollout_config,
        rounds=rounds,
        peft_config=get_peft_config(model_args),
    )
    started = time.perf_counter()
    model = pipeline.run()
    rounds_total = time.perf_counter() - started
    for summary in pipeline.summaries:
        seconds[f"round {summary['round']}: stage 1"] = summary["stage1_seconds"]
        seconds[f"round {summary['round']}: stage 2"] = summary["stage2_seconds"]
    seconds["rounds: statistics, saving, probes"] = rounds_total - sum(
        s["stage1_seconds"] + s["stage2_seconds"] for s in pipeline.summaries
    )

    if evaluation is not None:
        started = time.perf_counter()
        evaluation.eval_dir = str(workdir / "eval-final")
        evaluate_model(model, evaluation)
        seconds["evaluation after"] = time.perf_counter() - started

    total = sum(seconds.values())
    print(f"\n{'stage':<40}{'seconds':>10}{'share':>9}")
    for stage, value in seconds.items():
        print(f"{stage:<40}{value:>10.1f}{value / total:>9.1%}")
    print(f"{'total':<40}{total:>10.1f}{1:>9.0%}")
    rows = sum(s["rows"] for s in pipeline.summaries)
    steps = sum(s["steps"] for s in pipeline.summaries)
    print(
        f"\n{len(pipeline.summaries)} round(s), {rows} rollout rows, {steps} training steps, "
        f"torch threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
