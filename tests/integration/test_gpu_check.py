"""`make gpu-check`'s CPU path at a tiny size: every step runs and lands in the results file."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_check  # noqa: E402


def test_gpu_check_cpu_path_writes_every_step(tmp_path, mitdb, monkeypatch):
    monkeypatch.setenv("ABLATION_MITDB", str(mitdb))
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--budget-s", "400"]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(results) == {"bench", "student_epoch", "teacher_epoch", "concurrent", "paper_regime"}
    steps = ("student_epoch", "teacher_epoch", "concurrent")
    assert all(results[s]["ok"] for s in steps), {s: results[s] for s in steps}  # a failure shows its output
    assert results["paper_regime"]["ran"] and results["paper_regime"]["ok"]
    assert any("bf16" in r["item"] for r in results["bench"]["rows"])
    assert "teacher_epoch" in (tmp_path / "gpu_check.md").read_text()
