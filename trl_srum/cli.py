"""`trl-srum`: command-line entry points.

    trl-srum rollout --config recipes/bagel/srum/config_7b.yaml [--model_name_or_path ...] [--rollout_dir ...]
    trl-srum convert-official --jsonl train.jsonl --images images/ --output srum_data/

`rollout` reads the same YAML recipes as `recipes/srum_bagel.py`; keys that belong to training are ignored.
"""

import argparse
import sys

from trl import ModelConfig, TrlParser, get_quantization_config


def _rollout(argv: list[str]) -> None:
    from .models import load_unified_model
    from .rollout import RolloutConfig, resolve_prompts, run_rollouts

    parser = TrlParser((RolloutConfig, ModelConfig), prog="trl-srum rollout")
    rollout_config, model_args, _ = parser.parse_args_and_config(argv, fail_with_unknown_args=False)
    if not model_args.model_name_or_path:
        parser.error("--model_name_or_path (or model_name_or_path in the YAML) is required")
    prompts = resolve_prompts(
        rollout_config.prompts_file,
        rollout_config.shapes_prompts,
        rollout_config.rollout_seed,
        rollout_config.num_prompts,
    )
    model = load_unified_model(
        model_args.model_name_or_path,
        dtype=model_args.dtype,
        quantization_config=get_quantization_config(model_args),
    ).eval()
    dataset = run_rollouts(model, prompts, rollout_config)
    print(f"wrote {len(dataset)} rollout rows to {rollout_config.rollout_dir}/dataset")


def _convert_official(argv: list[str]) -> None:
    from .rollout import convert_official_srum_data

    parser = argparse.ArgumentParser(prog="trl-srum convert-official", description=__doc__)
    parser.add_argument("--jsonl", required=True, help="the released SRUM training jsonl")
    parser.add_argument("--images", required=True, help="the folder of its images")
    parser.add_argument("--output", required=True, help="where to save the rollout dataset")
    args = parser.parse_args(argv)
    dataset = convert_official_srum_data(args.jsonl, args.images)
    dataset.save_to_disk(args.output)
    print(f"wrote {len(dataset)} rollout rows to {args.output}")


COMMANDS = {"rollout": _rollout, "convert-official": _convert_official}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        raise SystemExit(f"usage: trl-srum {{{','.join(COMMANDS)}}} ...")
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
