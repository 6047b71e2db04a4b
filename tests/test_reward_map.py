import math

import pytest
import torch

from trl_srum.reward_map import RewardMapStats, build_reward_map

from .helpers import golden_cases, golden_fixture


CASES = golden_cases(golden_fixture("srum_official", "SRUM_FIXTURE_DIR") / "cases.json", "reward_map_cases")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_official_mode_matches_released_code(case):
    token_map = build_reward_map(
        case["global_score"],
        case["regions"],
        (case["image_width"], case["image_height"]),
        tuple(case["token_grid"]),
        mode="official",
    )
    expected = torch.tensor(case["token_reward"])
    assert token_map.shape == expected.shape
    torch.testing.assert_close(token_map, expected, atol=1e-5, rtol=1e-5)


def test_malformed_boxes_are_skipped_and_counted():
    stats = RewardMapStats()
    regions = [
        {"bbox": [1, 2, 3], "score": 1.0},  # wrong length
        {"bbox": [50, 40, 10, 20], "score": 1.0},  # inverted
        {"bbox": [10, 10, 10, 30], "score": 1.0},  # empty
        {"bbox": [200, 200, 300, 300], "score": 1.0},  # outside the image
        {"bbox": ["a", 0, 4, 4], "score": 1.0},  # not numbers
        {"score": 1.0},  # no box at all
        {"bbox": [0, 0, 16, 16], "score": None},  # no score
        {"bbox": [0, 0, 16, 16], "score": 0.5},  # valid
    ]
    token_map = build_reward_map(0.0, regions, (64, 64), (4, 4), stats=stats)
    assert stats.skipped_boxes == 6
    assert stats.missing_scores == 1
    assert token_map[0, 0] == pytest.approx(0.5 * 0.75)
    assert token_map[3, 3] == pytest.approx(0.5 * 0.5)


def test_out_of_range_scores_are_clamped_and_counted():
    stats = RewardMapStats()
    clamped = build_reward_map(8.0, [{"bbox": [0, 0, 32, 32], "score": -3.0}], (32, 32), (2, 2), stats=stats)
    assert stats.clamped_scores == 2
    # g = 8 -> 1 (factor 1); s = -3 -> -1 has no effect on the 0.5 background.
    torch.testing.assert_close(clamped, torch.full((2, 2), 0.5))


def test_missing_global_counts_and_acts_as_zero():
    stats = RewardMapStats()
    missing = build_reward_map(None, [], (32, 32), (2, 2), stats=stats)
    zero = build_reward_map(0.0, [], (32, 32), (2, 2))
    assert stats.missing_global == 1
    torch.testing.assert_close(missing, zero)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_raise(bad):
    with pytest.raises(ValueError, match="global score is"):
        build_reward_map(bad, [], (32, 32), (2, 2))
    with pytest.raises(ValueError, match="score of region 0 is"):
        build_reward_map(0.5, [{"bbox": [0, 0, 8, 8], "score": bad}], (32, 32), (2, 2))


def test_unknown_mode_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="unknown reward map mode"):
        build_reward_map(0.0, [], (32, 32), (2, 2), mode="positive")
    with pytest.raises(ValueError, match="must be positive"):
        build_reward_map(0.0, [], (0, 32), (2, 2))


class TestSignedMode:
    def test_negative_region_is_negative_and_bounded(self):
        regions = [{"bbox": [0, 0, 32, 64], "score": -0.8}, {"bbox": [32, 0, 64, 64], "score": 0.9}]
        token_map = build_reward_map(0.2, regions, (64, 64), (4, 4), mode="signed")
        # R = (g + s) / 2 on each half.
        torch.testing.assert_close(token_map[:, :2], torch.full((4, 2), (0.2 - 0.8) / 2))
        torch.testing.assert_close(token_map[:, 2:], torch.full((4, 2), (0.2 + 0.9) / 2))

    def test_background_follows_global_sign(self):
        good = build_reward_map(0.6, [], (32, 32), (2, 2), mode="signed")
        bad = build_reward_map(-0.6, [], (32, 32), (2, 2), mode="signed")
        torch.testing.assert_close(good, torch.full((2, 2), 0.3))
        torch.testing.assert_close(bad, torch.full((2, 2), -0.3))

    def test_overlap_keeps_most_confident_verdict(self):
        regions = [{"bbox": [0, 0, 32, 32], "score": 0.3}, {"bbox": [0, 0, 32, 32], "score": -0.9}]
        token_map = build_reward_map(0.0, regions, (32, 32), (2, 2), mode="signed")
        torch.testing.assert_close(token_map, torch.full((2, 2), -0.45))

    def test_range_is_minus_one_to_one(self):
        generator = torch.Generator().manual_seed(0)
        for _ in range(50):
            g = float(torch.rand(1, generator=generator) * 4 - 2)
            regions = [
                {"bbox": torch.randint(0, 64, (4,), generator=generator).sort().values.tolist(), "score": float(s)}
                for s in torch.rand(5, generator=generator) * 6 - 3
            ]
            token_map = build_reward_map(g, regions, (64, 64), (8, 8), mode="signed")
            assert token_map.min() >= -1.0 and token_map.max() <= 1.0


class TestPooling:
    # A 1024 px image on BLIP3o's 8x8 grid: every token covers a 128 x 128 cell whose centre is at 64 + 128k.
    SIZE, GRID = (1024, 1024), (8, 8)
    SMALL_BOX = {"bbox": [10, 10, 40, 40], "score": 1.0}  # inside token (0, 0), away from its centre

    def test_a_box_smaller_than_a_token_changes_that_token_under_area_pooling(self):
        area = build_reward_map(1.0, [self.SMALL_BOX], self.SIZE, self.GRID, pooling="area")
        # Official map: 0.5 background, 1.0 on the box (30 x 30 of the 128 x 128 cell).
        expected = 0.5 + 0.5 * (30 * 30) / (128 * 128)
        assert area[0, 0].item() == pytest.approx(expected, rel=1e-6)
        others = area.flatten()[1:]
        assert torch.equal(others, torch.full_like(others, 0.5))

    def test_bilinear_pooling_reads_only_token_centres(self):
        # The released behaviour, kept for parity: the same box has no effect at all.
        bilinear = build_reward_map(1.0, [self.SMALL_BOX], self.SIZE, self.GRID, pooling="bilinear")
        assert torch.equal(bilinear, torch.full(self.GRID, 0.5))

    def test_area_pooling_is_the_mean_over_each_cell(self):
        regions = [{"bbox": [100, 300, 700, 420], "score": 0.6}, {"bbox": [0, 0, 1024, 90], "score": -1.0}]
        for mode in ("official", "signed"):
            area = build_reward_map(0.3, regions, self.SIZE, self.GRID, mode, pooling="area")
            pixels = build_reward_map(0.3, regions, self.SIZE, self.SIZE[::-1], mode, pooling="bilinear")
            cell_means = pixels.double().reshape(8, 128, 8, 128).mean(dim=(1, 3))
            torch.testing.assert_close(area.double(), cell_means, atol=1e-7, rtol=0)

    def test_unknown_pooling_is_refused(self):
        with pytest.raises(ValueError, match="unknown reward map pooling 'nearest'"):
            build_reward_map(0.0, [], self.SIZE, self.GRID, pooling="nearest")
