"""Host time per training step: batches collated from a ``datasets`` table (the loop before) against
slices of the epoch's padded tensors (the loop now). Neither path runs the model.

    sidrec bench host-batches --dataset amazon-beauty --ids runs/beauty/ids --out results/gen_fm/host-batches.json
"""

from __future__ import annotations

import time

import numpy as np

from eval.machine import machine_info
from gen_fm.batches import Augment, EpochTensors, epoch_batches
from gen_fm.dataset import PadCollator, build_examples, catalog_to_sid_rows, window_source
from gen_fm.tokenizer import PromptEncoder
from semantic_ids.ids import SemanticIDs
from core.artifacts import write_json
from core.data import DataConfig, load_data
from core.sequences import SequenceConfig, build_sequences, leave_one_out


def bench_host_batches(
    *, dataset: str, ids: str, out: str, data_dir: str | None = None, batch_size: int = 256, command: str = ""
) -> dict:
    """Host milliseconds per batch of both loops over ``dataset`` with the ID artifact ``ids``;
    writes ``out`` and returns the report. ``command`` is recorded in it."""
    data = load_data(DataConfig(data_dir=data_dir, dataset=dataset))
    seq = SequenceConfig()
    split = leave_one_out(build_sequences(data, seq), seq)
    sids = SemanticIDs.load(ids)
    encoder = PromptEncoder.from_ids(sids, 0)
    sid_rows = catalog_to_sid_rows(data, sids)
    examples = build_examples(split, sid_rows, encoder)
    lengths = np.asarray([len(x) for x in examples["input_ids"]], dtype=np.int64)
    batches = epoch_batches(lengths, batch_size, epoch=0, seed=0)

    collate = PadCollator()
    t0 = time.perf_counter()
    for idx in batches:
        collate(examples[idx.tolist()])
    before = (time.perf_counter() - t0) / len(batches)

    # what an augmented epoch costs once: cut the windows anew, then pad them into tensors
    source = window_source(split, sid_rows, encoder)
    t0 = time.perf_counter()
    rows = source.rows(Augment(item_dropout=0.15, jitter=True), np.random.default_rng(0))
    cut = time.perf_counter() - t0
    t0 = time.perf_counter()
    EpochTensors.from_rows(rows["input_ids"], rows["labels"])
    build = time.perf_counter() - t0
    tensors = EpochTensors.from_rows(examples["input_ids"], examples["labels"])
    t0 = time.perf_counter()
    for idx in batches:
        tensors.batch(idx)
    after = (time.perf_counter() - t0) / len(batches)
    report = {
        "benchmark": "host_batches",
        "dataset": data.name,
        "rows": len(lengths),
        "batch_size": batch_size,
        "batches": len(batches),
        "collator_ms_per_batch": round(1000 * before, 3),
        "tensor_slice_ms_per_batch": round(1000 * after, 3),
        "augmented_cut_seconds_per_epoch": round(cut, 3),
        "tensor_build_seconds_per_epoch": round(build, 3),
        "tensor_ms_per_batch_with_build": round(1000 * (after + build / len(batches)), 3),
        "augmented_ms_per_batch_with_cut_and_build": round(1000 * (after + (cut + build) / len(batches)), 3),
        "command": command,
        "data_fingerprint": data.fingerprint,
        "machine": machine_info(),
    }
    write_json(out, report)
    print(
        f"{data.name}: {len(batches)} batches of {batch_size}: collator "
        f"{report['collator_ms_per_batch']} ms/batch, tensor slices {report['tensor_slice_ms_per_batch']} "
        f"ms/batch (+ {build:.2f} s per epoch to pad, + {cut:.2f} s to cut augmented windows)"
    )
    return report
