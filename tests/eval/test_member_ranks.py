"""Member-ranks files: what they hold, and a comparison refuses files that did not judge the same thing."""

from __future__ import annotations

from pathlib import Path

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
    twice = _write(tmp_path / "t.json", ["u1", "u1"], ["x", "x"], {"m": [0, 1]})
    with pytest.raises(ValueError, match="1 member.* more than once"):
        compare_member_ranks(f"{a}:model", twice)
    elsewhere = _write(tmp_path / "w.json", ["u1", "u9"], ["x", "y"], {"m": [0, 1]})
    with pytest.raises(ValueError, match="1 of the second not in the first, e.g. 'u9'"):
        compare_member_ranks(f"{a}:model", elsewhere)
    (tmp_path / "r.json").write_text('{"kind": "baseline"}')
    with pytest.raises(ValueError, match="not a member-ranks file"):
        compare_member_ranks(str(tmp_path / "r.json"), f"{a}:model")


def test_a_side_of_several_runs_scores_each_member_by_its_mean_over_them(tmp_path):
    users, targets = ["u1", "u2", "u3", "u4"], ["w", "x", "y", "z"]
    s0 = _write(tmp_path / "s0.json", users, targets, {"model": [0, -1, 4, -1]})
    # seed 1 lists its members in another order: it is aligned by user id
    s1 = _write(tmp_path / "s1.json", users[::-1], targets[::-1], {"model": [-1, 20, 0, 2]})
    b0 = _write(tmp_path / "b0.json", users, targets, {"sasrec": [3, 1, -1, -1]})
    b1 = _write(tmp_path / "b1.json", users, targets, {"sasrec": [3, -1, -1, -1]})
    got = compare_member_ranks(f"{s0}:model,{s1}", [f"{b0}", f"{b1}:sasrec"], ks=(10,))
    f = got["@10"]
    # hits at 10, members u1..u4: seed 0 1,0,1,0; seed 1 1,1,0,0 -> means 1, .5, .5, 0
    assert f["recall@10_a_runs"] == [0.5, 0.5] and f["recall@10_a"] == 0.5
    assert f["recall@10_b_runs"] == [0.5, 0.25] and f["recall@10_b"] == 0.375
    d = np.array([1, 0.5, 0.5, 0]) - np.array([1, 0.5, 0, 0])
    assert f["recall@10_diff"] == pytest.approx(d.mean())
    assert f["recall@10_diff_se"] == pytest.approx(d.std(ddof=1) / 2)
    runs_b = np.array([0.5, 0.25])
    assert f["recall@10_diff_seed_se"] == pytest.approx(np.sqrt(0 / 2 + runs_b.var(ddof=1) / 2))
    assert (f["runs_a"], f["runs_b"]) == (2, 2)
    assert [r["file"] for r in got["a"]["runs"]] == [s0, s1]
    with pytest.raises(ValueError, match="named twice"):
        compare_member_ranks(f"{s0}:model,{s0}:model", b0)
    with pytest.raises(ValueError, match="named twice"):  # the same file by another path
        compare_member_ranks(f"{s0}:model,{tmp_path}/./s0.json:model", b0)
    other = _write(tmp_path / "o.json", users, targets, {"model": [0, 1, 2, 3]}, fingerprint="other")
    with pytest.raises(ValueError, match="different data_fingerprints"):
        compare_member_ranks(f"{s0}:model,{other}", b0)
    with pytest.raises(ValueError, match="empty ranking"):
        compare_member_ranks(f"{s0}:model,", b0)


def test_the_command_prints_each_run_and_writes_what_it_printed(tmp_path, capsys):
    from core.artifacts import read_json
    from sidrec.cli import main

    users, targets = ["u1", "u2", "u3"], ["x", "y", "z"]
    runs = [
        _write(tmp_path / f"a{i}.json", users, targets, {"model": r})
        for i, r in enumerate(([0, -1, 4], [9, 1, -1]))
    ]
    b = [
        _write(tmp_path / f"b{i}.json", users, targets, {"sasrec": r})
        for i, r in enumerate(([3, 1, -1], [3, -1, -1]))
    ]
    out = tmp_path / "cmp.json"
    assert (
        main(["compare", ",".join(f"{r}:model" for r in runs), ",".join(b), "--ks", "10", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    f = read_json(out)["@10"]
    assert f"a, run by run: {f['recall@10_a_runs'][0]:.4f}  {f['recall@10_a_runs'][1]:.4f}" in printed
    assert f"SE of a - b over the runs' figures {f['recall@10_diff_seed_se']:.4f}" in printed
    assert [r["file"] for r in read_json(out)["a"]["runs"]] == runs


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
    assert fig["R@5 a - b, paired SE"] > 0 and "R@5 a - b, SE over runs" not in fig
    a2, b2 = tmp_path / "a2.json", tmp_path / "b2.json"  # a second seed of each, alike
    a2.write_text(Path(a).read_text())
    b2.write_text(Path(b).read_text())
    write_json(tmp_path / "results" / "seeds.json", compare_member_ranks(f"{a},{a2}", f"{b},{b2}", ks=(10,)))
    seeds = load_results(tmp_path / "results").figures
    assert [f.figures["R@10 a - b, SE over runs"] for f in seeds if f.source.endswith("seeds.json")] == [0.0]
