"""One epoch's wall time of a run config on the full training set, from a timed fraction.

Trains ``--beats`` training beats of the config's fold (one epoch, its own validation checks on
the full validation set, no MLflow) on ``--threads`` threads and extrapolates the training part
linearly to the full training set; validation (``train.val_per_epoch`` checks per epoch) does not
scale with the training beats and is added as measured. CPU seconds are printed beside wall
seconds: on a shared machine their ratio says how much of a core the run had.

    python benchmarks/epoch_time.py configs/anobeat/teacher.yaml --mitdb ../shared/mitdb --beats 8192
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import ablation  # noqa: F401  (pins the CPU kernels before torch loads)
import torch

from ablation.config import load_run_config
from ablation.data.dataset import load_data
from ablation.train.loop import train


def measure(config: str, mitdb: str | None, beats: int, threads: int) -> dict[str, float]:
    """Seconds of one epoch on `beats` training beats, and the extrapolation to the full set."""
    cfg = load_run_config(config, {"role": "teacher", "distill": None, "train": {"epochs": 1, "patience": None,
                                                                                  "threads": threads}})
    full = len(load_data(cfg.data, mitdb, progress=False).train)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_subset=beats))
    data = load_data(cfg.data, mitdb, progress=False)
    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    row = train(cfg, data, torch.device("cpu"), progress=False).history[0]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n_batches = len(data.train) // cfg.train.batch_size
    per_batch = row["train_seconds"] / n_batches
    validation = wall - row["train_seconds"]
    return {"beats": len(data.train), "full_beats": full, "batches": n_batches, "wall_s": wall, "cpu_s": cpu,
            "train_s_per_batch": per_batch, "validation_s": validation,
            "epoch_s_full": per_batch * (full // cfg.train.batch_size) + validation}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--mitdb")
    ap.add_argument("--beats", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for k, v in measure(args.config, args.mitdb, args.beats, args.threads).items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
