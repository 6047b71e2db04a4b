"""`trl-srum convert-official`: the released SRUM training data as a rollout dataset.

trl-srum convert-official --jsonl train.jsonl --images images/ --output srum_data/
"""

import argparse

from ..rollout import convert_official_srum_data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trl-srum convert-official", description=__doc__.splitlines()[0])
    parser.add_argument("--jsonl", required=True, help="the released SRUM training jsonl")
    parser.add_argument("--images", required=True, help="the folder of its images")
    parser.add_argument("--output", required=True, help="where to save the rollout dataset")
    args = parser.parse_args(argv)
    dataset = convert_official_srum_data(args.jsonl, args.images)
    dataset.save_to_disk(args.output)
    print(f"wrote {len(dataset)} rollout rows to {args.output}")
