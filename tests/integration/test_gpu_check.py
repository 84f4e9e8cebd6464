"""`make gpu-check`'s CPU path at a tiny size: every step runs and lands in the results file. The
benchmark step records what `bench.run_bench` returns; `run_bench` itself is measured by
tests/integration/test_bench.py, so here it is replaced by a frame of its shape (a minute saved)."""
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench  # noqa: E402
import gpu_check  # noqa: E402

BENCH_ROWS = pd.DataFrame({"section": ["training", "options", "latency"],
                           "item": ["teacher step", "teacher step, bf16 autocast vs fp32", "single beat"],
                           "ours": [385.0, 582.0, 0.8], "reference": [327.0, 388.0, None], "ratio": [1.18, 1.5, None]})


def test_gpu_check_cpu_path_writes_every_step(tmp_path, mitdb, monkeypatch):
    monkeypatch.setenv("ABLATION_MITDB", str(mitdb))
    calls = []
    monkeypatch.setattr(bench, "run_bench", lambda device, quick, tracking_uri: calls.append((device, quick)) or BENCH_ROWS)
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--budget-s", "400"]) == 0
    assert calls == [("cpu", True)] and (tmp_path / "bench.csv").is_file()
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(results) == {"bench", "student_epoch", "teacher_epoch", "concurrent", "paper_regime"}
    steps = ("student_epoch", "teacher_epoch", "concurrent")
    assert all(results[s]["ok"] for s in steps), {s: results[s] for s in steps}  # a failure shows its output
    assert results["paper_regime"]["ran"] and results["paper_regime"]["ok"]
    assert [r["item"] for r in results["bench"]["rows"]] == list(BENCH_ROWS["item"][:2])  # training and options
    assert "teacher_epoch" in (tmp_path / "gpu_check.md").read_text()
