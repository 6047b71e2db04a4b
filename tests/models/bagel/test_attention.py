import torch

from trl_srum.models.bagel.attention import build_attention_layout
from trl_srum.models.bagel.cache import KVCache, append_rows


def test_training_mask_follows_the_official_rules():
    # One sample: text (3, causal), a noisy image (4), then text (2) that must not see the noisy image.
    layout = build_attention_layout([[(3, "causal"), (4, "noise"), (2, "causal")], [(2, "causal"), (3, "full")]])
    first = layout.mask[0]
    assert first[:3, :3].equal(torch.ones(3, 3, dtype=torch.bool).tril())  # causal text
    assert first[3:7, :7].all()  # the noisy image sees the text before it and all of itself
    assert not first[7:9, 3:7].any()  # later text never sees noisy latents
    assert first[7:9, :3].all() and first[8, 7]  # but sees earlier text, causally
    second = layout.mask[1]
    assert second[2:5, :5].all()  # a clean (full) chunk is bidirectional
    # Padding: the second sample is 5 tokens long; its padded key columns are hidden from its real rows.
    assert not second[:5, 5:].any()
    assert layout.query_valid.sum().item() == 14
    assert layout.query_index[1, :5].tolist() == [9, 10, 11, 12, 13]


def test_text_after_a_cache_is_bottom_right_causal():
    # Row 0 has 3 cached tokens (width 4 because of padding); two new text tokens follow.
    layout = build_attention_layout([[(2, "causal")]], cache_lengths=torch.tensor([3]), cache_width=4)
    expected = torch.tensor([[1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    assert layout.mask[0].equal(expected)


def test_append_rows_writes_after_each_rows_valid_prefix():
    cached = torch.arange(2 * 1 * 3 * 1, dtype=torch.float).view(2, 1, 3, 1)  # row 0: 3 valid, row 1: 1 valid
    new = torch.full((2, 1, 2, 1), -1.0)
    out = append_rows(cached, torch.tensor([3, 1]), new, torch.tensor([1, 2]))
    assert out.shape == (2, 1, 4, 1)
    assert out[0, 0, :, 0].tolist() == [0, 1, 2, -1]
    assert out[1, 0, :3, 0].tolist() == [3, -1, -1]


def test_cache_concat_pads_and_select_repeats_rows():
    short = KVCache.empty(1, 1, 1, 2, torch.float32, "cpu")
    long = KVCache([torch.ones(2, 1, 3, 2)], [torch.ones(2, 1, 3, 2)], torch.tensor([3, 2]), torch.tensor([3, 2]))
    both = KVCache.concat([short, long])
    assert both.width == 3 and both.lengths.tolist() == [0, 3, 2]
    assert both.select([2, 2]).next_positions.tolist() == [2, 2]
