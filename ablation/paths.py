"""Where the project keeps its state: local state under `runs/` (git-ignored), and the results that
outlive a machine under `results/` (committed).

`ABLATION_RUNS` and `ABLATION_RESULTS` move them elsewhere (tests point both at a temporary folder).
"""
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("ABLATION_RUNS", PROJECT_ROOT / "runs")).resolve()
RESULTS = Path(os.environ.get("ABLATION_RESULTS", PROJECT_ROOT / "results")).resolve()
DASHBOARDS = PROJECT_ROOT / "dashboards"  # report pages (their .html and .csv are git-ignored)
