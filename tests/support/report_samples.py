"""Report inputs for tests and page previews, without the real records.

`synthetic_report_data` hand-builds a ReportData (made-up numbers, no MLflow): two study variants on
a 2 x 2 grid, several seeds, training histories and per-beat scores, so every figure is drawn.
`run_tiny_study` trains a real (tiny) study on synthetic beats into the current MLflow store, so
`build_report` can be exercised end to end in seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablation.report.aggregate import ReportData, ScoreSet, header_info, representative, summarize, top_variants

TINY_STUDY = """\
name: {name}
description: A tiny real study on synthetic beats for report tests (its numbers mean nothing).
base:
  role: student
  data: {{fold: 0, train_subset: 256, val_subset: 128}}
  model: {{ndf: 2, ngf: 2, nz: 4}}
  train: {{epochs: 2, device: cpu, batch_size: 64}}
  distill:
    teacher: {{ndf: 4, ngf: 4, nz: 8}}
    teacher_train: {{epochs: 2, device: cpu, batch_size: 64}}
    teacher_train_subset: 256
variants:
  - name: student_alone
  - name: kd_score_kl
    set: {{distill.kd.kind: score_kl, distill.kd.T: 4.0}}
seeds: {seeds}
"""


def write_tiny_study(folder: Path, name: str = "report_tiny", seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    path = Path(folder) / f"{name}.yaml"
    path.write_text(TINY_STUDY.format(name=name, seeds=list(seeds)))
    return path


def run_tiny_study(folder: Path, name: str = "report_tiny", seeds: tuple[int, ...] = (0, 1, 2)):
    """Train the tiny study (2 variants x len(seeds) runs + a teacher) on synthetic beats; returns its spec."""
    import torch

    from ablation.data.synthetic import synthetic_beats
    from ablation.study.runner import run_study
    from ablation.study.spec import load_study
    spec = load_study(write_tiny_study(folder, name, seeds))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(spec, workers=1, beats=synthetic_beats(seed=0), device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    return spec


def _scores(rng: np.random.Generator, separation: float, n: int = 3000, share: float = 0.3) -> pd.DataFrame:
    label = (rng.random(n) < share).astype(int)
    score = rng.normal(0, 1, n) + separation * label
    cls = np.where(label == 1, rng.choice(["S", "V", "F", "Q"], n), "N")
    return pd.DataFrame({"score": score, "label": label, "cls": cls})


def synthetic_report_data(seeds: int = 6, epochs: int = 8, seed: int = 0, grid: bool = True,
                          optuna_study=None) -> ReportData:
    """A hand-built ReportData: variants student_alone and kd, (with `grid`) over distill.kd.T x model.ndf."""
    rng = np.random.default_rng(seed)
    cells = [(2.0, 4), (2.0, 8), (4.0, 4), (4.0, 8)] if grid else [(None, None)]
    rows, hist = [], []
    t0 = 1_700_000_000_000
    for vi, base in enumerate(["student_alone", "kd"]):
        for ci, (T, ndf) in enumerate(cells):
            variant = base if T is None else f"{base}/distill.kd.T={T}/model.ndf={ndf}"
            n_params = 20_000 if ndf in (None, 4) else 70_000
            level = 0.90 + 0.02 * vi + (0.01 if ndf == 8 else 0) + (0.005 if T == 4.0 else 0)
            for s in range(seeds):
                run_id = f"run{vi}{ci}{s:02d}"
                auc = float(np.clip(level + rng.normal(0, 0.01), 0, 1))
                row = {"run_id": run_id, "status": "FINISHED", "start_time": t0 + 1000 * len(rows),
                       "end_time": t0 + 1000 * len(rows) + 900, "trial_key": f"key-{run_id}",
                       "variant": variant, "base_variant": base, "fold": 0, "seed": s, "axis.variant": base,
                       "axis.fold": 0, "axis.seed": s, "test_auc": auc, "test_ap": auc - 0.2 + rng.normal(0, 0.01),
                       "test_f1": auc - 0.3 + rng.normal(0, 0.01), "best_val_auc": auc + 0.01,
                       "best_epoch": epochs - 1, "n_params": float(n_params), "teacher_params": 180_000.0,
                       "compression_ratio": 180_000 / n_params, "teacher_run_id": "teacher0",
                       "git_commit": "0123456789abcdef0123456789abcdef01234567", "scale": "cpu",
                       "data_fingerprint": "synthetic", "param.train.epochs": str(epochs),
                       "param.data.train_subset": "2048"}
                if T is not None:
                    row.update({"axis.distill.kd.T": T, "axis.model.ndf": ndf})
                rows.append(row)
                for e in range(epochs):
                    f = 1 - np.exp(-(e + 1) / 3)
                    vals = {"val_auc": 0.5 + (auc - 0.5) * f, "loss_d": 1.4 - 0.5 * f, "loss_g_rec": 0.3 * (1 - f) + 0.02,
                            "loss_g_adv": 0.7 + 0.1 * f}
                    if base == "kd":
                        vals["loss_kd_score_kl"] = 0.05 * (1 - f) + 0.001
                    hist += [(run_id, variant, k, e, float(v + rng.normal(0, 0.003))) for k, v in vals.items()]
    runs = pd.DataFrame(rows)
    summary = summarize(runs)
    base = summary.attrs["baseline"]
    teachers = pd.DataFrame([{"run_id": "teacher0", "fold": 0, "n_params": 180_000.0, "test_auc": 0.93,
                              "test_ap": 0.75, "test_f1": 0.66}])
    curves = []
    chosen = top_variants(summary)
    for v in chosen + ([base] if base not in chosen else []):
        kind = "top" if v != base else "baseline"
        rep = representative(runs, v)
        curves.append(ScoreSet(f"{v} (fold 0, seed 0)" + (" [baseline]" if v == base else ""),
                               "baseline" if v == base else kind, v, rep["run_id"],
                               _scores(rng, 2.0 + 4 * (rep["test_auc"] - 0.9))))
    curves.append(ScoreSet("teacher", "teacher", "teacher", "teacher0", _scores(rng, 2.2)))
    header = header_info(runs, "cpu", "Synthetic numbers for tests and previews.", teachers)
    return ReportData(study="synthetic_demo", runs=runs, summary=summary, baseline=base, header=header,
                      history=pd.DataFrame(hist, columns=["run_id", "variant", "metric", "step", "value"]),
                      curves=curves, teachers=teachers, notes=["synthetic data: numbers are made up"],
                      optuna_study=optuna_study)
