"""Where the project keeps its local state: everything under `runs/` (git-ignored).

`ABLATION_RUNS` moves it elsewhere (tests point it at a temporary folder).
"""
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNS = Path(os.environ.get("ABLATION_RUNS", PROJECT_ROOT / "runs")).resolve()
