"""SRUM on BLIP3o-4B/8B: `trl-srum run` (`trl_srum.scripts.run`, as `srum_bagel.py`) with a BLIP3o recipe, which
drives any model of `trl_srum.models` through the protocol.

    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/srum_blip3o.py \\
        --config recipes/blip3o/srum/config_8b_lora_8bit.yaml --model_name_or_path BLIP3o/BLIP3o-Model-8B

BLIP3o's backbone (Qwen2.5-VL) stays frozen, so the judge never drifts; SRUM trains the DiT (LoRA or full) on the
generator's own EVA-CLIP latents, and stage 1 uses Qwen2.5-VL's native grounding for region proposals.
"""

from trl_srum.scripts import run


if __name__ == "__main__":
    run.main()
