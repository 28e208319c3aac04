"""Soft prompts: training moves only the prompt, the folder round-trips, and the exported virtual
tokens are the same computation as the PEFT adapter (logits and constrained top-K)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_fm.config import PretrainConfig
from gen_fm.decode import recommend
from gen_fm.model import build_model, load_model
from gen_fm.tokenizer import model_layout
from prompt_tuning.adapter import (
    adapter_loss,
    load_adapter,
    read_adapter,
    save_adapter,
    train_adapter,
    trainable_parameters,
    wrap,
)
from prompt_tuning.config import PromptTuningStageConfig
from prompt_tuning.export import export_adapters, virtual_token, virtual_token_ids, with_soft_prompt
from semantic_ids.trie import PrefixTrie
from core.artifacts import ArtifactError, read_json
from tests.tiny_folders import save_unit_model, write_id_artifact

torch.set_num_threads(1)
N_ITEMS, SIZES, MAX_HISTORY = 30, (8, 8, 4), 4
TARGETS = {"home": 3, "search": 17}  # toy objective: each canvas always wants one title


def _save_base(root, ids, seed):
    config = PretrainConfig.from_preset("tiny", num_user_buckets=0, position_headroom=16)
    layout = model_layout(ids.layout, 0)
    torch.manual_seed(seed)
    model = build_model(config, layout, max_history=MAX_HISTORY).eval()
    with torch.no_grad():  # at N(0, 0.02) attention barely reads a prompt token: scale up like
        for name, p in model.named_parameters():  # trained weights, so a soft prompt can steer it
            if p.ndim == 2:
                p.mul_(5.0 if "embed" in name else 8.0)
    return save_unit_model(
        root / f"model{seed}", model, layout, ids, config, MAX_HISTORY, training={"steps": 0}
    )


def _examples(gen, canvas, n=48, seed=0):
    rng = np.random.default_rng(seed)
    enc = gen.prompt_encoder()
    target = enc.sid_tokens[TARGETS[canvas]].tolist()
    return [
        (enc.encode(rng.integers(0, N_ITEMS, rng.integers(1, MAX_HISTORY + 1)), canvas=canvas), target)
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt_tuning")
    ids = write_id_artifact(root / "ids", [f"t{i}" for i in range(N_ITEMS)], SIZES)
    base = _save_base(root, ids, seed=0)
    adapters, trained = {}, {}
    for i, canvas in enumerate(TARGETS):
        gen = load_model(base)
        config = PromptTuningStageConfig.create(
            canvas=canvas,
            num_virtual_tokens=4,
            lr=0.05,
            epochs=10,
            batch_size=16,
            seed=i,
            init="canvas_token",
            method="soft_prompt",
        )
        model = train_adapter(gen, _examples(gen, canvas), config)
        adapters[canvas] = save_adapter(
            root / f"adapter_{canvas}", model, gen, config, training={"examples": 48}
        )
        trained[canvas] = model
    return root, ids, base, adapters, trained


def test_config_validation():
    assert PromptTuningStageConfig().adapter.num_virtual_tokens == 8
    assert PromptTuningStageConfig().training.train_in_candidates  # trained as served
    assert not PromptTuningStageConfig.from_json({"canvas": "home"}).training.train_in_candidates  # older
    for bad in (
        dict(canvas="tv"),
        dict(init="text"),
        dict(num_virtual_tokens=0),
        dict(lr=0.0),
        dict(epochs=0),
        dict(batch_size=0),
        dict(seed=-1),
    ):
        with pytest.raises(ValueError):
            PromptTuningStageConfig.create(**bad)
    with pytest.raises(ValueError, match="unknown"):
        PromptTuningStageConfig.from_json({"canvas": "home", "tokens": 3})
    # the method: the canvas's own unless the config says; adapters saved before were soft prompts
    assert PromptTuningStageConfig.create(canvas="search").adapter_method == "soft_prompt"
    assert PromptTuningStageConfig.create(canvas="home").adapter_method == "none"  # served frozen
    assert PromptTuningStageConfig.create(canvas="collection").adapter_method == "lora"
    assert (
        PromptTuningStageConfig.create(canvas="collection", method="soft_prompt").adapter_method
        == "soft_prompt"
    )
    assert PromptTuningStageConfig.from_json({"canvas": "collection"}).adapter_method == "soft_prompt"
    for bad in (dict(method="prefix"), dict(lora_rank=0), dict(lora_lr=0.0)):
        with pytest.raises(ValueError):
            PromptTuningStageConfig.create(**bad)


def test_a_lora_learns_its_canvas_keeps_the_base_and_round_trips(world, tmp_path):
    """method="lora": only the low-rank weights train, the merged copy the server decodes with is
    the same computation, and the folder exports beside a soft prompt."""
    from prompt_tuning.export import as_served, lora_adapters

    _, _, base, adapters, _ = world
    gen = load_model(base)
    config = PromptTuningStageConfig.create(
        canvas="search", method="lora", lora_rank=4, lora_lr=0.02, epochs=10, batch_size=16
    )
    examples = _examples(gen, "search")
    L = gen.layout.sid_length
    untrained = adapter_loss(wrap(load_model(base), config), examples, L)
    model = train_adapter(gen, examples, config)
    lora_weights = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert trainable_parameters(model) == lora_weights > 0
    assert adapter_loss(model, examples, L) < 0.5 * untrained
    ids = torch.tensor([examples[0][0] + examples[0][1]])
    with torch.no_grad(), model.disable_adapter():  # the base weights under the LoRA never moved
        torch.testing.assert_close(model(input_ids=ids).logits, load_model(base).model(input_ids=ids).logits)
    served, prefix = as_served(base, model, "search")
    assert prefix == []
    with torch.no_grad():
        torch.testing.assert_close(
            served(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4
        )
    path = save_adapter(tmp_path / "lora", model, gen, config, training={"examples": 48})
    info = read_adapter(path)
    assert info.method == "lora" and info.prompt is None and info.config == config
    out = export_adapters(base, [adapters["home"], path], tmp_path / "exported")
    exported = load_model(out)  # verifies every file hash in the manifest, the LoRA's included
    assert set(virtual_token_ids(exported)) == {"home"}
    assert {c: r for c, (_, r) in lora_adapters(exported).items()} == {"search": 4}
    assert read_json(out / "manifest.json")["files"]["loras/search/adapter_model.safetensors"]


def test_training_lowers_loss_and_changes_no_base_weight(world):
    _, _, base, _, _ = world
    gen = load_model(base)
    before_weights = {k: v.clone() for k, v in gen.model.state_dict().items()}
    config = PromptTuningStageConfig.create(
        canvas="home", num_virtual_tokens=4, lr=0.05, epochs=10, batch_size=16, method="soft_prompt"
    )
    examples = _examples(gen, "home")
    L = gen.layout.sid_length
    untrained = adapter_loss(wrap(load_model(base), config), examples, L)
    model = train_adapter(gen, examples, config)
    assert trainable_parameters(model) == 4 * gen.model.config.hidden_size
    after = adapter_loss(model, examples, L)
    assert after < 0.5 * untrained, (untrained, after)
    for k, v in gen.model.state_dict().items():
        assert torch.equal(v, before_weights[k]), k


def test_candidate_masks_allow_exactly_the_codes_of_the_candidates(world):
    from prompt_tuning.adapter import CandidateMasks, _nll, _batch

    _, _, base, _, _ = world
    gen = load_model(base)
    trie = PrefixTrie(gen.ids.codes, gen.layout)
    inside = CandidateMasks(trie)
    enc = gen.prompt_encoder()
    L, V = gen.layout.sid_length, gen.model.config.vocab_size
    tokens = enc.sid_tokens  # (N, L)
    cands = [2, 5, 11, 17]
    examples = [
        (enc.encode([1, 2], canvas="search"), tokens[17].tolist()),  # inside its set
        (enc.encode([4], canvas="search"), tokens[9].tolist()),  # outside: added to it
        (enc.encode([3], canvas="search"), tokens[0].tolist()),
    ]  # no candidate set
    views = [inside.view(cands, 17), inside.view(cands, 9), inside.view(None, 0)]
    assert views[2] is None and sorted(views[1].rows.tolist()) == [2, 5, 9, 11, 17]
    ids, mask, labels = _batch(examples, L)
    target = labels[:, 1:]
    allowed = inside.mask(target, views, V)  # (B, T-1, V)
    for i, rows in ((0, cands), (1, cands + [9])):
        first = int(torch.nonzero(target[i] != -100)[0, 0])
        t = examples[i][1]
        for d in range(L):
            ok = {int(tokens[r][d]) for r in rows if list(tokens[r][:d]) == list(t[:d])}
            assert set(torch.nonzero(allowed[i, first + d]).flatten().tolist()) == ok
        assert allowed[i, :first].all()  # context positions: untouched
    assert allowed[2].all()  # an example without candidates keeps the whole vocabulary
    with torch.no_grad():  # a softmax over fewer tokens can only give the target more mass
        full, n = _nll(gen.model, ids, mask, labels)
        restricted, m = _nll(gen.model, ids, mask, labels, inside=inside, views=views)
    assert n == m == 3 * L and float(restricted) < float(full)
    config = PromptTuningStageConfig.create(
        canvas="search", num_virtual_tokens=4, lr=0.05, epochs=2, batch_size=2
    )
    train_adapter(load_model(base), examples, config, allow=[cands, cands, None])
    with pytest.raises(ValueError, match="allow has 1 entries"):
        train_adapter(load_model(base), examples, config, allow=[cands])


def test_canvas_token_init_and_position_headroom(world):
    _, _, base, _, _ = world
    gen = load_model(base)
    model = wrap(gen, PromptTuningStageConfig.create(canvas="search", num_virtual_tokens=3))
    row = gen.model.get_input_embeddings().weight[gen.layout.extra_id("<canvas_search>")]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, row.expand(3, -1))
    with pytest.raises(ValueError, match="headroom"):
        wrap(load_model(base), PromptTuningStageConfig.create(num_virtual_tokens=17, method="soft_prompt"))
    with pytest.raises(ValueError, match="served by the frozen model"):
        wrap(load_model(base), PromptTuningStageConfig.create(canvas="home"))


def test_save_load_round_trip(world):
    _, _, base, adapters, trained = world
    manifest = read_json(adapters["home"] / "manifest.json")
    assert manifest["kind"] == "prompt_adapter" and manifest["canvas"] == "home"
    assert manifest["trainable_parameters"] == 4 * 64
    assert (adapters["home"] / "adapter_config.json").is_file()
    loaded = load_adapter(load_model(base), adapters["home"])
    x = torch.tensor([load_model(base).prompt_encoder().encode([1, 2, 3], canvas="home")])  # (1, T)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, trained["home"](input_ids=x).logits)


def test_base_hash_mismatch_is_refused(world, tmp_path):
    root, ids, _, adapters, _ = world
    other = _save_base(tmp_path, ids, seed=1)
    with pytest.raises(ArtifactError, match="trained on model"):
        load_adapter(load_model(other), adapters["home"])
    with pytest.raises(ArtifactError, match="trained on model"):
        export_adapters(other, [adapters["home"]], tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_damaged_adapter_is_refused(world, tmp_path):
    import shutil

    _, _, _, adapters, _ = world
    bad = tmp_path / "bad"
    shutil.copytree(adapters["home"], bad)
    w = bad / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0" * 4)
    with pytest.raises(ArtifactError, match="adapter_model.safetensors"):
        read_adapter(bad)


@pytest.fixture(scope="module")
def exported(world):
    root, _, base, adapters, _ = world
    out = export_adapters(base, [adapters["home"], adapters["search"]], root / "exported")
    return load_model(out)


def test_export_layout_keeps_ids_and_maps_canvases(world, exported):
    _, _, base, _, _ = world
    gen = load_model(base)
    virtual = virtual_token_ids(exported)
    assert exported.layout.vocab()[: gen.layout.vocab_size] == gen.layout.vocab()
    assert virtual == {
        "home": list(range(gen.layout.vocab_size, gen.layout.vocab_size + 4)),
        "search": list(range(gen.layout.vocab_size + 4, gen.layout.vocab_size + 8)),
    }
    assert exported.layout.extra_id(virtual_token("search", 0)) == virtual["search"][0]
    assert exported.model.config.vocab_size == gen.layout.vocab_size + 8
    assert "peft" not in type(exported.model).__module__
    assert exported.manifest["parents"]["base_model"] and exported.manifest["parents"]["adapter_home"]


def test_export_parity_with_peft(world, exported):
    _, _, base, adapters, _ = world
    virtual = virtual_token_ids(exported)
    enc = exported.prompt_encoder()
    V = load_model(base).layout.vocab_size
    for canvas in TARGETS:
        peft_model = load_adapter(load_model(base), adapters[canvas])
        for rows in ([0], [5, 9, 2], [11, 4, 28, 7]):
            prompt = enc.encode(rows, canvas=canvas)
            with torch.no_grad():
                ref = peft_model(input_ids=torch.tensor([prompt])).logits  # (1, n + T, V)
                out = exported.model(
                    input_ids=torch.tensor([with_soft_prompt(virtual, canvas, prompt)])
                ).logits
            assert out.shape[1] == ref.shape[1]
            torch.testing.assert_close(out[..., :V], ref, atol=1e-5, rtol=0)


def test_export_recommend_parity_and_canvas_switch(world, exported):
    _, ids, base, adapters, _ = world
    trie = PrefixTrie.from_ids(ids)
    virtual = virtual_token_ids(exported)
    enc = exported.prompt_encoder()
    histories = [[0], [5, 9, 2], [11, 4, 28, 7]]
    top = {}
    for canvas in TARGETS:
        prompts = [enc.encode(h, canvas=canvas) for h in histories]
        got = recommend(exported.model, [with_soft_prompt(virtual, canvas, p) for p in prompts], trie, k=5)
        top[canvas] = [r.rows for r in got]
        assert all(r.rows[0] == TARGETS[canvas] for r in got)
        # the reference: PEFT injects the soft prompt itself, one prompt at a time (no padding)
        peft_model = load_adapter(load_model(base), adapters[canvas])
        for p, r in zip(prompts, got):
            ref = recommend(peft_model, [p], trie, k=5)[0]
            assert ref.rows == r.rows
            np.testing.assert_allclose(ref.scores, r.scores, atol=1e-4)
    assert top["home"] != top["search"]


def test_bad_examples_are_refused(world):
    _, _, base, _, _ = world
    gen = load_model(base)
    config = PromptTuningStageConfig.create(num_virtual_tokens=2, epochs=1, method="soft_prompt")
    prompt = gen.prompt_encoder().encode([1, 2])
    with pytest.raises(ValueError, match="target tokens"):
        train_adapter(gen, [(prompt, [7, 8])], config)
    with pytest.raises(ValueError, match="no training examples"):
        train_adapter(gen, [], config)
    with pytest.raises(ValueError, match="positions"):
        train_adapter(gen, [(prompt * 20, [7, 8, 9])], config)


def test_the_config_is_grouped_and_flat_adapter_configs_read_back():
    """Adapters saved before the grouping record the config flat; it reads back as the same config,
    and the grouped form round-trips."""
    import dataclasses

    assert [f.name for f in dataclasses.fields(PromptTuningStageConfig)] == [
        "canvas", "seed", "adapter", "training", "canvas_data",
    ]  # fmt: skip
    flat = {
        "canvas": "search", "method": "lora", "lora_rank": 8, "lora_lr": 2e-3, "num_virtual_tokens": 4,
        "lr": 0.05, "epochs": 2, "batch_size": 16, "seed": 1, "init": "random",
        "train_in_candidates": True, "full_finetune_lr": 1e-4, "max_train_examples": None,
        "max_eval_examples": 50, "eval_fraction": 0.3, "query_mode": "quantized", "num_anchors": 2,
        "min_theme_titles": 10,
    }  # fmt: skip
    config = PromptTuningStageConfig.from_json(flat)
    assert config == PromptTuningStageConfig.create(**flat)
    assert (config.adapter.lora_rank, config.training.lora_lr, config.canvas_data.query_mode) == (
        8, 2e-3, "quantized",
    )  # fmt: skip
    assert PromptTuningStageConfig.from_json(dataclasses.asdict(config)) == config
    with pytest.raises(ValueError, match="unknown prompt-tuning config keys: \\['tokens'\\]"):
        PromptTuningStageConfig.from_json({"training": {"tokens": 3}})
