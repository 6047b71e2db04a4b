import pytest
import torch

from trl_srum.loss import nft_loss, srum_loss

from .helpers import golden_cases, golden_fixture


CASES = golden_cases(golden_fixture("srum_official", "SRUM_FIXTURE_DIR") / "cases.json", "loss_cases")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_self_constraint_matches_released_code(case):
    def tensor(key):
        return torch.tensor(case[key])

    loss, metrics = srum_loss(
        tensor("v_pred"),
        tensor("noise"),
        tensor("latent_sample"),
        tensor("token_reward"),
        anchor_weight=case["lambda_constraint"],
        latents_anchor=tensor("latent_anchor"),
    )
    assert loss.item() == pytest.approx(case["loss"], rel=1e-5)
    assert metrics["loss_reward"] == pytest.approx(case["loss_reward"], rel=1e-5)
    assert metrics["loss_anchor"] == pytest.approx(case["loss_constraint"], rel=1e-5)


def _random_batch(num_tokens=10, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(num_tokens, dim, generator=generator) for _ in range(3)]


def test_anchor_defaults_to_latents():
    v, noise, latents = _random_batch()
    rewards = torch.rand(10)
    default, _ = srum_loss(v, noise, latents, rewards)
    explicit, _ = srum_loss(v, noise, latents, rewards, latents_anchor=latents)
    assert default.item() == explicit.item()


def test_packed_batch_is_a_token_weighted_mean():
    # Two images packed together, of 3 and 9 tokens: the loss is the mean over all tokens, not the mean of per-image
    # means. The small image is predicted exactly (squared error 0) and every token of the large one is off by 1 in
    # every channel (squared error 1), so the token mean is 9/12 while the mean of image means would be 1/2.
    _, noise, latents = _random_batch(num_tokens=12)
    v = noise - latents
    v[3:] += 1.0
    rewards = torch.ones(12)
    packed, _ = srum_loss(v, noise, latents, rewards, anchor_weight=0.0)
    first, _ = srum_loss(v[:3], noise[:3], latents[:3], rewards[:3], anchor_weight=0.0)
    second, _ = srum_loss(v[3:], noise[3:], latents[3:], rewards[3:], anchor_weight=0.0)
    assert (first.item(), second.item()) == pytest.approx((0.0, 1.0), abs=1e-6)
    assert packed.item() == pytest.approx(9 / 12, rel=1e-6)


def test_reference_constraint_pulls_toward_v_ref():
    v, noise, latents = _random_batch()
    v_ref = v + 0.5
    loss, metrics = srum_loss(v, noise, latents, torch.zeros(10), anchor_weight=0.0, reference_weight=2.0, v_ref=v_ref)
    assert metrics["loss_reference"] == pytest.approx(0.25, rel=1e-6)
    assert loss.item() == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError, match="needs v_ref"):
        srum_loss(v, noise, latents, torch.zeros(10), reference_weight=1.0)


def test_reference_constraint_does_not_backpropagate_into_the_reference():
    v, noise, latents = _random_batch()
    v_ref = torch.randn_like(v, requires_grad=True)
    v = v.clone().requires_grad_(True)
    loss, _ = srum_loss(v, noise, latents, torch.ones(10), reference_weight=0.5, v_ref=v_ref)
    loss.backward()
    assert v.grad is not None and v_ref.grad is None


class TestRepulsion:
    def test_negative_reward_pushes_prediction_away_until_the_margin(self):
        _, noise, latents = _random_batch(num_tokens=1, dim=4)
        target = noise - latents
        near = (target + 0.1).requires_grad_(True)  # squared error 0.01 < margin
        loss, _ = srum_loss(near, noise, latents, torch.tensor([-1.0]), anchor_weight=0.0, repulsion_margin=1.0)
        loss.backward()
        # Gradient descent moves the prediction further from the target.
        step = near.detach() - 0.1 * near.grad
        assert (step - target).pow(2).mean() > (near.detach() - target).pow(2).mean()

        far = (target + 2.0).requires_grad_(True)  # squared error 4 > margin: no more push
        loss, _ = srum_loss(far, noise, latents, torch.tensor([-1.0]), anchor_weight=0.0, repulsion_margin=1.0)
        loss.backward()
        assert loss.item() == 0.0 and torch.count_nonzero(far.grad) == 0

    def test_repulsion_is_bounded(self):
        v, noise, latents = _random_batch()
        for scale in (0.0, 1.0, 10.0, 1e3):
            loss, _ = srum_loss(v * scale, noise, latents, -torch.ones(10), anchor_weight=0.0)
            assert 0.0 <= loss.item() <= 1.0

    def test_non_negative_rewards_never_repel(self):
        v, noise, latents = _random_batch()
        _, metrics = srum_loss(v, noise, latents, torch.rand(10))
        assert metrics["repelled_fraction"] == 0.0


