"""The quickstart end to end on a tiny preset and a real slice; a second run reuses every stage."""

from __future__ import annotations

import json

import pytest

from sidrec.cli import main

TINY_IDS = {
    "text_weight": 0,
    "metadata_weight": 1,
    "collaborative_weight": 1,
    "codebook_size": 32,
    "dedup_size": 64,
    "quantizer_options": {"kmeans_iters": 5},
}


def test_quickstart_tiny(data_dir, tmp_path, capsys):
    preset = tmp_path / "tiny.json"
    preset.write_text(
        json.dumps(
            {
                "pretrain": {"preset": "tiny", "epochs": 1, "val_users": 5, "eval_every": 1, "patience": 0},
                "max_users": 25,
                "judge": {"k": 5, "eval_users": 8},
                "examples": 1,
                "ids": TINY_IDS,
                "canvases": ["home", "t2t"],
                "backend": "transformers",
                # home and t2t are served by the frozen model by default; a
                # soft prompt each here, to go through training and export
                "prompts": {
                    "max_train_examples": 64,
                    "method": "soft_prompt",
                    "max_eval_examples": 16,
                    "epochs": 1,
                },
            }
        )
    )
    out = tmp_path / "qs"
    argv = ["quickstart", "--data", str(data_dir), "--out", str(out), "--preset", str(preset)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    report = json.loads((out / "eval-test.json").read_text())
    assert report["num_users"] == 8 and report["invalid_rate"] == 0.0
    assert report["k"] == 5 and "recall@5" in report and "recall@10" not in report  # judge.ks
    assert report["num_beams"] == 10  # gen_fm.beams.beam_width(5)
    assert "5/5 recommendations" in first and " 5. " in first  # k=5 titles printed
    assert "more like" in first and "soft prompt" in first
    closing = first.strip().splitlines()[-1]  # where the time went, stage by stage
    assert closing.startswith("quickstart done in ") and "pretraining " in closing and "examples " in closing
    assert "t2t: these IDs have no text modality, so no candidate sets" in first  # as served
    assert len(list(out.glob("run-*/model/manifest.json"))) == 1
    served = out / "prompts" / "served"
    assert json.loads((served / "adapters.json").read_text()).keys() == {"home", "t2t"}
    assert (served / "co_engagement" / "table.safetensors").is_file()  # pretraining wrote it, export kept it
    assert (served / "fusion" / "fusion.json").is_file()  # chosen on validation, export kept it
    assert not list(served.glob("*.safetensors"))[1:]  # vLLM reads every top-level one as weights
    # the run record: how it ran and what it measured, in one file
    record = json.loads((out / "quickstart.json").read_text())
    assert record["command"] == "sidrec " + " ".join(argv)
    assert list(record["stage_seconds"]) == [
        "semantic IDs", "pretraining", "fusion weight", "test evaluation", "canvas adapters", "examples"
    ]  # fmt: skip
    assert record["closing_line"] == closing and record["machine"]["torch_threads"] >= 1
    assert record["test"] == report and record["trained_with"]["model"]["num_layers"] == 2
    assert record["training"]["epochs_done"] == 1
    assert record["canvas_adapters"].keys() == {"home", "t2t"}
    assert {"base", "adapter"} <= record["canvas_adapters"]["t2t"].keys()

    assert main(argv) == 0  # everything is up to date: reused, not rebuilt
    second = capsys.readouterr().out
    # IDs, model, its fusion weight, the two soft prompts, the served folder
    assert second.count("reusing") == 6

    # by default neither canvas trains an adapter: the model folder itself is served
    from core.data import DataConfig
    from prompt_tuning.config import PromptTuningStageConfig
    from sidrec.quickstart import stage_prompts

    model_dir = next(out.glob("run-*/model"))
    assert (
        stage_prompts(
            model_dir,
            DataConfig(data_dir=str(data_dir), max_users=25),
            ["home", "t2t"],
            PromptTuningStageConfig(),
            tmp_path / "frozen",
        )
        == model_dir
    )
    said = capsys.readouterr().out
    assert "home: served by the frozen model" in said and "t2t: served by the frozen model" in said
    assert not (tmp_path / "frozen").exists()


def test_the_quickstart_config_holds_the_stages_configs():
    """One field per stage, reached with dotted --set keys; the rest of each stage keeps its recipe."""
    from core.overrides import config_from_args
    from gen_fm.config import PretrainConfig
    from sidrec.quickstart import QuickstartConfig

    c = config_from_args(
        QuickstartConfig, None, ["pretrain.lr=0.001", "ids.quantizer=rqvae", "prompts.epochs=5"]
    )
    assert isinstance(c.pretrain, PretrainConfig)
    assert (c.pretrain.optim.lr, c.pretrain.optim.epochs, c.pretrain.optim.batch_size, c.pretrain.preset) == (
        0.001,
        12,
        64,
        "small",
    )
    assert c.ids.codes.quantizer == "rqvae" and c.prompts.training.epochs == 5
    base = config_from_args(QuickstartConfig, None, ["pretrain.preset=base"]).pretrain
    assert base == PretrainConfig.from_preset("base")
    # a concern's dotted path, and a name shared by two stages is refused naming both
    c = config_from_args(QuickstartConfig, None, ["pretrain.optim.lr=0.001", "pretrain.hidden_dropout=0.1"])
    assert (c.pretrain.optim.lr, c.pretrain.model.hidden_dropout, c.pretrain.optim.epochs) == (0.001, 0.1, 12)
    with pytest.raises(
        SystemExit, match=r"'lr' is a field of several configs \(pretrain.optim.lr, prompts.training.lr\)"
    ):
        config_from_args(QuickstartConfig, None, ["lr=0.001"])


def test_the_quickstart_judges_with_the_refreshs_judge_config():
    """K, beam, members and batch are one nested JudgeConfig, as in the refresh and in
    pretraining's validation: a name they share is refused alone, naming both paths."""
    from core.overrides import config_from_args
    from eval.config import EvalConfig
    from gen_fm.beams import JudgeConfig
    from sidrec.quickstart import QuickstartConfig

    assert QuickstartConfig().judge == JudgeConfig(eval_batch_size=EvalConfig().batch_size)
    c = config_from_args(QuickstartConfig, None, ["judge.k=20", "judge.eval_users=100", "judge.num_beams=25"])
    assert (c.judge.k, c.judge.eval_users, c.judge.beams, c.judge.ks) == (20, 100, 25, (5, 20))
    assert c.pretrain.validation.judge == QuickstartConfig().pretrain.validation.judge  # untouched
    assert QuickstartConfig(judge={"k": 3}).judge.ks == (3,)
    # validation's old name for its members still reaches it
    assert config_from_args(QuickstartConfig, None, ["val_users=7"]).pretrain.validation.judge.eval_users == 7
    for name in ("k", "eval_batch_size"):
        with pytest.raises(
            SystemExit,
            match=rf"'{name}' is a field of several configs \(pretrain.validation.judge.{name}, judge.{name}\)",
        ):
            config_from_args(QuickstartConfig, None, [f"{name}=8"])
    with pytest.raises(SystemExit, match="a beam narrower than K cannot return K titles"):
        config_from_args(QuickstartConfig, None, ["judge.k=20", "judge.num_beams=10"])


def test_the_quickstart_takes_any_registered_backend():
    from serving.backends.registry import register_backend, unregister_backend
    from sidrec.quickstart import QuickstartConfig

    with pytest.raises(ValueError, match=r"backend must be a registered one.*'mine'"):
        QuickstartConfig(backend="mine")
    register_backend("mine", "serving.backends.transformers:TransformersBackend")
    try:
        assert QuickstartConfig(backend="mine").backend == "mine"
    finally:
        unregister_backend("mine")
