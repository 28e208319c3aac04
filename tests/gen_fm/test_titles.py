"""Title tokens: one history position per title, rows composed from codes + identity, baked for serving."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gen_fm.batches import TITLE_COLUMNS, EpochTensors, make_title_example
from gen_fm.config import ModelShape, PretrainConfig, TitleOptions
from gen_fm.decode import recommend, recommend_titles, title_tokens
from gen_fm.model import build_model, load_model, sasrec_init
from gen_fm.titles import attach_title_embedding, bake_title_embeddings, extend_titles, sync_title_rows
from gen_fm.tokenizer import PromptEncoder
from semantic_ids.ids import SemanticIDs
from semantic_ids.layout import BOS, title_token
from semantic_ids.trie import PrefixTrie
from core.sequences import SequenceConfig
from tests.tiny_folders import save_unit_model, write_id_artifact


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("titles")
    ids = write_id_artifact(root / "ids", [f"t{i}" for i in range(40)], (8, 8, 4))
    config = PretrainConfig.from_preset("tiny", history_tokens="titles", dropout=0.0)
    enc = PromptEncoder.from_ids(ids, 0, title_tokens=True)
    torch.manual_seed(0)
    model = build_model(config, enc.layout, max_history=8)
    emb = attach_title_embedding(model, enc.layout, enc.sid_tokens)
    torch.nn.init.normal_(emb.identity.weight, std=0.5)  # identities that matter in the checks
    return root, ids, config, enc, model.eval()


def test_history_is_one_title_token_per_title_lined_up_with_the_id_map(tiny):
    _, ids, _, enc, _ = tiny
    rows = np.array([3, 0, 17])
    prompt = enc.encode(rows)
    assert prompt[0] == BOS and len(prompt) == enc.max_prefix_length + 3
    assert prompt[-3:] == [enc.layout.extra_id(title_token(r)) for r in rows]
    assert enc.decode_rows(prompt) == rows.tolist()
    assert enc.tokens_per_title == 1
    # codes-only encoders are unchanged
    assert PromptEncoder.from_ids(ids, 0).tokens_per_title == ids.layout.sid_length


def test_a_title_row_is_its_codes_summed_plus_its_identity(tiny):
    _, ids, _, enc, model = tiny
    emb = model.get_input_embeddings()
    r = 11
    tok = torch.tensor([[enc.layout.extra_id(title_token(r))]])
    want = emb.base.weight[enc.sid_tokens[r]].sum(0) + emb.identity.weight[r]
    assert torch.allclose(emb(tok)[0, 0], want, atol=1e-6)
    assert torch.allclose(emb.title_matrix()[r], want, atol=1e-6)


def test_the_title_head_ranks_permitted_titles_by_the_next_title_token_logits(tiny):
    """``recommend_titles``: the top titles are the title tokens' next-token logits, as log-probs
    among the titles a view permits; left padding does not change a prompt's list."""
    _, ids, _, enc, model = tiny
    model = model.eval()
    trie = PrefixTrie.from_ids(ids)
    tokens = title_tokens(enc.layout, ids.num_items)
    assert tokens is not None and title_tokens(ids.layout, ids.num_items) is None  # codes-only layout
    prompts = [enc.encode(np.array([3, 0, 17])), enc.encode(np.array([5]))]
    view = trie.restrict(exclude_rows=[3, 0, 17], allow_rows=list(range(20)))
    heads = recommend_titles(model, prompts, trie, tokens, 5, [view, None])
    alone = recommend_titles(model, prompts[1:], trie, tokens, 5)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]
    permitted = [r for r in range(20) if r not in (3, 0, 17)]
    lp = torch.log_softmax(logits[torch.as_tensor(tokens[permitted])], -1)
    order = [permitted[i] for i in torch.argsort(lp, descending=True)[:5].tolist()]
    assert heads[0].rows == order
    np.testing.assert_allclose(heads[0].scores, sorted(lp.tolist(), reverse=True)[:5], atol=1e-5)
    assert heads[0].sids[0] == tuple(ids.codes[order[0]])
    assert heads[1].rows == alone[0].rows and len(heads[1].rows) == 5
    np.testing.assert_allclose(heads[1].scores, alone[0].scores, atol=1e-5)
    empty = trie.restrict(allow_rows=[3], exclude_rows=[3])
    assert recommend_titles(model, prompts[:1], trie, tokens, 5, [empty])[0].rows == []


