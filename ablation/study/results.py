"""A study's per-run results as committed data: ``results/<study>.csv``, one row per finished trial.

MLflow's store (``runs/``) lives on one machine; this table is what outlives it. The runner rewrites
it after every finished trial (MLflow's finished runs merged with the rows already in the file, so
rows trained on another machine are kept); a trial whose key has a row counts as finished, so a
study resumed on a fresh machine does not train it again; and `make report` reads it where MLflow
has no runs. Columns: the trial's identity (its `stage` in a staged study) and axes, its teacher
(run id and test metrics), sizes, validation and test metrics, when and where it ran, on which
numeric path, and the SHA-256 of its weights (`IDENTITY`, `METRIC_COLUMNS`, `CONTEXT`). A
student of an ensemble names all its teachers in ``teacher_run_ids``; ``teacher_run_id`` and the
teacher metrics are its first member's.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablation import tracking
from ablation.errors import BadInput, StoreError
from ablation.paths import RESULTS, read_table, replace_csv

IDENTITY = ["trial_key", "run_id", "status", "scale", "stage", "variant", "base_variant", "fold", "seed"]
METRIC_COLUMNS = ["best_val_auc", "best_val_ap", "best_val_f1", "best_epoch", "best_val_at", "epochs_run",
                  "test_auc", "test_ap", "test_f1", "test_auc_S", "test_auc_V", "test_auc_F", "test_auc_Q"]
CONTEXT = ["teacher_run_id", "teacher_run_ids", "teacher_test_auc", "teacher_test_ap", "teacher_test_f1",
           "n_params", "teacher_params", "compression_ratio", "param.model.ndf", "param.train.epochs",
           "param.data.train_subset", "param.distill.teacher_train.epochs", "train_wall_seconds",
           "git_commit", "data_fingerprint", "start_time", "end_time",
           "weights_sha256", "numerics.mode", "numerics.cpu_model", "numerics.threads"]


def results_path(study: str) -> Path:
    """``results/<study>.csv``; a study name is a plain file name (no folders)."""
    if not study or Path(study).name != study or study.startswith("."):
        raise BadInput(f"study name {study!r} must be a plain name (letters, digits, - _ .), not a path")
    return RESULTS / f"{study}.csv"


def load(study: str) -> pd.DataFrame:
    """The committed rows of `study` (an empty frame when there is no file)."""
    path = results_path(study)
    if not path.exists():
        return pd.DataFrame(columns=IDENTITY + METRIC_COLUMNS)
    try:
        return read_table(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: not a readable results table ({e}); restore it with git checkout") from e


def finished_keys(study: str, scale: str) -> set[str]:
    rows = load(study)
    if rows.empty:
        return set()
    return set(rows.loc[(rows["status"] == "FINISHED") & (rows["scale"] == scale), "trial_key"])


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """The committed columns of a runs frame (`ablation.report.aggregate.runs_frame` + teachers)."""
    axes = sorted(c for c in runs.columns if c.startswith("axis."))
    cols = [c for c in IDENTITY + axes + METRIC_COLUMNS + CONTEXT if c in runs.columns]
    return runs[cols]


def merge(committed: pd.DataFrame, fresh: pd.DataFrame) -> pd.DataFrame:
    """Rows of `fresh` replace committed rows of the same trial key; other committed rows stay."""
    if committed.empty:
        return fresh.reset_index(drop=True)
    kept = committed[~committed["trial_key"].isin(set(fresh["trial_key"]))]
    merged = pd.concat([kept, fresh], ignore_index=True) if len(fresh) else kept
    return merged.sort_values(["variant", "fold", "seed"], kind="stable").reset_index(drop=True)


def write(study: str, fresh: pd.DataFrame) -> Path:
    """Merge `fresh` (finished runs, `table` columns) into ``results/<study>.csv`` under a file lock."""
    path = results_path(study)
    with tracking.key_lock(f"results-{study}"):  # under runs/locks: nothing but tables in results/
        replace_csv(path, merge(load(study), table(fresh)))
    return path
