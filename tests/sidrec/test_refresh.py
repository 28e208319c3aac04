"""Catalog refresh on a tiny preset and a real slice: the old-world view, new IDs, the fine-tune's
parent, new titles becoming recommendable, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen_fm.decode import recommend
from gen_fm.model import build_model, load_model
from semantic_ids.ids import SemanticIDs
from semantic_ids.trie import PrefixTrie
from core.artifacts import ArtifactError, manifest_hash
from sidrec.cli import main
from core.data import DataConfig, load_data
from core.timeline import old_world
from sidrec.refresh import refresh
from sidrec.refresh_config import RefreshConfig
from core.sequences import build_sequences, leave_one_out
from tests.sidrec.test_quickstart import TINY_IDS

SLICE = ["--data", None, "--dataset", "ml-latest-small", "--max-users", "40"]
TINY = {
    "new_title_share": 0.2,
    "pretrain": {"preset": "tiny", "epochs": 2, "val_users": 5, "eval_every": 1, "patience": 0},
    "finetune": {"epochs": 1, "val_users": 5},
    "judge": {"k": 5},
    "ids": TINY_IDS,
}


def _slice(data_dir) -> list[str]:
    return [str(data_dir) if a is None else a for a in SLICE]


@pytest.fixture(scope="module")
def simulated(data_dir, tmp_path_factory):
    """`sidrec refresh --simulate` on the first 40 MovieLens members (about 15 s on one thread)."""
    root = tmp_path_factory.mktemp("refresh")
    (root / "tiny.json").write_text(json.dumps(TINY))
    argv = [
        "refresh",
        "--simulate",
        *_slice(data_dir),
        "--out",
        str(root / "run"),
        "--preset",
        str(root / "tiny.json"),
        "--results",
        str(root / "results.json"),
    ]
    threads = torch.get_num_threads()
    try:
        assert main(argv + ["--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((root / "run" / "report.json").read_text())
    return root, argv, report


def test_bad_input_is_refused():
    for share in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="new_title_share"):
            RefreshConfig(new_title_share=share)
    with pytest.raises(ValueError, match="epochs"):
        RefreshConfig(finetune={"epochs": 0})
    with pytest.raises(ValueError, match=r"refresh's judge.k and judge.num_beams"):
        RefreshConfig(finetune={"eval_k": 5})
    with pytest.raises(ValueError, match="a beam narrower than K cannot return K titles"):
        RefreshConfig(judge={"k": 10, "num_beams": 5})


def test_the_refresh_judges_with_the_one_judge_config():
    """K, beam, members and batch live in ``judge`` (gen_fm.beams.JudgeConfig): a dict of its
    fields or the dataclass, reached by its path (the pretrain configs' validation has one too)."""
    from core.overrides import config_from_args
    from gen_fm.beams import JudgeConfig

    as_dict, as_config = RefreshConfig(judge={"k": 5}), RefreshConfig(judge=JudgeConfig(k=5))
    assert as_dict.judge == as_config.judge == JudgeConfig(k=5)
    c = config_from_args(
        RefreshConfig, None, ["judge.k=20", "judge.eval_users=100", "judge.eval_batch_size=8"]
    )
    assert c.judge == JudgeConfig(k=20, eval_users=100, eval_batch_size=8) and c.judge.ks == (5, 20)
    assert config_from_args(RefreshConfig, None, ["judge.num_beams=30"]).judge.beams == 30
    # num_beams is also a validation field of both pretrain configs: the error names the three paths
    with pytest.raises(SystemExit, match=r"'num_beams' is a field of several configs \(.*judge.num_beams"):
        config_from_args(RefreshConfig, None, ["num_beams=30"])
    with pytest.raises(SystemExit, match=r"'k' is a field of several configs \(.*judge.k"):
        config_from_args(RefreshConfig, None, ["k=20"])
    with pytest.raises(SystemExit, match="eval_users must be an int >= 1 or None"):
        config_from_args(RefreshConfig, None, ["judge.eval_users=0"])


def test_the_refresh_reads_the_one_beam_rule():
    from gen_fm.beams import beam_width

    assert RefreshConfig(judge={"k": 5}).judge.beams == beam_width(5) == 10
    assert RefreshConfig(judge={"k": 20}).judge.beams == 20
    assert RefreshConfig(judge={"k": 5, "num_beams": 12}).judge.beams == 12


def test_new_titles_get_ids_and_old_ids_stay(simulated):
    root, _, report = simulated
    old, new = SemanticIDs.load(root / "run" / "old" / "ids"), SemanticIDs.load(root / "run" / "ids")
    added = [i for i in new.item_ids if i not in old]
    assert len(added) == report["ids"]["new_titles"] == report["simulation"]["new_titles"] > 0
    assert new.version == old.version + 1 == 2
    assert np.array_equal(new.codes_for(old.item_ids), old.codes)  # no existing ID moved
    assert new.codebook_sizes == old.codebook_sizes  # same code tokens: same vocabulary
    assert report["ids"]["existing_ids_unchanged"] and report["ids"]["vocab_unchanged"]


def test_refreshed_model_names_its_parent_and_starts_from_its_weights(simulated):
    root, _, report = simulated
    parent_dir, model_dir = report["artifacts"]["parent_model"], report["artifacts"]["model"]
    gen, parent = load_model(model_dir), load_model(parent_dir)
    assert gen.manifest["parents"]["init_from"] == manifest_hash(parent_dir)
    assert gen.manifest["training"]["init_from"]["model"] == parent_dir
    assert gen.ids.version == 2 and gen.layout.to_json() == parent.layout.to_json()
    assert gen.manifest["data"]["fingerprint"] != parent.manifest["data"]["fingerprint"]
    # one short epoch from the parent: far closer to it than to any fresh initialisation
    torch.manual_seed(123)
    fresh = build_model(gen.config, gen.layout, gen.seq_config.max_history).state_dict()
    w_new = load_file(f"{model_dir}/model.safetensors")
    w_old = load_file(f"{parent_dir}/model.safetensors")
    to_parent = sum(float((w_new[k] - w_old[k]).norm()) for k in w_new)
    to_fresh = sum(float((w_new[k] - fresh[k]).norm()) for k in w_new)
    assert 0 < to_parent < 0.2 * to_fresh


def test_new_titles_become_recommendable(simulated):
    root, _, report = simulated
    gen = load_model(report["artifacts"]["model"])
    old = SemanticIDs.load(root / "run" / "old" / "ids")
    trie, old_trie = PrefixTrie.from_ids(gen.ids), PrefixTrie.from_ids(old)
    new_rows = [r for r, i in enumerate(gen.ids.item_ids) if i not in old]
    tokens = gen.layout.sids_to_ids(gen.ids.codes[new_rows])  # (N_new, L)
    assert [trie.item_of(t) for t in tokens] == new_rows  # in the new trie...
    assert all(old_trie.item_of(t) == -1 for t in tokens)  # ...and in no way in the old one
    old_rows = [r for r, i in enumerate(gen.ids.item_ids) if i in old]
    prompt = gen.prompt_encoder().encode(new_rows[:3], user_id="1")
    rec = recommend(gen.model, [prompt], trie, k=5, num_beams=10, exclude=[old_rows])[0]
    assert len(rec.rows) == 5 and set(rec.rows) <= set(new_rows)  # decodable, whole new IDs


def test_report_before_and_after(simulated, data_dir):
    root, _, report = simulated
    ev = report["evaluations"]
    assert report["recall@5"]["new_titles"]["before"] == 0.0  # no ID: impossible by construction
    assert (report["k"], report["num_beams"]) == (5, 10) and report["config"]["judge"]["k"] == 5
    assert ev["before"]["new_titles"]["targets_without_id"] == report["members"]["new_titles"] > 0
    assert ev["before"]["new_titles"]["history_titles_without_id"] > 0
    for variant in ("old_model_new_trie", "after"):
        assert all(ev[variant][g]["targets_without_id"] == 0 for g in ("new_titles", "old_titles"))
    # model-free references on the same members (the tiny IDs have no text: no content baseline)
    assert ev["popular_new"]["new_titles"]["num_users"] == report["members_judged"]["new_titles"]
    assert ev["popular_new"]["old_titles"]["recall@5"] == 0.0  # it only ever names new titles
    assert report["recall@5"]["new_titles"]["popular_new"] is not None
    assert "text" in ev["content_nearest_new"]["new_titles"]["skipped"]
    data = load_data(DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=40))
    split = leave_one_out(build_sequences(data))  # the quickstart's default sequence config
    assert sum(report["members"].values()) == int(split.evaluable.sum())  # every evaluable member
    assert json.loads((root / "results.json").read_text()) == report
    # the fine-tune's loss was on the fresh events (since the cutoff) plus the replayed share
    cutoff = report["simulation"]["cutoff"]
    assert report["config"]["fresh_since"] == cutoff
    assert report["finetune"]["targets"] == {"since": cutoff, "replay": RefreshConfig().replay}


