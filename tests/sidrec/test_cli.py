"""The `sidrec` command line as a user runs it: real slices, clear errors, exit codes."""

from __future__ import annotations

import json

import pytest

from sidrec.cli import main

FAST = ["--set", "text_weight=0", "--set", "metadata_weight=1", "--set", "codebook_size=32",
        "--set", "dedup_size=64", "--set", "epochs=2", "--set", "hidden_dims=[64]",
        "--set", "latent_dim=16", "--set", "kmeans_iters=5"]


def test_ids_build_inspect_assign(data_dir, tmp_path, capsys):
    out = tmp_path / "ids"
    rc = main(["ids", "build", "--data", str(data_dir), "--dataset", "ml-latest-small",
               "--max-users", "20", "--out", str(out), "--quantizer", "rqkmeans", *FAST])
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["unique_ids"] and stats["num_items"] == 9742
    assert main(["ids", "inspect", str(out), "--groups", "2"]) == 0
    text = capsys.readouterr().out
    assert "collision_rate" in text and "Titles sharing their first" in text
    # nothing new in the same catalog: map version stays 1
    assert main(["ids", "assign", "--ids", str(out), "--data", str(data_dir),
                 "--dataset", "ml-latest-small", "--max-users", "20"]) == 0
    assert "0 new title(s)" in capsys.readouterr().out


def test_clear_errors(data_dir, tmp_path, capsys):
    assert main(["ids", "inspect", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().out
    assert main(["ids", "build", "--data", str(data_dir), "--out", str(tmp_path / "x")]) == 2
    assert "choose one with --dataset" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown SemanticIDConfig field"):
        main(["ids", "build", "--data", str(data_dir), "--dataset", "ml-latest-small",
              "--out", str(tmp_path / "x"), "--set", "levels=3"])
    with pytest.raises(SystemExit, match="invalid SemanticIDConfig"):
        main(["ids", "build", "--data", str(data_dir), "--dataset", "ml-latest-small",
              "--out", str(tmp_path / "x"), "--set", "codebook_size=1"])
    assert not (tmp_path / "x").exists()


def test_pretrain_init_from_starts_from_a_model_and_refuses_another_shape(data_dir, tmp_path, capsys):
    ids = tmp_path / "ids"
    common = ["--data", str(data_dir), "--dataset", "ml-latest-small", "--max-users", "20"]
    assert main(["ids", "build", *common, "--out", str(ids), "--quantizer", "rqkmeans", *FAST]) == 0
    tiny = ["--preset", "tiny", "--ids", str(ids), "--threads", "1", "--set", "epochs=1",
            "--set", "eval_every=0", "--set", "num_user_buckets=4", "--set", "batch_size=8"]
    assert main(["pretrain", *common, *tiny, "--out", str(tmp_path / "a")]) == 0
    parent = tmp_path / "a" / "model"
    assert main(["pretrain", *common, *tiny, "--out", str(tmp_path / "b"), "--init-from", str(parent)]) == 0
    manifest = json.loads((tmp_path / "b" / "model" / "manifest.json").read_text())
    assert "init_from" in manifest["parents"]
    capsys.readouterr()
    assert main(["pretrain", *common, *tiny, "--set", "num_user_buckets=0", "--out", str(tmp_path / "c"),
                 "--init-from", str(parent)]) == 2
    err = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "cannot start from" in err and "token layout" in err
    assert not (tmp_path / "c" / "model").exists()
    # evaluation on a device this machine does not have: a clear error before any work
    with pytest.raises(SystemExit, match="no CUDA GPU|only .* CUDA device"):
        main(["eval", *common, "--model", str(parent), "--device", "cuda:7", "--eval-users", "5"])
    with pytest.raises(SystemExit, match="not a torch device"):
        main(["eval", *common, "--model", str(parent), "--device", "gpu-please", "--eval-users", "5"])
    assert main(["eval", *common, "--model", str(parent), "--device", "cpu", "--eval-users", "5",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["device"] == "cpu"
