"""Training windows, label masks, batch order, and a tiny real run: loss falls, resume is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen_fm.config import Optimisation, PretrainConfig
from gen_fm.batches import EpochTensors, epoch_batches, window_bounds
from gen_fm.dataset import IGNORE, catalog_to_sid_rows, window_source
from gen_fm.model import load_model
from gen_fm.tokenizer import PromptEncoder
from gen_fm.train import pretrain
from core.artifacts import manifest_hash
from core.data import DataConfig, load_data
from core.sequences import SequenceConfig, build_sequences, leave_one_out
from tests.tiny_folders import write_id_artifact

SIZES = (16, 16, 16, 4)  # room for ml-latest-small's 9,742 titles, a small vocabulary


@pytest.fixture(scope="module")
def setup(data_dir, tmp_path_factory):
    data = load_data(data_dir=str(data_dir), dataset="ml-latest-small", max_users=30)
    ids = write_id_artifact(tmp_path_factory.mktemp("ids") / "ids", list(data.catalog["item_id"]), SIZES)
    seq_config = SequenceConfig(max_history=20)
    split = leave_one_out(build_sequences(data, seq_config), seq_config)
    return data, ids, split, seq_config


@pytest.mark.parametrize("size", [2, 3, 21])
def test_windows_predict_every_title_once(size):
    for n in range(0, 70):
        bounds = window_bounds(n, size)
        predicted = [t for s, e in bounds for t in range(s + 1, e)]
        assert predicted == list(range(1, n))  # each title but the first, once, in order
        assert all(2 <= e - s <= size for s, e in bounds)
        if bounds:
            assert bounds[-1][1] == n and bounds[0][0] == 0
            assert all(b[0] == a[1] - 1 for a, b in zip(bounds, bounds[1:]))  # overlap of one


def test_labels_mask_everything_but_later_titles(setup):
    data, ids, split, _ = setup
    enc = PromptEncoder.from_ids(ids, num_user_buckets=8)
    sid_rows = catalog_to_sid_rows(data, ids)
    ex = window_source(split, sid_rows, enc).rows()
    L = ids.sid_length
    targets_of: dict[int, list[int]] = {}
    for input_ids, labels, u in zip(ex["input_ids"], ex["labels"], ex["member"]):
        assert len(input_ids) == len(labels) <= enc.max_length(split.max_history + 1)
        titles = (len(input_ids) - 3) // L  # bos, member, canvas
        assert len(input_ids) == 3 + titles * L and titles >= 2
        assert labels[: 3 + L] == [IGNORE] * (3 + L)  # prefix and first title are context only
        assert labels[3 + L :] == input_ids[3 + L :]
        assert all(enc.layout.level_of(t) is not None for t in labels[3 + L :])
        targets_of.setdefault(u, []).extend(enc.decode_rows(labels[3 + L :]))
    for u in range(len(split.sequences)):
        train = sid_rows[split.train_items(u)].tolist()
        # every training title after the first is a target exactly once, and nothing else is:
        # the validation and test titles (the last two) never appear
        assert targets_of.get(u, []) == train[1:]
    batch = EpochTensors.from_rows(ex["input_ids"], ex["labels"]).batch(np.array([0, 1]))
    n0, n1 = len(ex["input_ids"][0]), len(ex["input_ids"][1])
    T = max(n0, n1)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, T)
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    short = int(np.argmin([n0, n1]))
    assert (batch["labels"][short, min(n0, n1) :] == IGNORE).all()
    assert (batch["input_ids"][short, min(n0, n1) :] == 0).all()


def test_targets_put_the_loss_on_chosen_events_only(setup):
    data, ids, split, _ = setup
    enc = PromptEncoder.from_ids(ids, num_user_buckets=0)
    sid_rows = catalog_to_sid_rows(data, ids)
    seqs = split.sequences
    targets = seqs.first_time >= np.quantile(seqs.first_time, 0.8)  # (E,) the newest fifth
    full = window_source(split, sid_rows, enc).rows()
    ex = window_source(split, sid_rows, enc, targets=targets).rows()
    assert 0 < len(ex["input_ids"]) < len(full["input_ids"])  # windows without a chosen event are left out
    L = ids.sid_length
    got: dict[int, list[int]] = {}
    for labels, u in zip(ex["labels"], ex["member"]):
        assert any(t != IGNORE for t in labels)
        codes = [t for t in labels if t != IGNORE]
        got.setdefault(u, []).extend(enc.decode_rows(codes))
        assert len(codes) % L == 0
    for u in range(len(seqs)):
        ev = np.arange(seqs.offsets[u], seqs.offsets[u] + len(split.train_items(u)))[1:]
        want = sid_rows[seqs.item_index[ev[targets[ev]]]].tolist()
        assert got.get(u, []) == want  # every chosen event (but a member's first) once, in order


def test_epoch_batches_cover_each_example_once():
    lengths = np.random.default_rng(1).integers(5, 80, size=1003)
    one = epoch_batches(lengths, 16, epoch=3, seed=0)
    assert sorted(np.concatenate(one).tolist()) == list(range(1003))
    assert all(len(b) <= 16 for b in one)
    assert [b.tolist() for b in one] == [b.tolist() for b in epoch_batches(lengths, 16, 3, 0)]
    assert [b.tolist() for b in one] != [b.tolist() for b in epoch_batches(lengths, 16, 4, 0)]
    r0, r1 = (epoch_batches(lengths, 16, 3, 0, rank=r, world=2) for r in (0, 1))
    assert len(r0) == len(r1) and all(len(b) for b in r0 + r1)  # no process waits on another
    assert set(np.concatenate(r0 + r1).tolist()) == set(range(1003))


@pytest.fixture
def one_thread():
    """Kernels of a tiny model are too small to share: on a busy 2-core machine one thread is 2-4x
    faster than two that wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Two short epochs (4 steps each) with a checkpoint every 3 steps: a run halted after step 5 resumes
