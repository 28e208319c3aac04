"""The model folder: Auto classes load it as it is, with identical logits; the manifest guards it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gen_fm.config import ModelShape, PretrainConfig, Validation
from gen_fm.recipes import PRESETS
from gen_fm.model import add_hidden_dropout, build_model, load_model, max_positions, save_model
from gen_fm.tokenizer import PromptEncoder, model_layout
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import BOS, TokenLayout
from core.artifacts import ArtifactError, jsonable, manifest_hash
from core.sequences import SequenceConfig
from tests.tiny_folders import save_unit_model, write_id_artifact


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_fm_model")
    ids = write_id_artifact(root / "ids", [f"t{i}" for i in range(50)], (8, 8, 4))
    config = PretrainConfig.from_preset("tiny", num_user_buckets=7)
    layout = model_layout(ids.layout, config.model.num_user_buckets)
    torch.manual_seed(0)
    model = build_model(config, layout, max_history=5).eval()
    out = save_unit_model(root / "model", model, layout, ids, config, 5, training={"steps": 0})
    return model, out, ids, layout, config


def test_config_validation_and_presets():
    assert PretrainConfig.from_preset("small").model.head_dim == 32
    assert PretrainConfig.from_preset("tiny", optim={"lr": 0.5}).optim.lr == 0.5
    for name in PRESETS:
        c = PretrainConfig.from_preset(name)
        assert c.model.head_dim >= 32 and c.model.head_dim % 16 == 0 and c.preset == name
    with pytest.raises(ValueError, match="head size"):
        ModelShape(hidden_size=64, num_heads=4)  # head size 16: vLLM refuses it
    with pytest.raises(ValueError):
        Validation(judge={"num_beams": 5, "k": 10})
    with pytest.raises(ValueError):
        PretrainConfig.from_preset("huge")
    with pytest.raises(ValueError, match="unknown"):
        PretrainConfig.from_dict({"hidden": 3})
    with pytest.raises(TypeError, match="Optimisation"):
        PretrainConfig(optim={"lr": 0.1})  # a dict goes through from_dict
    c = PretrainConfig.from_preset("base", betas=[0.9, 0.95])
    assert c.optim.betas == (0.9, 0.95) and c.optim.epochs == 30  # the preset's recipe stays
    assert PretrainConfig.from_dict(json.loads(json.dumps(jsonable(c)))) == c


def test_model_shape(saved):
    model, _, ids, layout, config = saved
    assert model.config.vocab_size == layout.vocab_size == ids.layout.vocab_size + 4 + 7
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (
        model.config.max_position_embeddings
        == max_positions(config, layout, 5)
        == 3 + 6 * 3 + config.model.position_headroom
    )
    assert model.config.head_dim == 32


def test_folder_reloads_with_auto_classes_and_identical_logits(saved):
    model, out, ids, layout, _ = saved
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    enc = PromptEncoder.from_ids(ids, 7, layout)
    prompts = [enc.encode([1, 2, 3], user_id="u1"), enc.encode([4, 5, 6, 7], canvas="t2t")]
    text = tok.decode(prompts[0])
    assert tok(text)["input_ids"] == prompts[0]
    for p in prompts:
        x = torch.tensor([p])  # (1, T)
        with torch.no_grad():
            assert torch.equal(model(x).logits, again(x).logits)
    assert type(again).__name__ == "LlamaForCausalLM"
    assert again.get_output_embeddings().weight is again.get_input_embeddings().weight


def test_load_model_checks_manifest(saved, tmp_path):
    _, out, ids, layout, config = saved
    gm = load_model(out)
    assert gm.layout == layout and gm.config == config and gm.seq_config.max_history == 5
    assert np.array_equal(gm.ids.codes, ids.codes) and gm.ids.item_ids == ids.item_ids
    assert gm.manifest["kind"] == "gen_fm"
    assert gm.manifest["parents"]["semantic_ids"] == manifest_hash(ids.path)
    assert gm.manifest["training"] == {"steps": 0}
    # a damaged payload is refused
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_model(bad)


def test_save_refuses_an_id_map_that_is_not_on_disk(saved, tmp_path):
    model, _, ids, layout, config = saved
    mem = SemanticIDs(ids.item_ids, ids.codes, ids.codebook_sizes)
    with pytest.raises(ValueError, match="on disk"):
        save_model(
            tmp_path / "m",
            model,
            layout,
            mem,
            config,
            SequenceConfig(),
            data_fingerprint="x",
            dataset="unit",
            training={},
        )
    assert not (tmp_path / "m").exists()


def test_hidden_dropout_is_training_only_and_leaves_a_plain_llama():
    config = PretrainConfig.from_preset("tiny", num_user_buckets=0)
    layout = model_layout(TokenLayout((8, 8, 4)), 0)
    torch.manual_seed(0)
    model = build_model(config, layout, max_history=4)
    ids = torch.randint(5, layout.code_end, (2, 9))  # (B, T)
    model.eval()
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    keys = set(model.state_dict())
    handles = add_hidden_dropout(model, 0.3)
    assert len(handles) == 1 + 2 * config.model.num_layers
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain)  # eval: no effect
        model.train()
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert not torch.allclose(a, b) and not torch.allclose(a, plain)
    assert set(model.state_dict()) == keys  # no new weights: the folder stays a standard Llama
    assert add_hidden_dropout(model, 0.0) == []


def test_hidden_dropout_spares_the_positions_of_a_token_range():
    config = PretrainConfig.from_preset("tiny", num_user_buckets=0, dropout=0.0)
    layout = model_layout(TokenLayout((8, 8, 4)), 0)
    torch.manual_seed(0)
    model = build_model(config, layout, max_history=4)
    lo, hi = layout.offsets[0], layout.code_end
    codes = torch.randint(lo, hi, (2, 9))  # (B, T) every position spared
    mixed = torch.cat([torch.full((2, 1), BOS), codes[:, 1:]], 1)  # the first position is not
    model.eval()
    with torch.no_grad():
        plain, plain_mixed = model(input_ids=codes).logits, model(input_ids=mixed).logits
    add_hidden_dropout(model, 0.5, spared=(lo, hi))
    model.train()
    with torch.no_grad():
        assert torch.equal(model(input_ids=codes).logits, plain)
        out = model(input_ids=mixed).logits
    assert not torch.allclose(out[:, 0], plain_mixed[:, 0])