def test_branch_packing_gives_the_logits_of_decoding_after_each_prompt(tiny):
    """Every target of a window in one pass equals running each prompt and its ID prefix plainly."""
    _, ids, config, enc, model = tiny
    rows = np.array([5, 9, 2, 30, 7])
    ex = make_title_example(enc, rows, None)
    t = EpochTensors.from_rows([ex["input_ids"]], **{k: [ex[k]] for k in TITLE_COLUMNS})
    b = t.batch(np.array([0]))
    with torch.no_grad():
        packed = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"]
        ).logits[0]  # (T, V)
    L = enc.layout.sid_length
    targets = b["targets"][0]
    checked = 0
    for j in range(1, len(rows)):
        prompt = enc.encode(rows[:j])
        codes = enc.sid_tokens[rows[j]].tolist()
        with torch.no_grad():
            plain = model(input_ids=torch.tensor([prompt + codes[:-1]])).logits[0]  # (T', V)
        ends = len(prompt) - 1  # predicts the first code
        trunk_pos = len(enc.encode(rows)) - len(rows) + j - 1
        assert targets[trunk_pos] == codes[0]
        assert torch.allclose(packed[trunk_pos], plain[ends], atol=1e-4)
        branch = [i for i, a in enumerate(ex["branch"]) if a == j]
        assert len(branch) == L - 1
        for d, i in enumerate(branch):
            assert targets[i] == codes[d + 1]
            assert torch.allclose(packed[i], plain[ends + 1 + d], atol=1e-4)
            checked += 1
    assert checked == (len(rows) - 1) * (L - 1)
    assert ex["title_targets"][len(enc.encode(rows)) - len(rows)] == rows[1]


def test_baked_folder_is_a_plain_llama_that_decodes_as_the_trained_model(tiny, tmp_path):
    root, ids, config, enc, model = tiny
    trie = PrefixTrie.from_ids(ids)
    prompts = [enc.encode(np.array(h)) for h in ([1, 2, 3], [4], [39, 0, 8, 8])]
    before = recommend(model, prompts, trie, k=5, num_beams=5)
    baked = build_model(config, enc.layout, max_history=8)
    baked.load_state_dict(model.state_dict(), strict=False)
    attach_title_embedding(baked, enc.layout, enc.sid_tokens).load_state_dict(
        model.get_input_embeddings().state_dict()
    )
    bake_title_embeddings(baked)
    assert type(baked.get_input_embeddings()) is torch.nn.Embedding
    out = save_unit_model(tmp_path / "model", baked, enc.layout, ids, config, 8)
    gen = load_model(out)
    assert gen.prompt_encoder().encode(np.array([1, 2, 3])) == prompts[0]
    after = recommend(gen.model, prompts, trie, k=5, num_beams=5)
    assert [r.rows for r in after] == [r.rows for r in before]
    assert np.allclose([r.scores for r in after], [r.scores for r in before], atol=1e-4)


