"""A fresh runs/ folder for a subprocess test, sharing the session's beat cache (built once)."""
from __future__ import annotations

from pathlib import Path

from ablation.paths import RUNS


def fresh_runs(folder: Path) -> Path:
    """`folder`/runs with its cache/ linked to the test session's: a new MLflow store and queue,
    the beats built at most once per session (builders are safe to race: unique temp + rename)."""
    runs = folder / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (RUNS / "cache").mkdir(parents=True, exist_ok=True)
    (runs / "cache").symlink_to(RUNS / "cache")
    return runs
