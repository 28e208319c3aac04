"""Per-epoch tensors and augmentation: the same batches as the collator, held-out titles never seen."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_fm.batches import Augment, EpochTensors, epoch_batches, window_bounds
from gen_fm.dataset import IGNORE, catalog_to_sid_rows, window_source
from gen_fm.tokenizer import PromptEncoder
from core.data import load_data
from core.sequences import SequenceConfig, build_sequences, leave_one_out
from tests.tiny_folders import write_id_artifact


@pytest.fixture(scope="module")
def setup(data_dir, tmp_path_factory):
    data = load_data(data_dir=str(data_dir), dataset="ml-latest-small", max_users=40)
    ids = write_id_artifact(
        tmp_path_factory.mktemp("ids") / "ids", list(data.catalog["item_id"]), (16, 16, 16, 4)
    )
    seq_config = SequenceConfig(max_history=20)
    split = leave_one_out(build_sequences(data, seq_config), seq_config)
    return data, ids, split, PromptEncoder.from_ids(ids, 0), catalog_to_sid_rows(data, ids)


@pytest.mark.parametrize("size", [2, 3, 21])
def test_shifted_windows_still_predict_every_title_once(size):
    for n in range(0, 70):
        for shift in range(size - 1):
            bounds = window_bounds(n, size, shift)
            assert [t for s, e in bounds for t in range(s + 1, e)] == list(range(1, n))
            assert all(2 <= e - s <= size for s, e in bounds)
            assert all(b[0] == a[1] - 1 for a, b in zip(bounds, bounds[1:]))
    with pytest.raises(ValueError, match="shift"):
        window_bounds(30, 21, 20)


def test_a_tensor_batch_is_its_rows_padded(setup):
    _, _, split, enc, sid_rows = setup
    ex = window_source(split, sid_rows, enc).rows()
    tensors = EpochTensors.from_rows(ex["input_ids"], ex["labels"])
    assert tensors.lengths.tolist() == [len(x) for x in ex["input_ids"]]
    for idx in epoch_batches(tensors.lengths, 16, epoch=0, seed=0):
        b = tensors.batch(idx)
        T = max(len(ex["input_ids"][i]) for i in idx)
        assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (len(idx), T)
        for j, i in enumerate(idx):
            n = len(ex["input_ids"][i])
            assert b["input_ids"][j, :n].tolist() == ex["input_ids"][i] and (b["input_ids"][j, n:] == 0).all()
            assert b["labels"][j, :n].tolist() == ex["labels"][i] and (b["labels"][j, n:] == IGNORE).all()
            assert b["attention_mask"][j].tolist() == [1] * n + [0] * (T - n)
        assert torch.equal(b["targets"][:, :-1], b["labels"][:, 1:])  # token t+1 at t
        assert b["input_ids"].dtype == b["labels"].dtype == torch.int64
    with pytest.raises(ValueError, match="labels"):
        EpochTensors.from_rows([[1, 2, 3]], [[1, 2]])


def test_augmented_epochs_hold_only_training_titles_and_differ(setup):
    data, ids, split, enc, sid_rows = setup
    source = window_source(split, sid_rows, enc)
    L = enc.layout.sid_length
    augment = Augment(item_dropout=0.3, jitter=True)
    one = source.rows(augment, np.random.default_rng([0, 1, 7]))
    again = source.rows(augment, np.random.default_rng([0, 1, 7]))
    other = source.rows(augment, np.random.default_rng([0, 2, 7]))
    assert one == again and one["input_ids"] != other["input_ids"]  # seeded per epoch
    plain = source.rows()
    assert len(one["input_ids"]) != len(plain["input_ids"]) or one["input_ids"] != plain["input_ids"]
    seen_targets = 0
    for input_ids, labels, u in zip(one["input_ids"], one["labels"], one["member"]):
        titles = enc.decode_rows(input_ids)
        train = set(sid_rows[split.train_items(u)].tolist())
        assert set(titles) <= train  # validation and test targets never enter a window
        code = [t for t in labels if t != IGNORE]
        assert len(code) == (len(titles) - 1) * L  # every title but the first is a target
        seen_targets += len(titles) - 1
    total = sum(max(len(split.train_items(u)) - 1, 0) for u in range(len(split.sequences)))
    assert 0.5 * total < seen_targets < total  # about 30% of titles left out, never all
    with pytest.raises(ValueError, match="random generator"):
        source.rows(augment)
