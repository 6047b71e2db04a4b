"""`trl-srum`: command-line entry points.

    trl-srum rollout --config recipes/bagel/srum/config_7b_lora_4bit.yaml [--model_name_or_path ...]
    trl-srum convert-official --jsonl train.jsonl --images images/ --output srum_data/

`rollout` reads the same YAML recipes as `recipes/srum_bagel.py`; keys that belong to training are ignored.
Heavy libraries are imported inside each command, so that `trl-srum --help` answers at once.
"""

import argparse
import logging
import sys
from collections.abc import Callable


def _log_progress() -> None:
    # The runner reports which batches each process takes and the summary through `logging`.
    package_logger = logging.getLogger("trl_srum")
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)


def _rollout(argv: list[str]) -> None:
    from trl import ModelConfig, TrlParser, get_quantization_config

    from .models import load_unified_model
    from .rollout import RolloutConfig, config_prompts, run_rollouts
    from .rollout.runner import rollout_state

    parser = TrlParser((RolloutConfig, ModelConfig), prog="trl-srum rollout")
    # Keys of the YAML that belong to training are ignored; unknown command-line options are typos.
    rollout_config, model_args, _, unknown = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _log_progress()
    if not model_args.model_name_or_path:
        # As in recipes/srum_bagel.py: no model named means the shapes-world BAGEL that ships with the package.
        from .shapes.pretrained import DEFAULT_MODEL_DIR

        model_args.model_name_or_path = str(DEFAULT_MODEL_DIR)
        logging.getLogger("trl_srum").info(f"no model named: using the shipped shapes-world model {DEFAULT_MODEL_DIR}")
    # A bad prompt file fails here, before the model is loaded.
    prompts = config_prompts(rollout_config)
    state = rollout_state()
    # each process draws on its own device
    model = load_unified_model(
        model_args.model_name_or_path,
        state.device,
        dtype=model_args.dtype,
        quantization_config=get_quantization_config(model_args),
    )
    dataset = run_rollouts(model.eval(), prompts, rollout_config)
    if state.is_main_process:
        print(f"wrote {len(dataset)} rollout rows to {rollout_config.rollout_dir}/dataset")


def _convert_official(argv: list[str]) -> None:
    from .rollout import convert_official_srum_data

    parser = argparse.ArgumentParser(prog="trl-srum convert-official", description=COMMANDS["convert-official"][1])
    parser.add_argument("--jsonl", required=True, help="the released SRUM training jsonl")
    parser.add_argument("--images", required=True, help="the folder of its images")
    parser.add_argument("--output", required=True, help="where to save the rollout dataset")
    args = parser.parse_args(argv)
    dataset = convert_official_srum_data(args.jsonl, args.images)
    dataset.save_to_disk(args.output)
    print(f"wrote {len(dataset)} rollout rows to {args.output}")


# name -> (entry point taking the command's own arguments, one line for the overview)
COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "rollout": (_rollout, "stage 1: draw candidates, propose regions and self-judge them into a rollout dataset"),
    "convert-official": (_convert_official, "turn the released SRUM training data into a rollout dataset"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(
        [
            "usage: trl-srum <command> [options]",
            "",
            "SRUM (fine-grained self-rewarding for unified multimodal models) from the command line.",
            "",
            "commands:",
            *lines,
            "",
            "`trl-srum <command> --help` lists the options of one command.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return
    if not argv:
        print(usage(), file=sys.stderr)
        raise SystemExit(2)
    if argv[0] not in COMMANDS:
        print(f"trl-srum: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    main()
