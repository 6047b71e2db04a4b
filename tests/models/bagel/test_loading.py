import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models
from transformers import AutoModel, PreTrainedTokenizerFast

from trl_srum.models import load_unified_model
from trl_srum.models.bagel import BagelConfig, BagelModel, conversion
from trl_srum.models.bagel.tiny import build_word_level_tokenizer, tiny_bagel_config, tiny_bagel_model

from ...helpers import golden_fixture, requires_fixture


KEY_LISTS_DIR = golden_fixture("checkpoint_keys", "CHECKPOINT_KEYS_DIR")
FIXTURE_DIR = golden_fixture("bagel_tiny", "BAGEL_FIXTURE_DIR")
needs_fixture = requires_fixture(FIXTURE_DIR)


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        shapes[key] = tuple(int(size) for size in shape.strip("()").split(",") if size.strip())
    return shapes


@requires_fixture(KEY_LISTS_DIR)
@pytest.mark.parametrize("visual_und,use_lm_head", [(True, True), (False, False)])
def test_every_official_7b_key_is_accounted_for(visual_und, use_lm_head):
    """The 7B model on the meta device loads every key and shape of the official release (VAE included)."""
    config = BagelConfig(visual_und=visual_und, use_lm_head=use_lm_head)
    expected = BagelModel.expected_checkpoint_shapes(config)
    found = read_key_list(KEY_LISTS_DIR / "bagel7b_mot_keys.tsv")
    vae_keys = read_key_list(KEY_LISTS_DIR / "flux_ae_keys.tsv")
    found.update(conversion.vae_shapes_to_diffusers(vae_keys, config.vae_config))
    skipped = conversion.intentionally_absent_patterns(visual_und, use_lm_head)
    conversion.check_checkpoint_keys(expected, found, skipped, source="BAGEL-7B-MoT")
    assert len(found) == 1223 + len(vae_keys)
    loaded = set(expected) & set(found)
    if visual_und and use_lm_head:
        # Only the two fixed sin-cos tables are not loaded (they are recomputed).
        assert set(found) - loaded == set(conversion.FIXED_TABLE_KEYS)
    else:
        assert not any(key.startswith(("vit_model.", "connector.", "language_model.lm_head")) for key in expected)


@needs_fixture
def test_recomputed_position_tables_equal_the_checkpoint_ones():
    model = BagelModel.from_pretrained(FIXTURE_DIR)
    stored = load_file(FIXTURE_DIR / conversion.OFFICIAL_WEIGHTS_NAME)
    torch.testing.assert_close(model.latent_pos_embed.pos_embed, stored["latent_pos_embed.pos_embed"])
    torch.testing.assert_close(model.vit_pos_embed.pos_embed, stored["vit_pos_embed.pos_embed"])


@needs_fixture
def test_generation_only_loading_skips_understanding_weights():
    model = BagelModel.from_pretrained(FIXTURE_DIR, visual_und=False, use_lm_head=False)
    assert model.language_model.lm_head is None and not hasattr(model, "vit_model")
    assert not any(name.startswith(("vit_model", "connector")) for name, _ in model.named_parameters())
    full = BagelModel.from_pretrained(FIXTURE_DIR)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, full.get_parameter(name))
    with pytest.raises(ValueError, match="use_lm_head=False"):
        model.forward_text(model.new_cache(1), [[1, 2]], output_logits=True)
    with pytest.raises(ValueError, match="visual_und=False"):
        model.embed_images_for_understanding([torch.zeros(3, 14, 14)])


def copy_fixture(destination: Path, edit) -> Path:
    """A copy of the fixture folder whose `ema.safetensors` is passed through `edit`."""
    shutil.copytree(FIXTURE_DIR, destination)
    weights = load_file(destination / conversion.OFFICIAL_WEIGHTS_NAME)
    save_file(edit(weights), destination / conversion.OFFICIAL_WEIGHTS_NAME)
    return destination


@needs_fixture
@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda w: {k: v for k, v in w.items() if k != "llm2vae.bias"}, r"1 keys missing: llm2vae\.bias"),
        (lambda w: {**w, "language_model.extra.weight": torch.zeros(2)}, r"1 keys unexpected: language_model\.extra"),
        (lambda w: {**w, "vae2llm.bias": torch.zeros(3)}, r"vae2llm\.bias: checkpoint \(3,\) vs model \(64,\)"),
    ],
)
def test_official_checkpoint_with_bad_keys_is_refused(tmp_path, edit, message):
    folder = copy_fixture(tmp_path / "bagel", edit)
    with pytest.raises(ValueError, match=message):
        BagelModel.from_pretrained(folder)


@needs_fixture
def test_official_layout_round_trips_through_save_pretrained(tmp_path):
    model = BagelModel.from_pretrained(FIXTURE_DIR)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(reloaded, BagelModel)
    assert not (tmp_path / "ema.safetensors").exists() and "transformers_weights" not in reloaded.config.to_dict()
    for (name, parameter), (other_name, other) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert name == other_name
        torch.testing.assert_close(other, parameter, atol=0, rtol=0)


