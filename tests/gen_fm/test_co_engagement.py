"""The co-engagement table: counted by hand on tiny histories, and carried by the model folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_fm.co_engagement import (
    CO_ENGAGEMENT_FILE,
    build_co_engagement,
    load_co_engagement,
    save_co_engagement,
)
from gen_fm.config import PretrainConfig
from gen_fm.model import TITLE_TAGS_FILE, build_model, load_model
from gen_fm.tokenizer import model_layout
from core.artifacts import ArtifactError
from tests.tiny_folders import save_unit_model, write_id_artifact


def test_counts_titles_within_the_window_either_side() -> None:
    # member A: 0 1 2 3; member B: 2 1 (no ID) 0 4 -> the title without an ID is skipped
    table = build_co_engagement([np.array([0, 1, 2, 3]), np.array([2, 1, -1, 0, 4])], 6, window=1, top=3)
    # window 1: A gives 0-1, 1-2, 2-3; B gives 2-1, 1-0, 0-4
    assert table.of(1).tolist() == [0, 2]  # 2 each, both watched twice: the lower row first
    assert table.counts[1].tolist() == [2, 2, 0]
    # equal counts: the more watched title first (4 is watched three times, 0 once)
    tie = build_co_engagement([np.array([0, 1, 2]), np.array([4, 3]), np.array([4, 3])], 5, window=1)
    assert tie.of(1).tolist() == [0, 2] and tie.of(3).tolist() == [4]
    tie = build_co_engagement([np.array([0, 1, 2]), np.array([2, 3])], 4, window=1)
    assert tie.of(1).tolist() == [2, 0]  # 2 watched twice, 0 once
    assert table.of(0).tolist() == [1, 4] and table.of(3).tolist() == [2]
    assert table.of(5).tolist() == [] and table.neighbours[5].tolist() == [-1, -1, -1]
    assert table.of(1, 1).tolist() == [0]
    wide = build_co_engagement([np.array([0, 1, 2, 3])], 4, window=2, top=3)
    assert wide.of(0).tolist() == [1, 2]  # two events apart counts with window 2
    # a title repeated next to itself is not its own neighbour
    assert build_co_engagement([np.array([3, 3, 1])], 4, window=1).of(3).tolist() == [1]
    with pytest.raises(ValueError, match="not in the co-engagement table"):
        table.of(6)
    with pytest.raises(ValueError, match="beyond the 2 titles"):
        build_co_engagement([np.array([0, 5])], 2)


def test_recent_titles_sum_their_counts_with_decay_and_skip_the_history() -> None:
    # window 1 over 0 1 2 3 | 1 2 4 | 2 4 5: title 2's counts 1:2 4:2 3:1; title 1's 2:2 0:1
    table = build_co_engagement(
        [np.array([0, 1, 2, 3]), np.array([1, 2, 4]), np.array([2, 4, 5])], 6, window=1
    )
    assert table.of(2).tolist() == [1, 4, 3]  # the newest title's own list, history included
    # 4: 2, 3: 1, 0: 0.5 * 1; 1 and 2 are the history
    assert table.of_recent([1, 2], titles=2, decay=0.5) == [4, 3, 0]
    assert table.of_recent([1, 2], titles=1) == [4, 3]  # the newest title alone, minus the history
    # decay 1: 0 (1) ties 3 (1): the newest title's list comes first, so 3 before 0
    assert table.of_recent([1, 2], titles=2, decay=1.0) == [4, 3, 0]
    # 1 (2) ties 4 (2): the table's own order of the newest title's list; 2 counts 0.5 * 2
    assert table.of_recent([1, 2], titles=2, exclude_history=False) == [1, 4, 3, 2, 0]
    # 0 is older than the 2 newest titles: its counts do not count, and as history it never returns
    assert table.of_recent([0, 1, 2], titles=2) == [4, 3]
    assert table.of_recent([0, 1, 2], titles=3) == [4, 3]
    assert table.of_recent([]) == [] and table.of_recent([-1]) == []
    with pytest.raises(ValueError, match="not in the co-engagement table"):
        table.of_recent([7])
    with pytest.raises(ValueError, match="decay in"):
        table.of_recent([1], decay=0.0)


def test_round_trips_and_travels_in_the_model_folder(tmp_path) -> None:
    table = build_co_engagement([np.array([0, 1, 2, 3, 1, 0])], 20, window=2, top=4)
    save_co_engagement(tmp_path / "t.safetensors", table)
    back = load_co_engagement(tmp_path / "t.safetensors")
    assert (
        back.window == 2
        and (back.neighbours == table.neighbours).all()
        and (back.counts == table.counts).all()
    )

    ids = write_id_artifact(tmp_path / "ids", [f"t{i}" for i in range(20)], (4, 4, 2))
    config = PretrainConfig.from_preset("tiny")
    layout = model_layout(ids.layout, config.model.num_user_buckets)
    torch.manual_seed(0)
    model = build_model(config, layout, max_history=5).eval()

    def save(name: str, **manifest):
        return save_unit_model(tmp_path / name, model, layout, ids, config, 5, **manifest)

    out = save("model", co_engagement=table)
    gen = load_model(out)
    assert gen.co_engagement().of(1).tolist() == table.of(1).tolist()
    assert CO_ENGAGEMENT_FILE in gen.manifest["files"]  # hashed like the weights
    (out / CO_ENGAGEMENT_FILE).write_bytes((out / CO_ENGAGEMENT_FILE).read_bytes()[:-1] + b" ")
    with pytest.raises(ArtifactError, match="co_engagement/table.safetensors does not match"):
        load_model(out)
    # a folder from before the table existed loads, and says it has none
    older = save("older")
    assert load_model(older).co_engagement() is None and load_model(older).title_tags() is None
    tagged = save("tagged", title_tags={"t3": ["dark comedy", "funny"]})
    assert load_model(tagged).title_tags() == {"t3": ["dark comedy", "funny"]}
    assert TITLE_TAGS_FILE in load_model(tagged).manifest["files"]
    untagged = save("untagged", title_tags={})  # data without tags: the folder says so
    assert load_model(untagged).title_tags() == {}
    with pytest.raises(ValueError, match="covers 3 titles"):
        save("bad", co_engagement=build_co_engagement([], 3))
