"""Baselines on a small real slice (40 MovieLens members) and on hand-made sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.baselines import run_baseline
from eval.baselines.popular import popular_ranking, popularity_counts
from eval.baselines.run import evaluate_sasrec, sasrec_config
from eval.baselines.sasrec import SASRecConfig, make_windows, train_sasrec
from eval.baselines.sasrec_net import SASRec
from eval.config import EvalConfig
from core.artifacts import read_json
from core.data import DataConfig
from core.sequences import SequenceConfig, Sequences, Split, build_sequences, leave_one_out

# Tiny and fast: one window per member (the slice's members have hundreds of events), a raised lr
# so that a few epochs of a few steps show learning.
TINY = dict(
    hidden=16,
    num_blocks=1,
    num_heads=1,
    dropout=0.1,
    batch_size=8,
    lr=5e-3,
    train_windows="last",
    max_epochs=3,
    patience=5,
)


def _split_from(seqs: list[list[int]], max_history: int = 20) -> Split:
    lengths = np.array([len(s) for s in seqs])
    n = int(lengths.sum())
    sequences = Sequences(
        user_ids=[str(i) for i in range(len(seqs))],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        item_index=np.concatenate(seqs).astype(np.int32),
        first_time=np.arange(n, dtype=np.int64),
        last_time=np.arange(n, dtype=np.int64),
        count=np.ones(n, dtype=np.int32),
        rating=np.full(n, np.nan, dtype=np.float32),
        rolled_up=0,
    )
    return leave_one_out(sequences, SequenceConfig(max_history=max_history))


@pytest.fixture(scope="module")
def ml_split(ml_small):
    return leave_one_out(build_sequences(ml_small))


def _data_config(data_dir) -> DataConfig:
    return DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=40)


def test_popular_counts_see_no_target_they_are_judged_on():
    # member 0: train 0 1 2 | valid 3 | test 4; member 1: train 0 3 | valid 4 | test 3;
    # member 2 is too short to evaluate and trains on both its events
    split = _split_from([[0, 1, 2, 3, 4], [0, 3, 4, 3], [2, 2]])
    valid = popularity_counts(split, 6, "valid")
    test = popularity_counts(split, 6, "test")
    assert valid.tolist() == [2, 1, 3, 1, 0, 0]  # train prefixes + the short member's two events
    assert (test - valid).tolist() == [0, 0, 0, 1, 1, 0]  # + the two validation targets
    assert popular_ranking(valid, 4).tolist() == [2, 0, 1, 3]  # ties to the lower row


def test_popular_report(data_dir, ml_small, tmp_path):
    out = tmp_path / "popular.json"
    report = run_baseline("popular", _data_config(data_dir), None, out)
    assert read_json(out)["metrics"] == report["metrics"]
    assert report["num_users"] == {"valid": 40, "test": 40}
    assert report["data_fingerprint"] == ml_small.fingerprint
    for split in ("valid", "test"):
        m = report["metrics"][split]
        assert set(m) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
        assert 0.0 <= m["ndcg@5"] <= m["recall@5"] <= m["recall@10"] <= 1.0
    for key in ("command", "machine", "params", "train_seconds", "hyperparameters", "dataset"):
        assert key in report
    with pytest.raises(ValueError, match="no hyperparameters"):
        run_baseline("popular", _data_config(data_dir), None, out, hidden=8)


def test_windows_cover_every_training_transition_once():
    split = _split_from([list(range(9)) + [20, 21], [5, 6], [7, 8, 9]])
    w = make_windows(split, max_len=4, mode="all")
    pairs = sorted((int(a), int(b)) for i, t in zip(w.inputs, w.targets) for a, b in zip(i, t) if b)
    # member 0 trains on 0..8 (20, 21 are held out), member 1 on 5 -> 6, member 2 has one event
    assert pairs == sorted([(i + 1, i + 2) for i in range(8)] + [(6, 7)])
    assert w.inputs[0].tolist() == [5, 6, 7, 8] and w.targets[0].tolist() == [6, 7, 8, 9]
    assert w.inputs[-1].tolist() == [0, 0, 0, 6]  # left-padded
    last = make_windows(split, max_len=4, mode="last")
    assert len(last.owner) == 2 and last.owner.tolist() == [0, 1]


@pytest.mark.parametrize("block", ["sasrec", "llama"])
def test_sasrec_is_causal_and_padding_invariant(block):
    torch.manual_seed(0)
    model = SASRec(
        num_items=30, hidden=16, num_blocks=2, num_heads=2, dropout=0.3, max_len=6, block=block
    ).eval()
    seq = torch.tensor([[0, 0, 3, 4, 5, 6]])
    changed = torch.tensor([[0, 0, 3, 4, 5, 29]])
    a, b = model(seq), model(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)  # the future cannot leak backwards
    assert not torch.allclose(a[:, 5], b[:, 5])
    short = model(torch.tensor([[3, 4, 5, 6]]))  # same history, less left padding
    assert torch.allclose(short[:, -1], a[:, -1], atol=1e-5)
    assert model.item_emb.weight[0].abs().sum() == 0
    # the Llama block has no learned position rows: RoPE positions the keys inside its layers
    assert hasattr(model, "pos_emb") == (block == "sasrec")


def test_sasrec_llama_block_drops_out_its_residual_branches_only_in_training():
    torch.manual_seed(0)
    model = SASRec(num_items=30, hidden=32, num_blocks=1, num_heads=1, dropout=0.5, max_len=6, block="llama")
    seq = torch.tensor([[0, 0, 3, 4, 5, 6]])
    assert not torch.allclose(model.train()(seq), model(seq))  # dropout differs between passes
    assert torch.equal(model.eval()(seq), model(seq))


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_sasrec_training_loss_falls(ml_split, ml_small, loss):
    config = SASRecConfig(loss=loss, **{**TINY, "max_epochs": 4})
    ev = EvalConfig(batch_size=64)
    result = train_sasrec(
        ml_split,
        len(ml_small.catalog),
        config,
        lambda m: evaluate_sasrec(m, ml_split, "valid", ev).recall[10],
    )
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.95, losses
    assert result.best_epoch in range(1, 5) and not result.converged
    m = evaluate_sasrec(result.model, ml_split, "test", ev)
    assert m.num_users == 40 and 0.0 <= m.recall[10] <= 1.0


def test_sasrec_run_is_deterministic(data_dir, tmp_path):
    hyper = {**TINY, "max_epochs": 2}
    a = run_baseline("sasrec", _data_config(data_dir), None, tmp_path / "a.json", **hyper)
    b = run_baseline("sasrec", _data_config(data_dir), None, tmp_path / "b.json", **hyper)
    assert a["metrics"] == b["metrics"]
    # SASRec's top 20 fused with the newest title's co-engaged titles, as sidrec's home row
    assert a["fused_with_co_engagement"] == b["fused_with_co_engagement"]
    assert set(a["fused_with_co_engagement"]) == {"valid", "test"}
    assert 0 <= a["fused_with_co_engagement"]["test"]["recall@10"] <= 1
    # no target is a title of its history, so masking the history can only lift a target
    assert a["history_excluded"]["test"]["recall@10"] >= a["metrics"]["test"]["recall@10"]
    assert [r["loss"] for r in a["training"]["history"]] == [r["loss"] for r in b["training"]["history"]]
    assert a["params"] == b["params"] > 0 and a["hyperparameters"]["loss"] == "bce"
    assert read_json(tmp_path / "a.json")["training"]["epochs_run"] == 2


def test_sasrec_config_checks():
    assert sasrec_config("sasrec-ce", {}).loss == "ce"
    with pytest.raises(ValueError, match="unknown"):
        sasrec_config("sasrec", {"hiden": 8})
    with pytest.raises(ValueError, match="implies"):
        sasrec_config("sasrec", {"loss": "ce"})
    with pytest.raises(ValueError):
        SASRecConfig(hidden=10, num_heads=3)
    with pytest.raises(ValueError):
        SASRecConfig(train_windows="every")
    with pytest.raises(ValueError, match="block"):
        SASRecConfig(block="gpt")
    with pytest.raises(ValueError, match="init"):
        SASRecConfig(init="kaiming")


@pytest.mark.parametrize("init", ["sasrec", "llama"])
def test_sasrec_starts_as_the_authors_or_as_the_foundation_model(init):
    torch.manual_seed(0)
    model = SASRec(num_items=500, hidden=64, num_blocks=1, num_heads=1, dropout=0.0, max_len=6, init=init)
    rows = model.item_emb.weight[1:]
    want = (2 / (501 + 64)) ** 0.5 if init == "sasrec" else 0.02  # xavier-normal or Llama's
    assert abs(float(rows.std()) / want - 1) < 0.05
    assert model.input_scale == (8.0 if init == "sasrec" else 1.0)


@pytest.mark.parametrize("items", ["codes", "both"])
def test_sasrec_titles_by_their_codes_share_input_and_output_rows(items):
    torch.manual_seed(0)
    codes = np.array([[0, 4], [1, 4], [0, 5], [2, 6]])  # 4 titles, 2 levels in one code range
    model = SASRec(
        num_items=4, hidden=8, num_blocks=1, num_heads=1, dropout=0.0, max_len=3, items=items, codes=codes
    ).eval()
    rows = model.item_matrix()  # (5, 8)
    want = model.code_emb.weight[codes].sum(1) + (model.item_emb.weight[1:] if items == "both" else 0)
    assert torch.allclose(rows[1:], want) and rows[0].abs().sum() == 0
    states = model(torch.tensor([[0, 1, 3]]))[:, -1]
    assert torch.allclose(model.all_item_scores(states), states @ want.T)
    with pytest.raises(ValueError, match="codes"):
        SASRec(num_items=4, hidden=8, num_blocks=1, num_heads=1, dropout=0.0, max_len=3, items=items)
    with pytest.raises(ValueError, match="items"):
        SASRecConfig(items="text")
