import dataclasses

import pytest

from trl_srum import SRUMConfig


def make(tmp_path, **kwargs):
    return SRUMConfig(output_dir=str(tmp_path), use_cpu=True, **kwargs)


def test_defaults_follow_the_released_recipe_and_suit_an_image_model(tmp_path):
    config = make(tmp_path)
    assert config.lambda_constraint == 0.5
    assert config.constraint == "self"
    assert config.reward_map_mode == "official"
    assert config.text_dropout == 0.1
    assert config.timestep_sampling == "logit_normal" and config.timestep_shift == 1.0
    assert config.learning_rate == 2e-5 and config.adam_beta2 == 0.95
    assert config.num_train_epochs == 1.0  # each round's samples used about once
    assert config.activation_checkpointing is False and config.gradient_checkpointing is False
    assert config.remove_unused_columns is False


def test_every_srum_field_has_help_and_is_documented():
    own_fields = [f for f in dataclasses.fields(SRUMConfig) if f.name in SRUMConfig.__annotations__]
    assert own_fields
    for f in own_fields:
        assert f.metadata.get("help"), f"{f.name} has no help"
        assert f"{f.name} (`" in SRUMConfig.__doc__ or f.name in {
            "learning_rate",
            "num_train_epochs",
            "adam_beta2",
            "lr_scheduler_type",
            "gradient_checkpointing",
            "remove_unused_columns",
        }, f"{f.name} is missing from the docstring"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"constraint": "kl"}, "constraint='kl' is not one of"),
        ({"reward_map_mode": "dense"}, "reward_map_mode='dense' is not one of"),
        ({"lambda_constraint": -0.1}, "constraint weights must be >= 0"),
        ({"constraint": "reference", "reference_weight": 0.0}, "reference forward for nothing"),
        ({"reward_map_mode": "signed", "repulsion_margin": 0.0}, "repulsion_margin > 0"),
        ({"timestep_min": 0.8, "timestep_max": 0.5}, "timestep_min < timestep_max"),
        ({"timestep_max": 1.5}, "timestep_max <= 1"),
        ({"logit_std": 0.0}, "must be > 0"),
        ({"text_dropout": 1.0}, r"text_dropout must be in \[0, 1\)"),
        ({"remove_unused_columns": True}, "would drop the rollout columns"),
        ({"latent_source": "disk"}, "latent_source='disk' is not one of"),
        ({"trainable_parameters": "und"}, "trainable_parameters='und' is not one of"),
    ],
)
def test_contradictory_settings_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **kwargs)
