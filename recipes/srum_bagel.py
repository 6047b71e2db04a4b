"""SRUM on BAGEL, end to end: evaluation, stage 1 (self-judged rollouts) and stage 2 in rounds, evaluation again.

With no arguments it runs the shapes-world demo on the tiny BAGEL that ships with trl-srum (CPU, a few minutes):

    accelerate launch recipes/srum_bagel.py

The paper's run on BAGEL-7B-MoT (see docs/recipes.md):

    accelerate launch --config_file recipes/accelerate_configs/fsdp_8gpu.yaml recipes/srum_bagel.py \\
        --config recipes/bagel/srum/config_7b_released.yaml --model_name_or_path ByteDance-Seed/BAGEL-7B-MoT

or on one 24 GB GPU with a 4-bit base and LoRA:

    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/srum_bagel.py \\
        --config recipes/bagel/srum/config_7b_lora_4bit.yaml --model_name_or_path ByteDance-Seed/BAGEL-7B-MoT

It is `trl-srum run` (`trl_srum.scripts.run`) with the shapes-world recipe as its default configuration.
"""

from pathlib import Path

from trl_srum.scripts import run


DEFAULT_CONFIG = Path(__file__).parent / "bagel" / "srum" / "config_shapes.yaml"


if __name__ == "__main__":
    run.main(default_config=DEFAULT_CONFIG)
