"""Wall time of each stage of the main job (`recipes/srum_bagel.py`) and its share of the whole.

    python recipes/benchmarks/bench_end_to_end.py                  # the default shapes-world recipe
    python recipes/benchmarks/bench_end_to_end.py --max_steps 50   # any recipe key can be overridden

It runs exactly what the main job runs — load, evaluate the base model, stage 1 (sampling, region proposals,
relevance filter, judging, writing), SRUM training, evaluate the trained model — and times each piece. Stage 1's
inner phases come from `RolloutRunner.seconds`.
"""

import sys
import tempfile
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import PartialState  # noqa: E402
from srum_bagel import evaluate_shapes, load_model, parse_arguments  # noqa: E402

from trl_srum import SRUMTrainer  # noqa: E402
from trl_srum.rollout import config_prompts  # noqa: E402
from trl_srum.rollout.runner import RolloutRunner  # noqa: E402


def main() -> None:
    script_args, training_args, rollout_config, model_args = parse_arguments()
    # A fresh folder: a resumed stage 1 would time nothing.
    workdir = Path(tempfile.mkdtemp(prefix="srum-bench-"))
    training_args.output_dir = str(workdir / "out")
    rollout_config.rollout_dir = str(workdir / "rollouts")
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    model = load_model(model_args, PartialState(cpu=training_args.use_cpu).device)
    seconds["load model"] = time.perf_counter() - started

    started = time.perf_counter()
    evaluate_shapes(model, script_args, rollout_config, "base")
    seconds["evaluation before"] = time.perf_counter() - started

    prompts = config_prompts(rollout_config)
    runner = RolloutRunner(model, rollout_config)
    started = time.perf_counter()
    dataset = runner.run(prompts)
    stage1 = time.perf_counter() - started
    for phase, value in runner.seconds.items():
        seconds[f"stage 1: {phase}"] = value
    seconds["stage 1: merge, gallery, summary"] = stage1 - sum(runner.seconds.values())

    started = time.perf_counter()
    trainer = SRUMTrainer(model, training_args, train_dataset=dataset)
    trainer.train()
    seconds["training"] = time.perf_counter() - started

    started = time.perf_counter()
    evaluate_shapes(trainer.model.eval(), script_args, rollout_config, "trained")
    seconds["evaluation after"] = time.perf_counter() - started

    total = sum(seconds.values())
    print(f"\n{'stage':<36}{'seconds':>10}{'share':>9}")
    for stage, value in seconds.items():
        print(f"{stage:<36}{value:>10.1f}{value / total:>9.1%}")
    print(f"{'total':<36}{total:>10.1f}{1:>9.0%}")
    print(
        f"\n{len(dataset)} rollout rows, {training_args.max_steps} training steps, torch threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
