"""``sidrec catalog update``: titles added to the catalog become servable without a fine-tune.

The new titles get IDs from the trained quantizer (existing IDs never move); a title-token model
gets their rows from their codes (no identity learned yet); the co-engagement table gains empty
rows; soft prompts, LoRAs and the fusion choice travel unchanged. The folder records how many titles
the model was trained with: serving treats the later ones as fresh (``ServingConfig.fresh.fresh_share``).
A fine-tune (``sidrec refresh``) can follow as the second step.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from core.artifacts import atomic_dir, file_sha256, manifest_hash, read_json, write_json
from core.data import DataConfig, RecData, load_data
from gen_fm.co_engagement import CO_ENGAGEMENT_FILE, save_co_engagement
from gen_fm.model import IDS_SUBDIR, load_model
from gen_fm.titles import extend_titles
from gen_fm.tokenizer import build_tokenizer
from sidrec.refresh import assign_new_titles


def update_catalog(model_dir: str | Path, data: DataConfig | RecData, out_dir: str | Path) -> dict[str, Any]:
    """Write `out_dir`: the model folder `model_dir` serving every title of `data`'s catalog."""
    t0 = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(
            "write the updated folder beside the served one (--out): it is swapped in when complete"
        )
    gen = load_model(model_dir)
    data = data if isinstance(data, RecData) else load_data(data)
    with tempfile.TemporaryDirectory() as tmp:
        ids, new_titles = assign_new_titles(gen, data, Path(tmp) / "ids")
        layout = extend_titles(
            gen.model, gen.layout, gen.layout.sids_to_ids(ids.codes), gen.title_code_rows()
        )
        table = gen.co_engagement()
        with atomic_dir(out_dir) as stage:
            shutil.copytree(model_dir, stage, dirs_exist_ok=True)
            shutil.rmtree(stage / IDS_SUBDIR)
            shutil.copytree(ids.path, stage / IDS_SUBDIR)
            if layout is not gen.layout:  # a title-token model: the new titles' rows
                gen.model.save_pretrained(stage, safe_serialization=True)
                build_tokenizer(layout).save_pretrained(stage)
            if table is not None:
                save_co_engagement(stage / CO_ENGAGEMENT_FILE, table.padded(ids.num_items))
            manifest = read_json(stage / "manifest.json")
            before = manifest.get("catalog") or {}
            manifest["layout"] = layout.to_json()
            manifest["parents"][IDS_SUBDIR] = manifest_hash(stage / IDS_SUBDIR)
            manifest["files"] = {name: file_sha256(stage / name) for name in manifest["files"]}
            update = {
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "from": manifest_hash(model_dir),
                "data": data.fingerprint,
                "added_titles": len(new_titles),
            }
            manifest["catalog"] = {
                "trained_titles": before.get("trained_titles", gen.ids.num_items),
                "titles": ids.num_items,
                "updates": before.get("updates", []) + [update],
            }
            write_json(stage / "manifest.json", manifest)
    return {
        "dataset": data.name,
        "model": str(out_dir),
        "trained_titles": manifest["catalog"]["trained_titles"],
        "titles": ids.num_items,
        "added_titles": len(new_titles),
        "examples": [f"{ids.layout.sid_string(ids.sid(t))}  {ids.title(t)}" for t in new_titles[:3]],
        "seconds": round(time.perf_counter() - t0, 1),
    }