@torch.no_grad()
def test_save_pretrained_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_bagel_model(seed=3)
    model.save_pretrained(tmp_path)
    reloaded = BagelModel.from_pretrained(tmp_path).eval()
    assert reloaded.tokenizer is not None and len(reloaded.tokenizer) == len(model.tokenizer)

    generator = torch.Generator().manual_seed(0)
    noisy = [torch.randn(6, model.config.latent_dim, generator=generator)]
    inputs = model.prepare_flow_inputs(["a red circle"], noisy, [(2, 3)], torch.tensor([0.5]))
    assert torch.equal(reloaded(**inputs).velocity, model(**inputs).velocity)
    images = [
        model.generate_images(
            ["a star"], generators=[torch.Generator().manual_seed(1)], image_size=(8, 8), num_timesteps=3
        )[0].image
    ]
    assert torch.equal(
        reloaded.score_answers(images[0], ["what color ?"], ["red"]),
        model.score_answers(images[0], ["what color ?"], ["red"]),
    )


@torch.no_grad()
def test_half_precision_loading_keeps_the_vae_in_float32(tmp_path):
    tiny_bagel_model(seed=4).save_pretrained(tmp_path)
    model = BagelModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16 and model.vae.dtype == torch.float32
    image = model.generate_images(
        ["a red circle"], generators=[torch.Generator().manual_seed(0)], image_size=(8, 8), num_timesteps=3
    )[0]
    assert image.image.size == (8, 8) and image.latents.dtype == torch.float32


def test_saved_checkpoint_with_a_missing_key_is_refused(tmp_path):
    tiny_bagel_model(seed=5).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["vae.decoder.conv_out.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing: vae\.decoder\.conv_out\.bias"):
        BagelModel.from_pretrained(tmp_path)


def test_tokenizer_problems_are_named():
    model = tiny_bagel_model(seed=6)
    model._tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        model.prepare_flow_inputs(["a red circle"], [torch.zeros(4, model.config.latent_dim)], [(2, 2)], torch.ones(1))

    tokenizer = build_word_level_tokenizer()
    word_level = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    incomplete = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>")
    with pytest.raises(ValueError, match=r"no special tokens \['<\|im_start\|>'"):
        model.tokenizer = incomplete
    with pytest.raises(ValueError, match="im_start_token_id: tokenizer 2, config 7"):
        BagelModel(tiny_bagel_config(tokenizer, im_start_token_id=7)).tokenizer = tokenizer


@needs_fixture
def test_official_layout_with_tokenizer_files_takes_special_ids_from_the_tokenizer(tmp_path):
    folder = tmp_path / "bagel"
    shutil.copytree(FIXTURE_DIR, folder)
    (folder / "special_tokens.json").unlink()
    tokenizer = build_word_level_tokenizer()
    tokenizer.save_pretrained(folder)
    model = BagelModel.from_pretrained(folder)
    assert model.tokenizer is not None
    assert model.config.im_start_token_id == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert model.config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")


def test_official_7b_json_files_give_the_default_config(tmp_path):
    """The official loader's overrides: 26 of the 27 ViT layers, untied embeddings, no `qk_norm` field."""
    llm = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "max_position_embeddings": 32768, "tie_word_embeddings": True,
        "hidden_act": "silu", "qk_norm": True, "layer_module": "Qwen2MoTDecoderLayer",
    }  # fmt: skip
    vit = {
        "model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
        "num_attention_heads": 16, "patch_size": 14, "image_size": 980, "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-06, "num_channels": 3,
    }  # fmt: skip
    (tmp_path / "llm_config.json").write_text(json.dumps(llm))
    (tmp_path / "vit_config.json").write_text(json.dumps(vit))
    (tmp_path / conversion.OFFICIAL_WEIGHTS_NAME).touch()
    config, default = BagelConfig.from_pretrained(tmp_path), BagelConfig()
    assert config.vit_config.num_hidden_layers == 26 and not config.llm_config.tie_word_embeddings
    assert not hasattr(config.llm_config, "qk_norm")
    assert BagelModel.expected_checkpoint_shapes(config) == BagelModel.expected_checkpoint_shapes(default)
    assert config.im_start_token_id == default.im_start_token_id == 151644


def test_load_unified_model_places_the_model_on_the_named_device(tmp_path, monkeypatch):
    tiny_bagel_model(seed=5).save_pretrained(tmp_path)
    assert load_unified_model(tmp_path, "cpu").device.type == "cpu"

    # On an accelerator the whole model is mapped there while it loads (no GPU here: record what reaches the loader).
    seen = {}
    real = BagelModel.from_pretrained.__func__

    def recording(cls, path, **kwargs):
        seen.update(kwargs)
        kwargs.pop("device_map")
        return real(cls, path, **kwargs)

    monkeypatch.setattr(BagelModel, "from_pretrained", classmethod(recording))
    load_unified_model(tmp_path, "cuda:1", dtype=torch.float32)
    assert seen["device_map"] == {"": torch.device("cuda:1")}
