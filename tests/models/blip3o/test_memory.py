import pytest

from trl_srum.models.blip3o.memory import build_on_meta, estimate, format_table, lora_parameters, memory_table


@pytest.fixture(scope="module")
def rows():
    return memory_table(lora_ranks=(16,), batch_size=4)


def test_memory_table_covers_every_setup(rows):
    assert {(row.model, row.backbone_precision, row.dit_training) for row in rows} == {
        (model, precision, training)
        for model in ("BLIP3o-8B", "BLIP3o-4B")
        for precision in ("bf16", "8-bit", "4-bit")
        for training in ("full", "LoRA r=16")
    }
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| BLIP3o-8B | 4-bit | LoRA r=16 |" in table


def test_memory_orders_as_expected(rows):
    by_setup = {(row.model, row.backbone_precision, row.dit_training): row for row in rows}
    for model in ("BLIP3o-8B", "BLIP3o-4B"):
        for training in ("full", "LoRA r=16"):
            weights = [by_setup[model, precision, training].weights for precision in ("bf16", "8-bit", "4-bit")]
            assert weights[0] > weights[1] > weights[2]
        assert by_setup[model, "bf16", "full"].total > 2 * by_setup[model, "bf16", "LoRA r=16"].gradients_and_optimizer
    # backbone + DiT of BLIP3o-8B in bf16 is about 19.3 GB (reference/blip3o.md §10): 18 GiB with a bf16 DiT
    assert 17.5 < by_setup["BLIP3o-8B", "bf16", "LoRA r=16"].weights < 18.5


def test_lora_parameter_count_and_activation_checkpointing():
    model = build_on_meta("BLIP3o-4B")
    # per block: 7 attention linears of 1792 x 1792, 3 SwiGLU linears of 1792 x 4864
    assert lora_parameters(model, 8) == 24 * 8 * (7 * 2 * 1792 + 3 * (1792 + 4864))
    kwargs = {"model": model, "batch_size": 2}
    with_checkpointing = estimate("BLIP3o-4B", "bf16", 8, checkpointing=True, **kwargs)
    without_checkpointing = estimate("BLIP3o-4B", "bf16", 8, checkpointing=False, **kwargs)
    assert with_checkpointing.activations < without_checkpointing.activations
    with pytest.raises(ValueError, match="backbone_precision"):
        estimate("BLIP3o-4B", "fp8", None, model=model)
