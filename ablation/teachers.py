"""Exported teachers: a trained teacher's checkpoint under ``runs/teachers/<run key>.pt``
(git-ignored: checkpoints are not committed) and its row in the committed ``results/teachers.csv``
(key, run, fold, seed, leads `nc`, metrics, the checkpoint's SHA-256; one row per exported run). Copy ``runs/teachers/`` to another machine and
it finds the very teacher a study was trained against instead of training another (CPU float
arithmetic differs between machines, so a retrained teacher would not be the same model); the
table says which teacher each study used and what it measured either way.

`export` writes both for a finished teacher run (``python -m ablation teacher --export``,
``make teachers``); `import_teacher` logs an exported teacher into MLflow's ``teachers``
experiment under its key, after checking the file's SHA-256 against the table.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import torch

from ablation import tracking
from ablation.paths import RESULTS, RUNS, replace_csv

TABLE = "teachers.csv"
METRICS = ("best_val_auc", "best_val_at", "epochs_run", "test_auc", "test_ap", "test_f1")


def _table() -> pd.DataFrame:
    path = RESULTS / TABLE
    return pd.read_csv(path, dtype={"run_key": str}) if path.exists() else pd.DataFrame(columns=["run_key", "run_id"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(run_id: str) -> Path:
    """Write the teacher run's checkpoint and its row (key, run, fold, seed, metrics, file hash)."""
    run = tracking.get_run(run_id)
    key = run.data.tags["run_key"]
    cfg, state = tracking.load_checkpoint(run_id)
    path = RUNS / "teachers" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_dict(), "G": state["G"], "D": state["D"]}, path)
    _record({"run_key": key, "run_id": run_id, "fold": cfg.data.fold, "seed": cfg.train.seed, "nc": cfg.data.nc,
             **{m: run.data.metrics.get(m) for m in METRICS}, "data_fingerprint": run.data.tags.get("data_fingerprint"),
             "git_commit": run.data.tags.get("git_commit"), "sha256": _sha256(path)})
    return path


def _record(row: dict) -> None:
    """Add a teacher run's row; rows of earlier runs with the same key stay (a retrained teacher
    need not be the same model, and committed trials cite the run they were trained against).
    Under a lock: `make teachers` exports two at once."""
    with tracking.key_lock("results-teachers"):
        table = _table()
        table = pd.concat([table[table["run_id"] != row["run_id"]], pd.DataFrame([row])], ignore_index=True)
        replace_csv(RESULTS / TABLE, table.sort_values(["fold", "seed"], kind="stable"))


def import_teacher(key: str, experiment: str) -> str | None:
    """The run id of an exported teacher with this key, logged into `experiment` now; None when the
    table has no row for it or its checkpoint is not on this machine (the teacher is then trained)."""
    table = _table()
    rows = table[table["run_key"] == key]
    path = RUNS / "teachers" / f"{key}.pt"
    if rows.empty or not path.is_file():
        return None
    matching = rows[rows["sha256"] == _sha256(path)]
    if matching.empty:
        raise tracking.StoreError(f"{path}: none of the teacher {key} checkpoints {RESULTS / TABLE} lists "
                                  f"(SHA-256 differs); remove the file to train the teacher again")
    row = matching.iloc[-1]
    tags = {"role": "teacher", "run_key": key, "imported_from": str(row["run_id"]),
            "data_fingerprint": str(row["data_fingerprint"]), "git_commit": str(row["git_commit"])}
    return tracking.log_imported(experiment, f"teacher-{key[:8]} (imported)", tags,
                                 {m: float(row[m]) for m in METRICS if pd.notna(row[m])}, path)