# from inside epoch 2 (halted_and_resumed)
TWO_EPOCHS = dict(epochs=2, batch_size=64, lr=5e-3, val_users=8, checkpoint_every_steps=3)


@pytest.fixture
def train(setup, data_dir, tmp_path, one_thread):
    """``train(folder, **overrides)``: pretrain a ``preset`` (tiny) with ``overrides`` on the module's
    slice and IDs into ``tmp_path / folder``; ``data``, ``ids``, ``resume`` and ``init_from`` pass through."""
    _, ids, _, seq_config = setup
    dc = DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=30)

    def run(folder: str, *, preset="tiny", data=dc, ids=ids, resume=False, init_from=None, **overrides):
        config = PretrainConfig.from_preset(preset, **overrides)
        return pretrain(
            data, seq_config, ids.path, tmp_path / folder, config, resume=resume, init_from=init_from
        )

    return run


def halted_and_resumed(train, folder: str, **config):
    """The run halted inside epoch 2 (after step 5), then resumed to its end."""
    train(folder, max_steps=5, **config)
    return train(folder, resume=True, **config)


def test_loss_falls_and_resume_is_exact(setup, train, tmp_path):
    data = setup[0]
    # dropout on: the resume must replay the dropout masks too
    base = {**TWO_EPOCHS, "num_user_buckets": 16, "dropout": 0.1, "hidden_dropout": 0.1}
    full = train("a", **base)
    gm = load_model(full)
    hist = gm.manifest["training"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[0]["train_loss"] < math.log(gm.layout.vocab_size)  # below a uniform guess
    assert hist[1]["train_loss"] < hist[0]["train_loss"] - 0.05
    assert all(0.0 <= h["recall@10"] <= 1.0 for h in hist)
    assert gm.manifest["data"]["fingerprint"] == data.fingerprint

    with pytest.raises(FileExistsError):  # an earlier run's checkpoints are never overwritten
        train("a", **base)
    # a run halted inside epoch 2, then resumed, ends with the very same weights
    train("b", max_steps=5, **base)
    with pytest.raises(ValueError, match="lr"):
        train("b", resume=True, **{**base, "lr": 1e-3})
    resumed = train("b", resume=True, **base)
    wa, wb = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    last = [
        load_file(tmp_path / r / "checkpoints" / "step-00000008" / "model.safetensors") for r in ("a", "b")
    ]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    ta, tb = gm.manifest["training"], load_model(resumed).manifest["training"]
    assert ta["weights"] == "selected" and ta["chosen_epoch"] in (1, 2) and ta["chosen_reason"]
    assert (ta["chosen_epoch"], ta["chosen_step"]) == (tb["chosen_epoch"], tb["chosen_step"])
    keys = ("train_loss", "recall@10", "ndcg@10")
    assert [[h[k] for k in keys] for h in tb["history"]] == [[h[k] for k in keys] for h in hist]
    kept = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert kept == ["best", "step-00000006", "step-00000008"]  # last two + best


def test_weight_averaging_keeps_the_averaged_weights_and_resumes_exactly(train, tmp_path):
    base = {**TWO_EPOCHS, "ema_decay": 0.5, "selection": "last"}
    full = train("a", **base)
    gm = load_model(full)
    hist = gm.manifest["training"]["history"]
    assert all({"recall@10", "raw_recall@10", "raw_ndcg@10"} <= set(h) for h in hist)
    # hidden_dropout left unset: the folder says what it trained with (MovieLens members are dense)
    assert gm.config.model.hidden_dropout == 0.0
    kept = load_file(full / "model.safetensors")
    raw = load_file(tmp_path / "a" / "checkpoints" / "step-00000008" / "model.safetensors")
    assert kept.keys() == raw.keys()
    assert any(not torch.equal(kept[k], raw[k]) for k in kept)  # the average, not the last step
    # halted inside epoch 2 and resumed: the average is restored with the rest of the state
    again = load_file(halted_and_resumed(train, "b", **base) / "model.safetensors")
    assert all(torch.equal(kept[k], again[k]) for k in kept)
    with pytest.raises(ValueError, match="ema_decay"):
        Optimisation(ema_decay=1.0)


def test_mixed_precision_auto_trains_as_the_machine_allows_and_the_folder_says_which(train):
    from gen_fm.train import bf16_native

    gm = load_model(train("auto", epochs=1, batch_size=64, val_users=8, mixed_precision="auto"))
    assert gm.config.optim.mixed_precision == ("bf16" if bf16_native() else "no")
    assert next(gm.model.parameters()).dtype == torch.float32  # autocast: the weights stay float32


def test_init_from_starts_from_the_parent_weights(setup, train, tmp_path):
    data = setup[0]
    base = dict(epochs=1, batch_size=64, num_user_buckets=16, eval_every=0)
    parent = train("p", **base)
    # another seed would give other initial weights: equal weights can only come from the parent
    child_config = {**base, "lr": 1e-9, "seed": 1}
    child = train("c", data=data, init_from=parent, **child_config)
    wp, wc = load_file(parent / "model.safetensors"), load_file(child / "model.safetensors")
    assert wp.keys() == wc.keys() and all(torch.allclose(wp[k], wc[k], atol=1e-5) for k in wp)
    manifest = load_model(child).manifest
    assert manifest["parents"]["init_from"] == manifest_hash(parent)
    assert manifest["training"]["init_from"]["model"] == str(parent)
    other = write_id_artifact(tmp_path / "ids2", list(data.catalog["item_id"]), (16, 16, 16, 8))
    with pytest.raises(ValueError, match="token layout"):  # rebuilt IDs: old embeddings mean nothing
        train("x", data=data, ids=other, init_from=parent, **child_config)
    with pytest.raises(ValueError, match="hidden_size"):
        train("y", preset="small", data=data, init_from=parent, **base)


def test_auxiliary_objectives_train_and_leave_a_plain_model(train, tmp_path):
    """Multi-token and category heads learn, resume exactly, and are not in the saved model."""
    base = {**TWO_EPOCHS, "mtp_tokens": 2, "category_weight": 0.5, "category_min_titles": 2}
    full = train("a", **base)
    hist = load_model(full).manifest["training"]["history"]
    for name in ("mtp_2", "mtp_3", "category"):
        assert hist[1][f"{name}_loss"] < hist[0][f"{name}_loss"]
    plain = train("p", epochs=1, batch_size=64, eval_every=0)
    assert load_file(full / "model.safetensors").keys() == load_file(plain / "model.safetensors").keys()
    resumed = halted_and_resumed(train, "b", **base)
    wa, wb = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    keys = ("train_loss", "mtp_2_loss", "mtp_3_loss", "category_loss", "recall@10")
    assert [[h[k] for k in keys] for h in load_model(resumed).manifest["training"]["history"]] == [
        [h[k] for k in keys] for h in hist
    ]
    with pytest.raises(ValueError, match="no category"):
        train("c", **{**base, "category_min_titles": 10**6})


def test_two_process_cpu_launch_writes_a_loadable_model(setup, data_dir, tmp_path):
    """``torchrun --nproc_per_node 2`` (the launcher ``accelerate`` reads its world from) on CPU:
    gradients are averaged over both processes (gloo), the main process writes the model folder."""
    import os
    import subprocess
    import sys

    from gen_fm.model import load_model

    _, ids, _, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "SIDREC_DATA_DIR": str(data_dir)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "sidrec.cli",
        "pretrain",
        "--dataset",
        "ml-latest-small",
        "--max-users",
        "30",
        "--ids",
        str(ids.path),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "tiny",
        "--max-history",
        "20",
        "--set",
        "epochs=1",
        "--set",
        "batch_size=16",
        "--set",
        "val_users=8",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    gen = load_model(tmp_path / "run" / "model")
    training = gen.manifest["training"]
    assert training["world_size"] == 2
    single = -(-training["train_windows"] // 16)  # steps one process would take
    assert training["steps_per_epoch"] < single  # each process takes its share of the windows
    times = setup[0].interactions.with_format("numpy", columns=["timestamp"])[:]["timestamp"]
    assert gen.manifest["data"]["time_end"] == int(times.max())  # sidrec refresh reads it back