def test_shape_and_value_errors_name_the_problem():
    v, noise, latents = _random_batch()
    with pytest.raises(ValueError, match="token_rewards must be"):
        srum_loss(v, noise, latents, torch.ones(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        srum_loss(v, noise, latents, torch.full((10,), float("nan")))
    with pytest.raises(ValueError, match="must all be"):
        srum_loss(v, noise[:5], latents, torch.ones(10))
    with pytest.raises(ValueError, match="latents_anchor must be"):
        srum_loss(v, noise, latents, torch.ones(10), latents_anchor=latents[:5])


class TestNegativeAwareLoss:
    """`nft_loss`: the group-centred, negative-aware objective."""

    @staticmethod
    def batch(num_tokens=6, dim=4, seed=0):
        generator = torch.Generator().manual_seed(seed)
        v_old, noise, latents = (torch.randn(num_tokens, dim, generator=generator) for _ in range(3))
        return v_old, noise, latents

    def gradient_at_old(self, weights: torch.Tensor, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        v_old, noise, latents = self.batch(num_tokens=len(weights))
        v = v_old.clone().requires_grad_(True)
        loss, _ = nft_loss(v, v_old, noise, latents, weights, beta=beta)
        loss.backward()
        return v.grad, v_old - (noise - latents)

    @pytest.mark.parametrize("beta", [1.0, 0.5, 2.0])
    def test_at_weight_one_half_the_gradient_vanishes_at_the_old_model(self, beta):
        gradient, _ = self.gradient_at_old(torch.full((6,), 0.5), beta)
        torch.testing.assert_close(gradient, torch.zeros_like(gradient), atol=1e-7, rtol=0)

    def test_a_positive_advantage_pulls_toward_the_target_and_a_negative_one_pushes_away(self):
        weights = torch.tensor([1.0, 0.9, 0.6, 0.4, 0.1, 0.0])
        gradient, error = self.gradient_at_old(weights)
        # Gradient descent changes the error of token i by -step * <gradient_i, error_i>.
        alignment = (gradient * error).sum(dim=-1)
        assert (alignment[:3] > 0).all() and (alignment[3:] < 0).all()
        # ... in proportion to 2w - 1: 2(2w - 1)(v_old - u) / D
        torch.testing.assert_close(gradient, 2 * (2 * weights[:, None] - 1) * error / (6 * 4))

    def test_the_push_of_negative_advantages_stays_bounded(self):
        # The adversarial case: every token pushed away, for many more steps than a round takes. A loss like
        # -|v - u|^2 would run off; this one settles at the minimum of a parabola.
        v_old, noise, latents = self.batch()
        v = v_old.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([v], lr=5.0)  # the loss is a mean over 24 values: a large step converges
        for _ in range(500):
            loss, _ = nft_loss(v, v_old, noise, latents, torch.zeros(6))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            assert loss.item() >= 0.0
        # The minimum of (2 v_old - v - u)^2 is v = 2 v_old - u.
        torch.testing.assert_close(v.detach(), 2 * v_old - (noise - latents), atol=1e-5, rtol=0)

    def test_reference_pull_and_errors(self):
        v_old, noise, latents = self.batch()
        loss, metrics = nft_loss(
            v_old + 1, v_old, noise, latents, torch.full((6,), 0.5), reference_weight=2.0, v_ref=v_old
        )
        assert metrics["loss_reference"] == pytest.approx(1.0)
        with pytest.raises(ValueError, match="token_weights must lie in"):
            nft_loss(v_old, v_old, noise, latents, torch.full((6,), 1.5))
        with pytest.raises(ValueError, match="token_weights must be"):
            nft_loss(v_old, v_old, noise, latents, torch.full((5,), 0.5))
        with pytest.raises(ValueError, match="NaN or inf"):
            nft_loss(v_old, v_old, noise, latents, torch.full((6,), float("nan")))
        with pytest.raises(ValueError, match="beta must be"):
            nft_loss(v_old, v_old, noise, latents, torch.full((6,), 0.5), beta=0.0)