def test_a_title_added_after_training_enters_by_its_codes_alone(tiny, tmp_path):
    root, ids, config, enc, model = tiny
    plain = build_model(config, enc.layout, max_history=8)
    attach_title_embedding(plain, enc.layout, enc.sid_tokens)
    bake_title_embeddings(plain)
    # a new title: the ID map grows by one row with an unused code tuple
    used = {tuple(c) for c in ids.codes.tolist()}
    new_code = next((a, b, c) for a in range(8) for b in range(8) for c in range(4) if (a, b, c) not in used)
    grown = SemanticIDs(list(ids.item_ids) + ["new"], np.vstack([ids.codes, new_code]), ids.codebook_sizes)
    sid = enc.layout.sids_to_ids(grown.codes)
    with pytest.raises(ValueError, match="no title token"):
        PromptEncoder(enc.layout, sid).encode(np.array([40]))
    layout = extend_titles(plain, enc.layout, sid)
    row = plain.get_input_embeddings().weight[layout.extra_id(title_token(40))]
    assert torch.allclose(row, plain.get_input_embeddings().weight[sid[40]].sum(0), atol=1e-6)
    new_enc = PromptEncoder(layout, sid)
    prompt = new_enc.encode(np.array([3, 40]))
    assert new_enc.decode_rows(prompt) == [3, 40]
    # and it can be recommended: it is in the trie
    recs = recommend(plain, [prompt], PrefixTrie(grown.codes, layout), k=41, num_beams=41)
    assert 40 in recs[0].rows


def test_own_code_rows_compose_the_titles_and_a_new_title(tiny):
    """With ``title_code_rows="own"`` a title's row sums a table of its own, which baking hands
    back for the folder, and a title added later is composed from that table."""
    _, ids, config, enc, _ = tiny
    model = build_model(config, enc.layout, max_history=8)
    emb = attach_title_embedding(model, enc.layout, enc.sid_tokens, own_code_rows=True)
    torch.nn.init.normal_(emb.code_rows.weight, std=0.5)  # apart from the embedding's code rows
    want = emb.code_rows.weight[enc.sid_tokens[7]].sum(0) + emb.identity.weight[7]
    assert torch.allclose(emb.title_matrix()[7], want, atol=1e-6)
    assert not torch.allclose(emb.base.weight[enc.sid_tokens[7]].sum(0) + emb.identity.weight[7], want)
    own = bake_title_embeddings(model)
    assert torch.equal(own, emb.code_rows.weight)
    grown = np.vstack([enc.sid_tokens, enc.sid_tokens[:1]])  # one more row (codes reused: a unit check)
    layout = extend_titles(model, enc.layout, grown, own)
    row = model.get_input_embeddings().weight[layout.extra_id(title_token(len(grown) - 1))]
    assert torch.allclose(row, own[grown[-1]].sum(0), atol=1e-6)


def test_sasrec_init_reads_rows_scaled_and_bakes_the_scale_into_a_plain_llama(tiny):
    """``init="sasrec"``: xavier matrices, norm gains 1; the input scale of training is baked into
    the rows and the final norm so the plain folder computes what the trained model computes."""
    _, _, config, enc, _ = tiny
    torch.manual_seed(1)
    model = build_model(config, enc.layout, max_history=8)
    codes = (enc.layout.offsets[0], enc.layout.code_end)
    prompt = torch.tensor([enc.encode(np.array([5, 9, 2])) + [int(enc.sid_tokens[3][0])]])
    code_prompt = prompt[:, -1:]  # a code token alone: its row is the same before and after attaching
    plain = model(input_ids=code_prompt).logits
    emb = attach_title_embedding(model, enc.layout, enc.sid_tokens, input_scale=4.0)
    # attaching keeps the function (rows divided by the scale, the final norm's gain multiplied)
    assert torch.allclose(model(input_ids=code_prompt).logits, plain, atol=1e-5)
    sasrec_init(model, codes)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() - (2 / sum(q.shape)) ** 0.5) < 0.1 * (2 / sum(q.shape)) ** 0.5
    rows = emb.base.weight[codes[0] : codes[1]]
    assert abs(rows.std().item() - (2 / sum(rows.shape)) ** 0.5) < 0.1 * (2 / sum(rows.shape)) ** 0.5
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    model.eval()
    first = model.model.embed_tokens(code_prompt)[0, 0]
    assert torch.allclose(first, 4.0 * emb.base.weight[code_prompt[0, 0]])  # rows read times the scale
    sync_title_rows(model)
    trained = model(input_ids=prompt).logits
    bake_title_embeddings(model)
    assert type(model.get_input_embeddings()) is torch.nn.Embedding
    assert torch.allclose(model.model.norm.weight, torch.full_like(model.model.norm.weight, 0.25))
    assert torch.allclose(model(input_ids=prompt).logits, trained, atol=1e-4)


