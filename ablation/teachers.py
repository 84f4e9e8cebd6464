"""The canonical teachers, committed: one checkpoint per teacher key under
``results/teachers/<run key>.pt`` (about 10 MB for the ndf-32 recipe, as BeatGAN's authors ship
theirs) and one row per key in ``results/teachers.csv`` (run, family, fold, seed, leads `nc`, metrics,
the numeric path it was trained on, the checkpoint's SHA-256).

A teacher key names the config, the beats and the numeric path (`ablation.numerics`), so a
teacher trained again under the same key is the same model: a key has one teacher. A fresh clone
finds every committed teacher here and imports it instead of training one (`import_teacher`,
called by `ablation.run.ensure_teacher`); `export` (``teacher --export``, ``make teachers``)
writes both for a finished teacher run.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import torch

from ablation import numerics, tracking
from ablation.errors import BadInput
from ablation.paths import RESULTS, replace_csv

TABLE = "teachers.csv"
METRICS = ("best_val_auc", "best_val_at", "epochs_run", "test_auc", "test_ap", "test_f1")
CONTEXT = ("data_fingerprint", "git_commit", "numerics.mode", "numerics.cpu_model", "numerics.threads")


def checkpoint_path(key: str) -> Path:
    return RESULTS / "teachers" / f"{key}.pt"


def _table() -> pd.DataFrame:
    path = RESULTS / TABLE
    return pd.read_csv(path, dtype={"run_key": str}) if path.exists() else pd.DataFrame(columns=["run_key", "run_id"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(run_id: str) -> Path:
    """Write the teacher run's checkpoint and its row; a key already committed keeps its teacher
    and its file (`BadInput` when this run's weights are not that teacher's)."""
    run = tracking.get_run(run_id)
    key = run.data.tags["run_key"]
    cfg, state = tracking.load_checkpoint(run_id)
    path = checkpoint_path(key)
    committed = _table()
    committed = committed[committed["run_key"] == key]
    if not committed.empty and path.is_file():
        # the weights, not the file's bytes: those also hold the config, whose fields grow with the code
        committed_state = torch.load(path, map_location="cpu", weights_only=True)
        if numerics.weights_hash(committed_state) != numerics.weights_hash(state):
            raise BadInput(f"{path}: teacher {key} is already committed (run {committed['run_id'].iloc[0]}) and run "
                           f"{run_id} trained under the same key is another model; a key has one teacher")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"config": cfg.to_dict(), "G": state["G"], "D": state["D"]}, tmp)
    tmp.replace(path)
    imported = run.data.tags.get("imported_from")
    _record({"run_key": key, "run_id": imported or run_id, "family": cfg.model.family, "fold": cfg.data.fold,
             "seed": cfg.train.seed, "nc": cfg.data.nc, **{m: run.data.metrics.get(m) for m in METRICS},
             **{c: run.data.tags.get(c) for c in CONTEXT}, "sha256": _sha256(path)})
    return path


def _record(row: dict) -> None:
    """Write a teacher's row, replacing any row of its key (one teacher per key). Under a lock:
    `make teachers` exports two at once."""
    with tracking.key_lock("results-teachers"):
        table = _table()
        table = pd.concat([table[table["run_key"] != row["run_key"]], pd.DataFrame([row])], ignore_index=True)
        table["family"] = table.reindex(columns=["family"])["family"].fillna("beatgan")  # rows of old: BeatGANs
        replace_csv(RESULTS / TABLE, table.sort_values(["fold", "seed", "nc"], kind="stable"))


def import_teacher(key: str, experiment: str) -> str | None:
    """The run id of the committed teacher with this key, logged into `experiment` now; None when
    there is none (the teacher is then trained). A checkpoint whose SHA-256 is not its row's is
    refused (`tracking.StoreError`)."""
    rows = _table()
    rows = rows[rows["run_key"] == key]
    path = checkpoint_path(key)
    if rows.empty or not path.is_file():
        return None
    row = rows.iloc[-1]
    if _sha256(path) != row["sha256"]:
        raise tracking.StoreError(f"{path}: not the teacher {key} that {RESULTS / TABLE} lists (SHA-256 differs); "
                                  f"restore it with git checkout")
    tags = {"role": "teacher", "run_key": key, "imported_from": str(row["run_id"]),
            **{c: str(row[c]) for c in CONTEXT if c in row and pd.notna(row[c])}}
    return tracking.log_imported(experiment, f"teacher-{key[:8]} (imported)", tags,
                                 {m: float(row[m]) for m in METRICS if pd.notna(row.get(m))}, path)
