"""Roll-up and leave-one-out split."""

from __future__ import annotations

import numpy as np
import pytest

from core.data import DataConfig, load_data
from core.sequences import SequenceConfig, build_sequences, leave_one_out


def _ml(tmp_path, ratings: str, tags: str | None = None):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(f"{i},M{i} (2000),Drama\n" for i in range(1, 8))
    )
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    if tags:
        (d / "tags.csv").write_text("userId,movieId,tag,timestamp\n" + tags)
    return load_data(DataConfig(data_dir=str(d)))


def test_rollup_merges_repeats_inside_window(tmp_path):
    data = _ml(tmp_path, "1,1,3.0,100\n1,2,4.0,200\n1,3,5.0,300\n", tags="1,1,funny,150\n1,1,again,100000\n")
    seqs = build_sequences(data, SequenceConfig(rollup_window_seconds=3600))
    rows = [data.catalog["item_id"][i] for i in seqs.items(0)]
    # rating at 100 and tag at 150 are one event; the tag a day later is a new one
    assert rows == ["1", "2", "3", "1"]
    assert seqs.count.tolist() == [2, 1, 1, 1]
    assert seqs.first_time[0] == 100 and seqs.last_time[0] == 150
    assert seqs.rolled_up == 1
    assert seqs.rating[0] == 3.0 and np.isnan(seqs.rating[3])


def test_rollup_window_zero_keeps_everything(tmp_path):
    data = _ml(tmp_path, "1,1,3.0,100\n1,2,4.0,200\n", tags="1,1,x,101\n")
    seqs = build_sequences(data, SequenceConfig(rollup_window_seconds=0))
    assert len(seqs.item_index) == 3


def test_split_and_history_cap(tmp_path):
    ratings = "".join(f"1,{i},4.0,{i * 10}\n" for i in range(1, 8)) + "2,1,4.0,5\n2,2,4.0,6\n"
    data = _ml(tmp_path, ratings)
    split = leave_one_out(build_sequences(data), SequenceConfig(max_history=3))
    assert split.num_train_only == 1  # member 2 has two events
    test = split.examples("test")
    valid = split.examples("valid")
    ids = data.catalog["item_id"]
    assert ids[test.targets[0]] == "7" and ids[valid.targets[0]] == "6"
    assert [ids[i] for i in test.histories[0]] == ["4", "5", "6"]
    assert [ids[i] for i in valid.histories[0]] == ["3", "4", "5"]
    assert [ids[i] for i in split.train_items(0)] == ["1", "2", "3", "4", "5"]
    users, items = split.train_pairs()
    assert len(items) == 5 + 2  # member 2 trains on both events
    train = split.examples("train")  # the newest training event: a transition the model saw
    assert ids[train.targets[0]] == "5" and [ids[i] for i in train.histories[0]] == ["2", "3", "4"]
    assert train.targets[0] == split.train_items(0)[-1]
    assert train.users.tolist() == [0]  # member 2 (two events) has no held-out transition at all
    with pytest.raises(ValueError):
        split.examples("training")


def test_real_split_is_deterministic(ml_small):
    a = leave_one_out(build_sequences(ml_small)).examples("test")
    b = leave_one_out(build_sequences(ml_small)).examples("test")
    assert np.array_equal(a.targets, b.targets)
    assert all(len(h) <= 20 for h in a.histories)
    assert len(a.targets) == 40


def test_config_validation():
    with pytest.raises(ValueError):
        SequenceConfig(max_history=0)
    with pytest.raises(ValueError):
        SequenceConfig(rollup_window_seconds=-1)