def test_rerun_reuses_every_stage(simulated, capsys):
    _, argv, report = simulated
    threads = torch.get_num_threads()
    try:
        assert main(argv + ["--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.count("reusing") == 4  # old ids, old model, new ids, fine-tuned model
    again = json.loads((simulated[0] / "run" / "report.json").read_text())
    assert again["evaluations"] == report["evaluations"]  # evaluation is deterministic


def test_clear_errors(simulated, data_dir, tmp_path, capsys):
    root, _, report = simulated
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        refresh(
            tmp_path,
            DataConfig(data_dir=str(data_dir), dataset="ml-latest-small"),
            tmp_path / "out",
            RefreshConfig(),
        )
    assert main(["refresh", "--model", str(tmp_path), *_slice(data_dir), "--out", str(tmp_path / "o")]) == 2
    assert "manifest.json is missing" in capsys.readouterr().out
    # the old model against its own old world: nothing new to refresh with
    world = old_world(
        load_data(DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=40)),
        TINY["new_title_share"],
    )
    with pytest.raises(ValueError, match="no new titles"):
        refresh(report["artifacts"]["parent_model"], world.data, tmp_path / "o", RefreshConfig())
    with pytest.raises(SystemExit, match="either --model"):
        main(["refresh", *_slice(data_dir), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="invalid RefreshConfig"):
        main(
            [
                "refresh",
                "--simulate",
                *_slice(data_dir),
                "--out",
                str(tmp_path / "o"),
                "--set",
                "new_title_share=1.5",
            ]
        )
    assert (
        main(
            [
                "refresh",
                "--simulate",
                "--data",
                str(data_dir),
                "--dataset",
                "amazon-beauty",
                "--max-users",
                "60",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no clock" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


def test_fresh_events_start_after_the_models_data_end() -> None:
    from sidrec.refresh_config import parse_since as _since
    from sidrec.refresh_config import RefreshConfig, resolve_since

    manifest = {"data": {"dataset": "x", "time_end": 1_500_000_000}}
    config, why = resolve_since(RefreshConfig(), manifest, has_time=True)
    assert config.fresh_since == 1_500_000_001 and "newest event" in why
    explicit = RefreshConfig(fresh_since=7)
    assert resolve_since(explicit, manifest, True) == (explicit, None)  # a given time wins
    assert resolve_since(RefreshConfig(since_from_model=False), manifest, True)[0].fresh_since is None
    assert resolve_since(RefreshConfig(), manifest, has_time=False)[0].fresh_since is None
    old, why = resolve_since(RefreshConfig(), {"data": {"dataset": "x"}}, True)
    assert old.fresh_since is None and "does not record" in why
    assert _since("2018-09-01") == {"fresh_since": 1535760000}
    assert _since("all") == {"fresh_since": None, "since_from_model": False}
    assert _since("1500000000") == {"fresh_since": 1500000000}
    import pytest

    with pytest.raises(ValueError, match="--since"):
        _since("yesterday")


def test_refresh_retrains_the_soft_prompts_into_a_servable_folder(simulated, tmp_path):
    from serving.recommender import Recommender

    root, argv, _ = simulated
    # home and t2t are served by the frozen model by default: a soft prompt each here, retrained
    tiny_prompts = json.dumps(
        {
            "max_train_examples": 40,
            "max_eval_examples": 10,
            "epochs": 1,
            "num_virtual_tokens": 2,
            "method": "soft_prompt",
        }
    )
    threads = torch.get_num_threads()
    try:
        assert (
            main(argv + ["--threads", "1", "--set", "canvases=home,t2t", "--set", f"prompts={tiny_prompts}"])
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    report = json.loads((root / "run" / "report.json").read_text())
    served = report["served_model"]
    assert served.endswith("served") and report["seconds"]["prompts"] > 0
    rec = Recommender.from_pretrained(served, backend="transformers", num_beams=5, max_k=5)
    history = rec.ids.item_ids[:3]
    for canvas in ("home", "t2t"):
        res = rec.recommend(history, canvas=canvas, k=3)
        # every canvas answers from the folder with its retrained soft prompt
        assert len(res) == 3 and res.soft_prompt
    with pytest.raises(ValueError, match="canvases"):
        RefreshConfig(canvases="home,nope")


def test_the_fine_tune_is_the_parents_config_with_the_refresh_recipe():
    """`finetune` holds overrides of the parent's PretrainConfig (the one place its fields live),
    merged over the recipe; the defaults are the fine-tune that RefreshConfig's own fields gave."""
    from core.overrides import config_from_args
    from gen_fm.config import PretrainConfig
    from sidrec.refresh import finetune_config

    parent = PretrainConfig.from_preset(
        "small",
        model={"hidden_dropout": 0.1},
        optim={"batch_size": 32, "lr": 5e-3, "epochs": 20, "max_steps": 9},
        validation={"patience": 3, "eval_every": 2},
        seed=4,
    )
    recipe = dict(
        epochs=3, lr=1e-3, warmup_ratio=0.1, val_users=300, eval_every=1, patience=0, max_steps=None
    )
    expected = {**parent.by_name(), **recipe, "seed": 0, "eval_k": 5, "num_beams": None}
    assert finetune_config(parent, RefreshConfig(judge={"k": 5})) == PretrainConfig.from_dict(expected)
    c = config_from_args(RefreshConfig, None, ["finetune.lr=0.002", "finetune.optim.batch_size=16"])
    ft = finetune_config(parent, c)
    assert (ft.optim.lr, ft.optim.batch_size, ft.optim.epochs, ft.model.hidden_dropout) == (0.002, 16, 3, 0.1)
    assert c.finetune["optim"]["lr"] == 0.002 and "lr" not in c.finetune  # stored by path
    # before, `--set epochs=1` was the fine-tune's: now the error names its path among the others
    with pytest.raises(SystemExit, match=r"'epochs' is a field of several configs \(finetune.optim.epochs, "):
        config_from_args(RefreshConfig, None, ["epochs=1"])
