import pytest
import torch

from trl_srum.models.bagel.sampling import SamplerSettings, guide_velocity, timestep_grid


def test_timestep_grid_is_shifted_towards_noise():
    grid = timestep_grid(6, 3.0)
    assert grid[0] == 1.0 and grid[-1] == 0.0
    assert torch.all(grid[:-1] > grid[1:])
    assert torch.all(grid[1:-1] > torch.linspace(1, 0, 6)[1:-1])


@pytest.mark.parametrize("renorm_type", ["global", "channel", "text_channel"])
def test_renorm_caps_the_guided_norm_at_the_conditional_norm(renorm_type):
    generator = torch.Generator().manual_seed(0)
    v_cond, v_uncond = torch.randn(2, 5, 4, generator=generator), torch.randn(2, 5, 4, generator=generator)
    guided = guide_velocity(v_cond, v_uncond, None, SamplerSettings(cfg_text_scale=4.0, cfg_renorm_type=renorm_type))
    dims = (-2, -1) if renorm_type == "global" else (-1,)
    assert torch.all(guided.norm(dim=dims) <= v_cond.norm(dim=dims) + 1e-5)
    unclamped = SamplerSettings(cfg_text_scale=4.0, cfg_renorm_type=renorm_type, cfg_renorm_min=1.0)
    torch.testing.assert_close(guide_velocity(v_cond, v_uncond, None, unclamped), v_uncond + 4 * (v_cond - v_uncond))


def test_text_channel_renorms_before_image_guidance():
    generator = torch.Generator().manual_seed(1)
    v_cond, v_text, v_image = (torch.randn(1, 3, 4, generator=generator) for _ in range(3))
    settings = SamplerSettings(cfg_text_scale=3.0, cfg_img_scale=2.0, cfg_renorm_type="text_channel")
    text_guided = guide_velocity(v_cond, v_text, None, SamplerSettings(cfg_text_scale=3.0, cfg_renorm_type="channel"))
    torch.testing.assert_close(
        guide_velocity(v_cond, v_text, v_image, settings), v_image + 2 * (text_guided - v_image)
    )


def test_guidance_interval_and_bad_settings():
    settings = SamplerSettings(cfg_interval=(0.4, 1.0))
    assert settings.guidance_active(1.0) and not settings.guidance_active(0.4)
    assert not SamplerSettings(cfg_text_scale=1.0).guidance_active(0.9)
    with pytest.raises(ValueError, match="cfg_renorm_type"):
        SamplerSettings(cfg_renorm_type="per_pixel")
    with pytest.raises(ValueError, match="num_timesteps"):
        SamplerSettings(num_timesteps=1)
    with pytest.raises(ValueError, match="cfg_interval"):
        SamplerSettings(cfg_interval=(0.8, 0.2))
