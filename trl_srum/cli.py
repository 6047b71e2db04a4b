"""`trl-srum`: the command line. Each command is a module of `trl_srum.scripts` with a `main(argv)`, imported only
when it runs, so that `trl-srum --help` answers at once.

    trl-srum run --config recipes/bagel/srum/config_7b_lora_4bit.yaml --model_name_or_path ByteDance-Seed/BAGEL-7B-MoT
    trl-srum rollout --config recipes/bagel/srum/config_7b_lora_4bit.yaml
    trl-srum train --dataset_name output/srum-bagel-7b-lora-4bit/rollouts/dataset --output_dir srum-bagel
    trl-srum eval --protocol compbench-vlm --prompts val_comp.json --model_name_or_path srum-bagel
    trl-srum convert-official --jsonl train.jsonl --images images/ --output srum_data/
"""

import importlib
import sys


# name -> (module with a `main(argv)`, one line for the overview)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("trl_srum.scripts.run", "SRUM end to end: evaluate, rollouts and training in rounds, evaluate again"),
    "rollout": (
        "trl_srum.scripts.rollout",
        "stage 1: draw candidates, propose regions and self-judge them into a rollout dataset",
    ),
    "train": ("trl_srum.scripts.train", "stage 2: train on a rollout dataset"),
    "eval": ("trl_srum.scripts.eval", "measure a model or a folder of images (compbench-vlm, geneval, shapes)"),
    "convert-official": (
        "trl_srum.scripts.convert_official",
        "turn the released SRUM training data into a rollout dataset",
    ),
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
    importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    main()