def test_a_folder_needs_its_own_code_rows_exactly_when_trained_with_them(tiny, tmp_path):
    _, ids, config, enc, model = tiny
    own = dataclasses.replace(config, titles=TitleOptions(title_code_rows="own"))
    with pytest.raises(ValueError, match="title_code_rows"):
        save_unit_model(tmp_path / "a", model, enc.layout, ids, own, 8)
    with pytest.raises(ValueError, match="title_code_rows"):
        save_unit_model(tmp_path / "b", model, enc.layout, ids, config, 8, title_code_rows=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="title_code_rows"):
        TitleOptions(title_code_rows="mine")


def test_title_options_need_title_histories():
    with pytest.raises(ValueError, match="history_tokens"):
        PretrainConfig(titles=TitleOptions(title_loss_weight=1.0))
    with pytest.raises(ValueError, match="history_tokens"):
        PretrainConfig.from_dict({"model": {"history_tokens": "titles"}, "objectives": {"mtp_tokens": 1}})
    with pytest.raises(ValueError, match="history_tokens"):
        ModelShape(history_tokens="ids")


@pytest.mark.parametrize("code_rows, init", [("shared", "llama"), ("own", "llama"), ("own", "sasrec")])
def test_pretraining_a_title_model_on_real_data_and_starting_from_it(data_dir, tmp_path, code_rows, init):
    """A title-token run writes a plain folder whose prompts use title tokens; a run that starts
    from it after the ID map grew gives the new title its codes' row and keeps every old row. With
    its own code rows for titles, the folder carries them and the new title is composed from them.
    With SASRec's init (an input scale baked at export) the same holds: the child unbakes it."""
    from core.artifacts import atomic_dir, make_manifest, write_json
    from core.data import DataConfig, load_data
    from gen_fm.train import pretrain

    dc = DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=20)
    data = load_data(dc)
    rated = set(data.interactions["item_id"])
    items = list(data.catalog["item_id"])
    new_item = next(i for i in items if i not in rated)  # in the catalog, never engaged with
    old_items = [i for i in items if i != new_item]
    ids = write_id_artifact(tmp_path / "ids", old_items, (16, 16, 16, 4))
    titles = dict(
        history_tokens="titles", title_code_rows=code_rows, init=init, epochs=1, batch_size=64, val_users=4
    )
    config = PretrainConfig.from_preset("tiny", identity_dropout=0.1, **titles)
    model_dir = pretrain(dc, SequenceConfig(max_history=20), ids.path, tmp_path / "run", config)
    gen = load_model(model_dir)
    assert type(gen.model.get_input_embeddings()) is torch.nn.Embedding  # baked: a plain Llama
    assert gen.prompt_encoder().tokens_per_title == 1
    own = gen.title_code_rows()
    assert (own is None) == (code_rows == "shared")
    if own is not None:  # every baked title row is its own code rows summed plus an identity
        assert not torch.allclose(own, gen.model.get_input_embeddings().weight[: len(own)])

    used = {tuple(c) for c in ids.codes.tolist()}
    new_code = next(c for c in np.ndindex(16, 16, 16, 4) if c not in used)
    grown = SemanticIDs(old_items + [new_item], np.vstack([ids.codes, new_code]), ids.codebook_sizes)
    with atomic_dir(tmp_path / "ids2") as stage:
        grown.write_map(stage)
        write_json(stage / "stats.json", {})
        write_json(
            stage / "manifest.json",
            make_manifest("semantic_ids", {}, codebook_sizes=[16, 16, 16, 4], map_version=2),
        )
    one_step = PretrainConfig.from_preset("tiny", max_steps=1, lr=1e-9, eval_every=0, **titles)
    again = pretrain(
        dc,
        SequenceConfig(max_history=20),
        tmp_path / "ids2",
        tmp_path / "run2",
        one_step,
        init_from=model_dir,
    )
    child = load_model(again)
    enc = child.prompt_encoder()
    w_old, w_new = gen.model.get_input_embeddings().weight, child.model.get_input_embeddings().weight
    assert torch.allclose(w_new[enc.title_ids[:-1]], w_old[gen.prompt_encoder().title_ids], atol=1e-4)
    rows = w_new if own is None else child.title_code_rows()
    assert own is None or torch.allclose(rows, own, atol=1e-4)  # the child's table starts from the parent's
    assert torch.allclose(w_new[enc.title_ids[-1]], rows[enc.sid_tokens[-1]].sum(0), atol=1e-4)


