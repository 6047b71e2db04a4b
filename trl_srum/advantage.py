"""Dense, group-centred advantages: how much better each token of a candidate scored than its prompt's other candidates.

For one prompt, the K candidates' reward maps ``R_k`` (rows x cols each) give a per-token baseline, the group's mean
map ``b = mean_k R_k``, and one scale, the root-mean-square deviation ``s`` of the group's maps from it. A token's
advantage is ``A = clip((R_k - b) / (s + eps), -c, c)`` and its weight in the negative-aware loss
(`trl_srum.loss.nft_loss`) is ``w = ½ + A / 2c`` in [0, 1].

Why centre per token rather than per image: a candidate whose maps equal its group's contributes exactly nothing,
whatever the map's shape inside the image, and the background reward every candidate shares cancels. Why one scale
per group rather than per token: with K around 8, a per-token standard deviation is noise, and a token where every
candidate agrees would divide 0 by almost 0.
"""

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch


# As in DiffusionNFT: keeps a group whose candidates barely differ from blowing its tiny differences up to ±c.
ADVANTAGE_EPS = 1e-4


@dataclass(frozen=True)
class GroupBaseline:
    """The statistics of one prompt's candidates that their advantages are measured against."""

    mean: torch.Tensor
    scale: float
    size: int

    @property
    def mixed(self) -> bool:
        """Whether the candidates scored differently at all (only such groups carry a training signal)."""
        return self.scale > 0.0


def group_baselines(reward_maps: Mapping[Hashable, Sequence[torch.Tensor]]) -> dict[Hashable, GroupBaseline]:
    """The baseline of every group from its candidates' reward maps (each of shape (rows, cols)).

    Raises:
        ValueError: naming a group whose maps differ in shape (its candidates must share one image size) or that has
            no maps.
    """
    baselines = {}
    for key, maps in reward_maps.items():
        if not maps:
            raise ValueError(f"prompt group {key!r} has no reward maps")
        shapes = {tuple(m.shape) for m in maps}
        if len(shapes) > 1:
            raise ValueError(
                f"prompt group {key!r} mixes reward maps of shapes {sorted(shapes)}: draw one size per prompt"
            )
        stacked = torch.stack([m.double() for m in maps])
        mean = stacked.mean(dim=0)
        scale = float((stacked - mean).pow(2).mean().sqrt())
        baselines[key] = GroupBaseline(mean.float(), scale, len(maps))
    return baselines


def token_weights(rewards: torch.Tensor, baseline: GroupBaseline, clip: float) -> torch.Tensor:
    """``½ + A / 2c`` per token, with ``A`` the clipped, group-centred advantage of the candidate whose map is
    `rewards` (the same shape as the baseline's mean)."""
    if clip <= 0:
        raise ValueError(f"the advantage clip must be > 0; got {clip}")
    if rewards.shape != baseline.mean.shape:
        raise ValueError(
            f"reward map of shape {tuple(rewards.shape)} against a baseline of {tuple(baseline.mean.shape)}"
        )
    advantages = ((rewards.double() - baseline.mean.double()) / (baseline.scale + ADVANTAGE_EPS)).clamp(-clip, clip)
    return (0.5 + advantages / (2.0 * clip)).float()
