"""The Makefile's targets read the same places as the package (`make -n`: printed, not run)."""
import os
import subprocess

from ablation.paths import PROJECT_ROOT


def _dry(target: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("ABLATION_RUNS", "MLFLOW_TRACKING_URI")}
    out = subprocess.run(["make", "-n", target], cwd=PROJECT_ROOT, env={**full, **env}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_ui_and_dashboard_honour_ablation_runs(tmp_path):
    assert f"sqlite:///{tmp_path}/mlflow.db" in _dry("ui", ABLATION_RUNS=str(tmp_path))
    assert f"{tmp_path}/optuna/journal.log" in _dry("dashboard", ABLATION_RUNS=str(tmp_path))
    assert f"sqlite:///{PROJECT_ROOT}/runs/mlflow.db" in _dry("ui")
