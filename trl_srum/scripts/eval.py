"""`trl-srum eval`: measure a model (or a folder of images) with a protocol, or compare two runs.

    trl-srum eval --protocol compbench-vlm --prompts val_comp.json --model_name_or_path /path/to/model [--think] ...
    trl-srum eval --protocol geneval --prompts evaluation_metadata.jsonl --images_dir /path/to/images ...
    trl-srum eval --protocol shapes --config recipes/bagel/srum/config_shapes.yaml     (the shapes model it names)
    trl-srum eval --compare runs/base runs/srum [--bootstrap_samples 10000] [--bootstrap_seed 0]

Settings may also come from a YAML recipe (`--config`); its keys that belong to other commands are ignored. See
docs/evaluation.md for the protocols and the commands that reproduce the SRUM paper's table.
"""

import argparse
import sys

import torch

from ..eval.compare import compare_runs, format_comparison
from ..eval.config import EvalConfig
from ..eval.runner import evaluate
from ..rollout.runner import rollout_state
from .utils import SRUMModelConfig, load_model, log_to_console, parse_arguments


def _compare(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="trl-srum eval --compare", description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), required=True, help="two finished eval_dirs")
    parser.add_argument("--bootstrap_samples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the resampling")
    args = parser.parse_args(argv)
    run_a, run_b = args.compare
    comparison = compare_runs(run_a, run_b, samples=args.bootstrap_samples, seed=args.bootstrap_seed)
    print(format_comparison(comparison, run_a, run_b))


def main(argv: list[str] | None = None) -> None:
    """Run `trl-srum eval` with these arguments (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--compare" in argv:
        _compare(argv)
        return
    config, model_args = parse_arguments(
        (EvalConfig, SRUMModelConfig), argv, prog="trl-srum eval", ignore_other_keys=True
    )
    log_to_console()
    state = rollout_state()
    model = None
    if config.images_dir is None:
        if not model_args.model_name_or_path:
            print(
                "trl-srum eval: give --model_name_or_path (the model to draw with) or --images_dir (images to judge)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        model = load_model(model_args, state.device)
    with torch.no_grad():
        results = evaluate(config, model)
    if state.is_main_process:
        print((results.eval_dir / "results.md").read_text(), end="")
