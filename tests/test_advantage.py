import pytest
import torch

from trl_srum.advantage import ADVANTAGE_EPS, group_baselines, token_weights


def maps(*values: float, shape=(2, 3)) -> list[torch.Tensor]:
    return [torch.full(shape, value) for value in values]


def test_candidates_that_score_alike_get_weight_one_half_everywhere():
    # Equal maps with structure inside the image: still nothing to learn from comparing them.
    structured = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.2, 1.0]])
    (baseline,) = group_baselines({"p": [structured.clone() for _ in range(4)]}).values()
    assert baseline.scale == 0.0 and not baseline.mixed and baseline.size == 4
    assert torch.equal(token_weights(structured, baseline, clip=1.0), torch.full((2, 3), 0.5))


def test_advantages_are_centred_per_token_and_scaled_per_group():
    group = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 0.3]])]
    (baseline,) = group_baselines({"p": group}).values()
    torch.testing.assert_close(baseline.mean, torch.tensor([[0.5, 0.1]]))
    deviations = torch.stack(group) - baseline.mean
    assert baseline.scale == pytest.approx(deviations.pow(2).mean().sqrt().item())
    clip = 10.0  # wide enough that nothing is clipped: the weights are an affine map of centred advantages
    weights = torch.stack([token_weights(m, baseline, clip) for m in group])
    advantages = (weights - 0.5) * 2 * clip
    torch.testing.assert_close(advantages.sum(dim=0), torch.zeros(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(advantages, deviations / (baseline.scale + ADVANTAGE_EPS), atol=1e-5, rtol=0)


def test_weights_are_clipped_into_zero_one():
    (baseline,) = group_baselines({"p": maps(0.0, 0.0, 0.0, 1.0)}).values()
    weights = torch.stack([token_weights(m, baseline, clip=1.0) for m in maps(0.0, 1.0)])
    assert weights.min() >= 0.0 and weights.max() <= 1.0
    assert torch.equal(weights[1], torch.ones(2, 3))  # 1.73 standard deviations above the mean, clipped to c = 1


def test_errors_name_the_group():
    with pytest.raises(ValueError, match="prompt group 'p7' mixes reward maps of shapes"):
        group_baselines({"p7": [torch.zeros(2, 2), torch.zeros(4, 4)]})
    (baseline,) = group_baselines({"p": maps(0.0, 1.0)}).values()
    with pytest.raises(ValueError, match="clip must be > 0"):
        token_weights(torch.zeros(2, 3), baseline, clip=0.0)
