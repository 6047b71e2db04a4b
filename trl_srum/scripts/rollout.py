"""`trl-srum rollout`: stage 1 alone, into `<rollout_dir>/dataset` (reads the same YAML recipes as `trl-srum run`;
keys that belong to training are ignored).

    trl-srum rollout --config recipes/bagel/srum/config_7b_lora_4bit.yaml [--model_name_or_path ...]
"""

from ..rollout import RolloutConfig, config_prompts, run_rollouts
from ..rollout.runner import rollout_state
from .utils import SRUMModelConfig, load_model, log_to_console, parse_arguments


def main(argv: list[str] | None = None) -> None:
    rollout_config, model_args = parse_arguments(
        (RolloutConfig, SRUMModelConfig), argv, prog="trl-srum rollout", ignore_other_keys=True
    )
    log_to_console()
    prompts = config_prompts(rollout_config)  # a bad prompt file fails here, before the model is loaded
    state = rollout_state()
    model = load_model(model_args, state.device)  # each process draws on its own device
    dataset = run_rollouts(model, prompts, rollout_config)
    if state.is_main_process:
        print(f"wrote {len(dataset)} rollout rows to {rollout_config.rollout_dir}/dataset")
