"""`sidrec bench canvases` on a tiny trained model: home judged as served, beside its parts."""

from __future__ import annotations

from eval.bench_canvases import benchmark_canvas
from prompt_tuning.config import PromptTuningStageConfig
from core.data import load_data
from core.sequences import build_sequences, leave_one_out
from tests.eval.test_next_title import model_dir  # noqa: F401  (the module's tiny model)


def test_home_is_judged_as_served_with_and_without_its_soft_prompt(model_dir) -> None:  # noqa: F811
    from gen_fm.model import load_model

    dc, path = model_dir
    data = load_data(dc)
    gen = load_model(path)
    split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
    config = PromptTuningStageConfig.create(
        canvas="home", method="soft_prompt", epochs=1, max_train_examples=32, max_eval_examples=12
    )
    rep = benchmark_canvas(path, data, split, "home", config, full_finetune=False)
    for variant in ("base", "adapter", "base_fused", "adapter_fused"):
        assert 0.0 <= rep[variant]["recall@10"] <= 1.0, variant
    assert rep["base_fused"]["fusion_k"] == 5 and rep["adapter_fused"]["trainable_parameters"] > 0
