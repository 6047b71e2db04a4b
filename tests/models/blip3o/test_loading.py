import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BitsAndBytesConfig

from trl_srum.models.blip3o import Blip3oModel, Blip3oPixelDecoder
from trl_srum.models.blip3o.conversion import official_config_to_blip3o, official_state_dict_to_blip3o
from trl_srum.models.blip3o.tiny import TINY_FEATURE_DIM, tiny_blip3o

from ...helpers import golden_fixture, requires_fixture


FIXTURE_DIR = golden_fixture("blip3o_tiny", "BLIP3O_FIXTURE_DIR")
needs_fixture = requires_fixture(FIXTURE_DIR)


def flow_loss(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = [torch.randn(64, TINY_FEATURE_DIM, generator=generator) for _ in range(2)]
    inputs = model.prepare_flow_inputs(["a red cube", None], latents, [(8, 8)] * 2, torch.tensor([0.3, 0.8]))
    return model(**inputs).velocity.pow(2).mean()


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    """A tiny BLIP3o saved with its processor and decoder."""
    path = tmp_path_factory.mktemp("tiny_blip3o")
    tiny_blip3o().save_pretrained(path)
    return path


def official_folder(path: Path, **config_changes) -> Path:
    """The fixture as an official Hub folder: its flat config.json and its weights as model.safetensors."""
    with open(FIXTURE_DIR / "config.json") as file:
        config = json.load(file) | config_changes
    path.mkdir(exist_ok=True)
    with open(path / "config.json", "w") as file:
        json.dump(config, file)
    os.symlink(FIXTURE_DIR / "weights.safetensors", path / "model.safetensors")
    return path


def fixture_dit_config() -> dict:
    with open(FIXTURE_DIR / "dit_config.json") as file:
        return json.load(file)


@torch.no_grad()
def test_save_and_load_round_trip(saved_tiny):
    model = tiny_blip3o()
    loaded = AutoModel.from_pretrained(saved_tiny)
    assert type(loaded) is Blip3oModel and not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # tied embeddings stay tied, the backbone stays frozen, and the companions come back
    assert loaded.backbone.lm_head.weight is loaded.backbone.get_input_embeddings().weight
    assert not any(parameter.requires_grad for parameter in loaded.backbone.parameters())
    assert loaded.processor.tokenizer.get_vocab() == model.processor.tokenizer.get_vocab()
    assert (
        loaded.tokenize_generation_prompts(["a cat"])[0].tolist()
        == model.tokenize_generation_prompts(["a cat"])[0].tolist()
    )
    for name, tensor in model.decoder.unet.state_dict().items():
        assert torch.equal(loaded.decoder.unet.state_dict()[name], tensor), name
    assert torch.equal(flow_loss(loaded), flow_loss(model))


def test_load_without_decoder(saved_tiny, tmp_path):
    assert Blip3oModel.from_pretrained(saved_tiny, load_decoder=False).decoder is None
    shutil.copytree(saved_tiny, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "diffusion-decoder" / "vae")
    with pytest.raises(FileNotFoundError, match="vae"):
        Blip3oModel.from_pretrained(tmp_path)
    shutil.rmtree(tmp_path / "diffusion-decoder")
    assert Blip3oModel.from_pretrained(tmp_path).decoder is None
    with pytest.raises(FileNotFoundError, match="unet, vae, scheduler"):
        Blip3oModel.from_pretrained(tmp_path, load_decoder=True)
    with pytest.raises(FileNotFoundError, match="diffusion-decoder"):
        Blip3oPixelDecoder.from_pretrained(str(tmp_path))


def test_dit_config_is_only_for_official_checkpoints(saved_tiny):
    with pytest.raises(ValueError, match="only for official checkpoints"):
        Blip3oModel.from_pretrained(saved_tiny, dit_config={"dim": 32})


@needs_fixture
@torch.no_grad()
def test_official_layout_loads_on_the_fly(tmp_path):
    model = Blip3oModel.from_pretrained(official_folder(tmp_path), dit_config=fixture_dit_config())
    golden = load_file(FIXTURE_DIR / "cases.safetensors")
    # the 4.51 keys are remapped, the sparse embedding is expanded and tied to lm_head
    condition = model.encode_prompts([golden["a.prompt0.input_ids"]])[0]
    torch.testing.assert_close(condition, golden["a.prompt0.condition"], rtol=0, atol=1e-4)
    assert model.backbone.lm_head.weight is model.backbone.get_input_embeddings().weight
    assert not any(parameter.requires_grad for parameter in model.backbone.parameters())
    assert model.processor is None and model.decoder is None
    # one tensor of every group lands where transformers >= 5 keeps it (reference/blip3o.md §7)
    official = load_file(FIXTURE_DIR / "weights.safetensors")
    state_dict = model.state_dict()
    for name, official_name in [
        ("backbone.model.visual.patch_embed.proj.weight", "visual.patch_embed.proj.weight"),
        ("backbone.model.visual.merger.mlp.2.bias", "visual.merger.mlp.2.bias"),
        ("backbone.model.language_model.layers.1.self_attn.q_proj.bias", "model.layers.1.self_attn.q_proj.bias"),
        ("backbone.model.language_model.norm.weight", "model.norm.weight"),
        ("dit.layers.1.attn2.to_out.0.weight", "model.dit.model.layers.1.attn2.to_out.0.weight"),
        ("latent_queries", "model.latent_queries"),
    ]:
        assert torch.equal(state_dict[name], official[official_name]), name
    # the fixture's sparse embedding: the listed rows hold the values, every other row is zero
    embedding, rows = (
        state_dict["backbone.model.language_model.embed_tokens.weight"],
        official["model.embed_tokens.weight.rows"],
    )
    assert torch.equal(embedding[rows], official["model.embed_tokens.weight.values"])
    assert embedding.abs().sum(dim=1).count_nonzero() == len(rows)


@needs_fixture
def test_official_decoder_is_read_in_its_bf16_variant(tmp_path):
    folder = official_folder(tmp_path)
    decoder = tiny_blip3o().decoder
    decoder.unet.save_pretrained(folder / "diffusion-decoder" / "unet", variant="bf16")
    decoder.vae.save_pretrained(folder / "diffusion-decoder" / "vae", variant="bf16")
    decoder.scheduler.save_pretrained(folder / "diffusion-decoder" / "scheduler")
    model = Blip3oModel.from_pretrained(folder, dit_config=fixture_dit_config())
    for name, tensor in decoder.unet.state_dict().items():
        assert torch.equal(model.decoder.unet.state_dict()[name], tensor), name


@needs_fixture
def test_official_sharded_checkpoint(tmp_path):
    state_dict = load_file(FIXTURE_DIR / "weights.safetensors")
    names = sorted(state_dict)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({name: state_dict[name] for name in shard_names}, tmp_path / shard)
    index = {"weight_map": {name: shard for shard, shard_names in shards.items() for name in shard_names}}
    with open(tmp_path / "model.safetensors.index.json", "w") as file:
        json.dump(index, file)
    shutil.copy(FIXTURE_DIR / "config.json", tmp_path / "config.json")
    model = Blip3oModel.from_pretrained(tmp_path, dit_config=fixture_dit_config())
    torch.testing.assert_close(model.latent_queries.data, state_dict["model.latent_queries"])


@needs_fixture
def test_official_query_count_mismatch_is_named(tmp_path):
    with pytest.raises(ValueError, match="64 latent queries but the config asks for num_queries=32"):
        Blip3oModel.from_pretrained(official_folder(tmp_path, n_query=32), dit_config=fixture_dit_config())


@needs_fixture
def test_official_conversion_rejects_unknown_keys_and_bad_dits():
    with open(FIXTURE_DIR / "config.json") as file:
        official_config = json.load(file)
    config = official_config_to_blip3o(official_config, fixture_dit_config())
    with pytest.raises(ValueError, match="extra_head.weight"):
        official_state_dict_to_blip3o({"extra_head.weight": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="latent_queries"):
        official_state_dict_to_blip3o({"model.norm.weight": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="patch_size"):
        official_config_to_blip3o(official_config, fixture_dit_config() | {"patch_size": 2})
    with pytest.raises(ValueError, match="hidden size"):
        official_config_to_blip3o(official_config, fixture_dit_config() | {"latent_embedding_size": 48})


def test_8bit_backbone_runs_a_forward_and_a_dit_lora_backward(saved_tiny):
    import bitsandbytes as bnb

    model = Blip3oModel.from_pretrained(
        saved_tiny, quantization_config=BitsAndBytesConfig(load_in_8bit=True), load_decoder=False
    )
    assert isinstance(model.backbone.model.language_model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    assert isinstance(model.backbone.model.visual.blocks[0].attn.qkv, bnb.nn.Linear8bitLt)
    assert type(model.dit.layers[0].feed_forward.linear_1) is torch.nn.Linear
    assert type(model.backbone.lm_head) is torch.nn.Linear
    with torch.no_grad():
        condition = model.encode_prompts(model.tokenize_generation_prompts(["a red cube"]))
    assert condition.isfinite().all()

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=model.generation_lora_target_modules)).train()
    flow_loss(peft_model).backward()
    lora_grads = [parameter.grad for name, parameter in peft_model.named_parameters() if "lora_B" in name]
    assert lora_grads and all(grad is not None for grad in lora_grads)
    assert any(grad.abs().sum() > 0 for grad in lora_grads)


def test_4bit_backbone_trains_a_dit_lora(saved_tiny):
    # bitsandbytes 0.50.2 on CPU: an eval-mode no-grad pass through a biased 4-bit layer repacks its weight and breaks
    # later training through it, so this test trains without any inference pass first
    import bitsandbytes as bnb

    quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = Blip3oModel.from_pretrained(saved_tiny, quantization_config=quantization_config, load_decoder=False)
    assert isinstance(model.backbone.model.language_model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert type(model.dit.layers[0].attn1.to_q) is torch.nn.Linear
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=model.generation_lora_target_modules)).train()
    flow_loss(peft_model).backward()
    assert any(parameter.grad.abs().sum() > 0 for name, parameter in peft_model.named_parameters() if "lora_B" in name)

    # a rollout in between is fine as long as no gradient has to cross the backbone (the queries stay frozen)
    peft_model.eval()
    with torch.no_grad():
        model.encode_prompts(model.tokenize_generation_prompts(["a red cube"]))
    peft_model.train()
    peft_model.zero_grad()
    flow_loss(peft_model).backward()
    assert any(parameter.grad.abs().sum() > 0 for name, parameter in peft_model.named_parameters() if "lora_B" in name)
