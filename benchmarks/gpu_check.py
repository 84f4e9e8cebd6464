"""The prepared check for a machine with a GPU (`make gpu-check`), within one time budget.

    python benchmarks/gpu_check.py --out DIR [--device cuda] [--budget-s 540] [--tiny]

Steps, each timed, each appended to ``DIR/gpu_check.json`` as it finishes (so a run cut short still
leaves what it measured), and summarised in ``DIR/gpu_check.md``:

1. the benchmark (`benchmarks/bench.py`) on the device: fp32, bf16 autocast and torch.compile rows;
2. one epoch of a full-scale trial (an ndf-8 student, full training set of fold 0) and of a teacher
   (ndf 32), timed: what a headline trial and a teacher cost here;
3. several ndf-8 trials at once on the one device (separate processes): throughput against one;
4. the paper's teacher regime (100 epochs at a constant 1e-4) on the five folds at once, when the
   epoch time of step 2 says it fits in what is left of the budget; otherwise its estimate only.

Every training step runs the project's own CLI in a subprocess with ``ABLATION_RUNS=DIR/runs``, so
the check leaves the project's `runs/` alone. ``--tiny`` shrinks everything (small subsets, ndf 4,
a couple of epochs): the CPU path the tests run, whose numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train(out: Path, device: str, sets: list[str], experiment: str) -> subprocess.Popen:
    env = {**os.environ, "ABLATION_RUNS": str(out / "runs"), "ABLATION_RESULTS": str(out / "results")}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "ablation", "train", "--device", device, "--experiment", experiment, "--force"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs: list[subprocess.Popen], timeout: float) -> tuple[float, list[int], str]:
    """Wait for `procs` within `timeout` s (then kill): elapsed s, exit codes, the first failure's last output."""
    t0 = time.perf_counter()
    codes, tail = [], ""
    for p in procs:
        try:
            text, _ = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
        codes.append(p.returncode)
        if p.returncode != 0 and not tail:  # the first failure's output, else nothing
            tail = text[-400:]
    return time.perf_counter() - t0, codes, tail


class Check:
    def __init__(self, out: Path, device: str, budget_s: float, tiny: bool):
        self.out, self.device, self.tiny = out, device, tiny
        self.deadline = time.perf_counter() + budget_s
        self.results: dict[str, dict] = {}
        size = ["data.train_subset=512", "data.val_subset=256"] if tiny else []
        self.student = size + [f"model.ndf={4 if tiny else 8}", f"model.ngf={4 if tiny else 8}", "train.epochs=1"]
        self.teacher = size + (["model.ndf=4", "model.ngf=4"] if tiny else []) + ["train.epochs=1"]

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def record(self, name: str, **values) -> None:
        self.results[name] = values
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str))
        print(f"{name}: {values}", flush=True)

    def bench(self) -> None:
        from bench import run_bench  # benchmarks/bench.py, beside this file
        t0 = time.perf_counter()
        df = run_bench(self.device, quick=self.tiny, tracking_uri=f"sqlite:///{self.out / 'bench.db'}")
        df.to_csv(self.out / "bench.csv", index=False)
        rows = df[df.section.isin(["training", "options"])][["item", "ours", "reference", "ratio"]]
        self.record("bench", seconds=round(time.perf_counter() - t0, 1), rows=rows.to_dict("records"))

    def epochs(self) -> None:
        for name, sets in (("student_epoch", self.student), ("teacher_epoch", self.teacher)):
            elapsed, codes, tail = _wait([_train(self.out, self.device, sets, name)], self.left())
            self.record(name, seconds=round(elapsed, 1), ok=codes == [0], tail=tail)

    def concurrent(self, n: int = 4) -> None:
        n = 2 if self.tiny else n
        elapsed, codes, tail = _wait([_train(self.out, self.device, self.student + [f"train.seed={i}"], "concurrent")
                                      for i in range(n)], self.left())
        one = self.results.get("student_epoch", {}).get("seconds")
        self.record("concurrent", trials=n, seconds=round(elapsed, 1), ok=all(c == 0 for c in codes),
                    throughput_vs_one=round(n * one / elapsed, 2) if one else None, codes=codes, tail=tail)

    def paper_regime(self) -> None:
        epochs = 2 if self.tiny else 100
        per_epoch = self.results.get("teacher_epoch", {}).get("seconds")
        estimate = per_epoch * epochs if per_epoch else None  # five at once: at best as fast as one
        if estimate is None or estimate > 0.9 * self.left():
            self.record("paper_regime", ran=False, epochs=epochs, estimate_s=estimate, left_s=round(self.left()))
            return
        sets = [s for s in self.teacher if not s.startswith("train.epochs")] + [
            f"train.epochs={epochs}", "train.lr=1e-4", "train.lr_schedule=constant"]
        folds = 2 if self.tiny else 5
        procs = [_train(self.out, self.device, sets + [f"data.fold={k}"], "paper_regime")
                 for k in range(folds)]
        elapsed, codes, tail = _wait(procs, self.left())
        self.record("paper_regime", ran=True, epochs=epochs, folds=folds, seconds=round(elapsed, 1),
                    ok=all(c == 0 for c in codes), tail=tail)

    def summary(self) -> Path:
        lines = [f"# gpu check ({self.device}{', tiny' if self.tiny else ''})", ""]
        lines += [f"- **{k}**: {json.dumps(v, default=str)}" for k, v in self.results.items()]
        path = self.out / "gpu_check.md"
        path.write_text("\n".join(lines) + "\n")
        return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU path of the tests")
    args = p.parse_args(argv)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    from ablation.paths import RUNS
    if (RUNS / "cache").is_dir() and not (out / "runs" / "cache").exists():
        (out / "runs" / "cache").symlink_to(RUNS / "cache")  # the beats, built once
    check = Check(out, args.device, args.budget_s, args.tiny)
    for step in (check.bench, check.epochs, check.concurrent, check.paper_regime):
        if check.left() <= 0:
            check.record(step.__name__, ran=False, reason="budget spent")
            continue
        step()
    print(f"wrote {check.summary()} and {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