def test_validation_of_a_title_loss_run_judges_the_beam_fused_with_the_title_head(data_dir, tmp_path):
    """With the title loss, validation ranks by the beam fused with the title head at the best of
    the fusion weights (the beam alone among them), and the head reads the title rows as the
    model composes them (``sync_title_rows``), the rows the folder is baked with."""
    from core.data import DataConfig
    from gen_fm.ranking import FUSION_WEIGHTS
    from gen_fm.train import pretrain

    dc = DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=20)
    ids = write_id_artifact(tmp_path / "ids", list(load_items(dc)), (16, 16, 16, 4))
    base = dict(epochs=2, batch_size=64, history_tokens="titles", title_loss_weight=1.0)

    def train(folder: str, **more):
        config = PretrainConfig.from_preset("tiny", **base, **more)
        return load_model(pretrain(dc, SequenceConfig(max_history=20), ids.path, tmp_path / folder, config))

    gen = train("run", val_users=8)
    for row in gen.manifest["training"]["history"]:
        assert row["title_weight"] in FUSION_WEIGHTS
        assert row["recall@10"] >= row["beam_recall@10"]  # the beam alone is one of the choices
    # judged by the title head alone (and hidden dropout on the trunk only): no beam, no fusion
    gen = train("head", val_users=None, judge_by="title_head", hidden_dropout=0.2, hidden_dropout_on="trunk")
    for row in gen.manifest["training"]["history"]:
        assert 0.0 <= row["recall@10"] <= 1.0 and "title_weight" not in row and "beam_recall@10" not in row
    with pytest.raises(ValueError, match="judge_by 'title_head' needs a title head"):
        PretrainConfig.from_preset("tiny", judge_by="title_head", history_tokens="titles")


def test_synced_title_rows_make_the_output_layer_score_titles_as_composed(tiny):
    _, ids, _, enc, model = tiny
    emb = model.get_input_embeddings()
    sync_title_rows(model)
    start = emb.start
    rows = model.get_output_embeddings().weight[start : start + emb.num_titles]
    assert torch.allclose(rows, emb.title_matrix(), atol=1e-6)


def load_items(dc):
    from core.data import load_data

    return load_data(dc).catalog["item_id"]


def test_a_folder_written_before_title_tokens_loads_as_a_code_token_model(tmp_path):
    """Old manifests have no history_tokens / identity_dropout / title_loss_weight: defaults apply."""
    import json

    ids = write_id_artifact(tmp_path / "ids", [f"t{i}" for i in range(20)], (8, 8, 4))
    config = PretrainConfig.from_preset("tiny")
    enc = PromptEncoder.from_ids(ids, 0)
    out = save_unit_model(tmp_path / "model", build_model(config, enc.layout, 4), enc.layout, ids, config, 4)
    manifest = json.loads((out / "manifest.json").read_text())
    # as a folder of that time holds it: flat (before the config was grouped by concern)
    manifest["config"] = config.by_name()
    for key in ("history_tokens", "identity_dropout", "title_loss_weight"):
        del manifest["config"][key]
    (out / "manifest.json").write_text(json.dumps(manifest))
    gen = load_model(out)
    assert gen.config.model.history_tokens == "codes" and gen.fusion() is None
    assert gen.config == config
    assert gen.prompt_encoder().tokens_per_title == ids.layout.sid_length
