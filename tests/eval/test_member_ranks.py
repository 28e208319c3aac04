"""Member-ranks files: what they hold, and a comparison refuses files that did not judge the same thing."""

from __future__ import annotations

import numpy as np
import pytest

from eval.member_ranks import compare_member_ranks, member_ranks_file, read_member_ranks


def _write(path, users, targets, ranks, fingerprint="fp", list_length=10):
    member_ranks_file(
        path,
        ranks={name: np.asarray(r) for name, r in ranks.items()},
        users=users,
        targets=targets,
        dataset="toy",
        split="test",
        data_fingerprint=fingerprint,
        list_length=list_length,
        source={"what": str(path)},
    )
    return str(path)


def test_compare_pairs_members_by_user_id_whatever_their_order(tmp_path):
    a = _write(
        tmp_path / "a.json", ["u1", "u2", "u3"], ["x", "y", "z"], {"model": [0, -1, 4], "beam": [1, 2, 3]}
    )
    # the same members in another order, with their own places
    b = _write(tmp_path / "b.json", ["u3", "u1", "u2"], ["z", "x", "y"], {"history_excluded": [-1, 0, 1]})
    got = compare_member_ranks(f"{a}:model", b, ks=(5,))
    f = got["@5"]
    # a hits u1, u3; b hits u1, u2
    assert (f["recall@5_a"], f["recall@5_b"], f["members"]) == (2 / 3, 2 / 3, 3)
    assert f["recall@5_diff"] == 0.0 and f["recall@5_diff_se"] > 0
    assert got["a"]["ranking"] == "model" and got["b"]["ranking"] == "history_excluded"
    assert read_member_ranks(a)["ranks"]["beam"] == [1, 2, 3]


def test_compare_refuses_what_was_not_judged_alike(tmp_path):
    a = _write(tmp_path / "a.json", ["u1", "u2"], ["x", "y"], {"model": [0, 1], "beam": [0, 1]})
    with pytest.raises(ValueError, match="name one as"):
        compare_member_ranks(a, a)
    with pytest.raises(ValueError, match="no ranking 'served'"):
        compare_member_ranks(f"{a}:served", f"{a}:model")
    other_data = _write(tmp_path / "b.json", ["u1", "u2"], ["x", "y"], {"m": [0, 1]}, fingerprint="other")
    with pytest.raises(ValueError, match="different data_fingerprints"):
        compare_member_ranks(f"{a}:model", other_data)
    fewer = _write(tmp_path / "c.json", ["u1"], ["x"], {"m": [0]})
    with pytest.raises(ValueError, match="different members"):
        compare_member_ranks(f"{a}:model", fewer)
    moved = _write(tmp_path / "d.json", ["u1", "u2"], ["x", "z"], {"m": [0, 1]})
    with pytest.raises(ValueError, match="different targets"):
        compare_member_ranks(f"{a}:model", moved)
    short = _write(tmp_path / "e.json", ["u1", "u2"], ["x", "y"], {"m": [0, 1]}, list_length=5)
    with pytest.raises(ValueError, match="longer than the lists"):
        compare_member_ranks(f"{a}:model", short, ks=(10,))
    (tmp_path / "r.json").write_text('{"kind": "baseline"}')
    with pytest.raises(ValueError, match="not a member-ranks file"):
        compare_member_ranks(str(tmp_path / "r.json"), f"{a}:model")


def test_a_written_comparison_is_a_results_file_the_report_reads(tmp_path):
    from core.artifacts import write_json
    from eval.report_parsers import load_results

    a = _write(tmp_path / "a.json", ["u1", "u2", "u3"], ["x", "y", "z"], {"model": [0, -1, 4]})
    b = _write(tmp_path / "b.json", ["u1", "u2", "u3"], ["x", "y", "z"], {"sasrec": [3, 1, -1]})
    (tmp_path / "results").mkdir()
    write_json(tmp_path / "results" / "cmp.json", compare_member_ranks(a, b, ks=(5, 10)))
    res = load_results(tmp_path / "results")
    assert not res.skipped and [f.kind for f in res.figures] == ["paired_comparison"]
    fig = res.figures[0].figures
    assert fig["R@10 a"] == fig["R@10 b"] == 2 / 3 and fig["R@10 a - b"] == 0.0
    assert fig["R@5 a - b, paired SE"] > 0
