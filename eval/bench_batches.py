"""Host time per training step: batches collated from a ``datasets`` table (the loop before) against
slices of the epoch's padded tensors (the loop now). Neither path runs the model.

    python -m eval.bench_batches --dataset amazon-beauty --ids runs/beauty/ids --out results/gen_fm/host-batches.json
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from eval.machine import machine_info
from gen_fm.batches import Augment, EpochTensors, epoch_batches
from gen_fm.dataset import PadCollator, build_examples, catalog_to_sid_rows, window_source
from gen_fm.tokenizer import PromptEncoder
from semantic_ids.ids import SemanticIDs
from sidrec.artifacts import write_json
from sidrec.data import DataConfig, load_data
from sidrec.sequences import SequenceConfig, build_sequences, leave_one_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="data directory (default: $SIDREC_DATA_DIR)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--ids", required=True, help="ID artifact")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    data = load_data(DataConfig(data_dir=args.data, dataset=args.dataset))
    seq = SequenceConfig()
    split = leave_one_out(build_sequences(data, seq), seq)
    ids = SemanticIDs.load(args.ids)
    encoder = PromptEncoder.from_ids(ids, 0)
    sid_rows = catalog_to_sid_rows(data, ids)
    examples = build_examples(split, sid_rows, encoder)
    lengths = np.asarray([len(x) for x in examples["input_ids"]], dtype=np.int64)
    batches = epoch_batches(lengths, args.batch_size, epoch=0, seed=0)

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
    report = {"benchmark": "host_batches", "dataset": data.name, "rows": len(lengths),
              "batch_size": args.batch_size, "batches": len(batches),
              "collator_ms_per_batch": round(1000 * before, 3),
              "tensor_slice_ms_per_batch": round(1000 * after, 3),
              "augmented_cut_seconds_per_epoch": round(cut, 3),
              "tensor_build_seconds_per_epoch": round(build, 3),
              "tensor_ms_per_batch_with_build": round(1000 * (after + build / len(batches)), 3),
              "augmented_ms_per_batch_with_cut_and_build":
                  round(1000 * (after + (cut + build) / len(batches)), 3),
              "command": " ".join(["python -m eval.bench_batches", *sys.argv[1:]]),
              "data_fingerprint": data.fingerprint, "machine": machine_info()}
    write_json(args.out, report)
    print(f"{data.name}: {len(batches)} batches of {args.batch_size}: collator "
          f"{report['collator_ms_per_batch']} ms/batch, tensor slices {report['tensor_slice_ms_per_batch']} "
          f"ms/batch (+ {build:.2f} s per epoch to pad, + {cut:.2f} s to cut augmented windows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
