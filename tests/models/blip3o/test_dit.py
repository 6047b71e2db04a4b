"""The DiT at full size, built on the meta device, against the official key list and parameter counts."""

import os

import pytest
import torch

from trl_srum.models.blip3o import Blip3oDiT, Blip3oDiTConfig

from ...helpers import golden_fixture


KEYS_FILE = golden_fixture("checkpoint_keys", "CHECKPOINT_KEYS_DIR") / "blip3o_dit_keys.tsv"
# reference/blip3o.md §4.1, counted by the official class at full size
OFFICIAL_PARAMETERS = {"8B": (3584, 1_365_010_336), "4B": (2048, 1_362_257_824)}


@pytest.mark.parametrize("size", ["8B", "4B"])
def test_full_size_dit_matches_the_official_parameters(size):
    backbone_hidden, parameters = OFFICIAL_PARAMETERS[size]
    with torch.device("meta"):
        dit = Blip3oDiT(Blip3oDiTConfig(latent_embedding_size=backbone_hidden))
    assert sum(parameter.numel() for parameter in dit.parameters()) == parameters
    # the SwiGLU width of the checkpoint, not the 7168 that diffusers >= 0.33 builds from the official DiT file
    assert dit.layers[0].feed_forward.linear_1.out_features == 4864

    if not KEYS_FILE.is_file() and not os.environ.get("CI"):
        pytest.skip(f"no DiT key list at {KEYS_FILE}")
    column = 1 if size == "8B" else 2
    with open(KEYS_FILE) as file:
        rows = [line.rstrip("\n").split("\t") for line in file.readlines()[1:]]
    expected = {
        row[0].removeprefix("model."): tuple(int(d) for d in row[column].strip("[]").split(",")) for row in rows
    }
    assert {name: tuple(parameter.shape) for name, parameter in dit.state_dict().items()} == expected
