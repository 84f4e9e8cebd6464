"""A machine's numeric fingerprint: a fixed small BeatGAN trained on the real records for 300
steps on the pinned path (`ablation.numerics`), and the SHA-256 of its weights.

Two machines that print the same fingerprint train the same bits from the same run key.
``results/fingerprints.csv`` keeps one row per machine it ran on (CPU model, ISA flags, the
numeric path, torch and oneDNN versions, the hash): ``make fingerprint`` prints the hash, says
whether the table already holds it, and adds this machine's row.
"""
from __future__ import annotations

import datetime

import pandas as pd
import torch

from ablation import numerics, tracking
from ablation.config import RunConfig, from_dict
from ablation.data.dataset import DataBundle, load_data
from ablation.models.beatgan import BeatGAN
from ablation.paths import RESULTS, upsert_row
from ablation.run import init_seed
from ablation.train.loop import train

TABLE = RESULTS / "fingerprints.csv"
CONFIG = {"role": "teacher", "model": {"ndf": 8, "ngf": 8, "nz": 50},
          "data": {"fold": 0, "train_subset": 9600, "val_subset": 2000},  # 150 batches of 64 an epoch
          "train": {"epochs": 2, "threads": 1, "device": "cpu", "d_reinit_below": 1e-3}}


def run(cfg: RunConfig, data: DataBundle) -> tuple[str, float]:
    """Train `cfg` on `data` on the CPU, as `ablation.run.execute` does but without MLflow;
    returns (weights hash, best validation AUC)."""
    numerics.check()
    numerics.deterministic(cfg.train.threads)
    torch.manual_seed(init_seed(cfg.role, cfg.train.seed))
    model = BeatGAN.build(cfg.model, cfg.data.nc)
    result = train(cfg, data, torch.device("cpu"), progress=False, model=model)
    return numerics.weights_hash(result.state), result.val["auc"]


def measure(mitdb: str | None = None) -> dict:
    """This machine's fingerprint row."""
    cfg = from_dict(RunConfig, CONFIG, src="ablation.fingerprint.CONFIG")
    digest, auc = run(cfg, load_data(cfg.data, mitdb, progress=False))
    machine = numerics.record(cfg.train.threads)
    return {"fingerprint": digest, "val_auc": round(auc, 6),
            **{k.removeprefix("numerics."): v for k, v in machine.items()},
            "git_commit": tracking.git_commit(), "date": datetime.date.today().isoformat()}


def known() -> pd.DataFrame:
    return pd.read_csv(TABLE, dtype=str) if TABLE.exists() else pd.DataFrame(columns=["fingerprint", "cpu_model"])


def record(row: dict) -> None:
    """Add this machine's row (one per CPU model, ISA flags, numeric path, torch and oneDNN: a rerun
    under the same versions replaces it, one under other versions adds a row)."""
    upsert_row(TABLE, row, ("cpu_model", "isa_flags", "mode", "torch", "onednn"))
