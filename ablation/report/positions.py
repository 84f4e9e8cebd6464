"""Where to distil: the position map and the pre-activation question, for a study whose variants
each tap one feature position (an axis ``...position`` of values ``<net>.<block>.<point>``, and
optionally ``...input``: real or fake; ``studies/fd_positions.yaml``).

    position_deltas(runs, "student_alone")  ->  one row per tap: Δ validation and test AUC, CIs
    pre_post_cells(runs)                    ->  per (net, block, input) cell pre minus post, tested
    pre_post(runs)                          ->  pre minus post over the cells

Differences are paired on (fold, seed) (`aggregate.paired_differences`); the CIs are t-intervals
over the pairs. Per cell, pre minus post gets the table's two tests (the Wilcoxon signed-rank test over
its pairs and the fold-blocked t-test), each Holm-adjusted over the cells: a confirmation's per-cell
answer. Overall, pre minus post is averaged per cell first (a cell's pairs are its runs), then:
the mean over cells with its t-interval, a Wilcoxon signed-rank test over the cells (positions are
the units the question is asked across), and the fold-blocked test (every cell's differences
averaged per fold, the folds sharing their abnormal test beats; a t-test over the fold means, from
3 folds; else n/a).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from scipy import stats

from ablation.report.aggregate import blocked_test, holm, paired_ci, paired_differences, paired_test

TAP = re.compile(r"(enc|dec|disc)\.(\d+)\.(pre|post)")
MAP_METRICS = {"best_val_auc": "validation AUC", "test_auc": "test AUC"}
CELL = ["net", "block", "input"]


def net_label(net: str, source: str) -> str:
    """A map row's name: the network, the discriminator once per input ("disc (fake)")."""
    return f"disc ({source})" if net == "disc" else net


def taps(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant that taps one position: variant, net, block, point, input (empty frame
    when the study has no position axis)."""
    cols = [c for c in runs.columns if c.startswith("axis.") and c.endswith(".position")]
    if not cols:
        return pd.DataFrame(columns=["variant", "net", "block", "point", "input"])
    pos, inp = cols[0], cols[0][: -len("position")] + "input"
    rows = []
    for variant, first in runs.drop_duplicates("variant").set_index("variant").iterrows():
        m = TAP.fullmatch(str(first[pos]))
        if m:
            source = first.get(inp)
            rows.append({"variant": variant, "net": m.group(1), "block": int(m.group(2)), "point": m.group(3),
                         "input": source if isinstance(source, str) else "real"})
    return pd.DataFrame(rows, columns=["variant", "net", "block", "point", "input"])


def _delta(runs: pd.DataFrame, variant: str, other: str, metric: str) -> dict:
    d = paired_differences(runs, variant, other, metric).to_numpy(dtype=float)
    lo, hi = paired_ci(d)
    return {f"{metric}_delta": float(d.mean()) if len(d) else math.nan, f"{metric}_ci_low": lo,
            f"{metric}_ci_high": hi, "n_pairs": len(d)}


def position_deltas(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per tap: its paired difference to `baseline` in validation and test AUC, with t CIs."""
    rows = []
    for _, t in taps(runs).iterrows():
        row = t.to_dict()
        for m in MAP_METRICS:
            row.update(_delta(runs, t["variant"], baseline, m))
        rows.append(row)
    return pd.DataFrame(rows)


def pre_post_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (net, block, input) cell with both points: pre minus post, paired, with t CIs and, per
    metric, ``<metric>_p`` (Wilcoxon over the pairs) and ``<metric>_p_blocked`` (fold-blocked t-test,
    from 3 folds), each Holm-adjusted over the cells (NaN where a test cannot be given)."""
    rows = []
    for cell, group in taps(runs).groupby(CELL, sort=True):
        points = group.set_index("point")["variant"]
        if not {"pre", "post"} <= set(points.index):
            continue
        row = dict(zip(CELL, cell))
        for m in MAP_METRICS:
            row.update(_delta(runs, points["pre"], points["post"], m))
            row[f"{m}_p"] = paired_test(runs, points["pre"], points["post"], m).p_value
            row[f"{m}_p_blocked"] = blocked_test(runs, points["pre"], points["post"], m).p_value
        rows.append(row)
    cells = pd.DataFrame(rows)
    for column in (f"{m}{test}" for m in MAP_METRICS for test in ("_p", "_p_blocked")):
        if column in cells:
            cells[column] = holm(cells[column].tolist())
    return cells


def _fold_blocked(runs: pd.DataFrame, cells: pd.DataFrame, metric: str) -> tuple[int, float]:
    """Every cell's pre - post differences averaged per fold; a t-test of the fold means (>= 3 folds)."""
    t = taps(runs)
    diffs = []
    for _, c in cells.iterrows():
        group = t[(t["net"] == c["net"]) & (t["block"] == c["block"]) & (t["input"] == c["input"])]
        points = group.set_index("point")["variant"]
        diffs.append(paired_differences(runs, points["pre"], points["post"], metric))
    by_fold = pd.concat(diffs).groupby(level="fold").mean().to_numpy(dtype=float) if diffs else np.array([])
    if len(by_fold) < 3:
        return len(by_fold), math.nan
    return len(by_fold), float(stats.ttest_1samp(by_fold, 0.0).pvalue)


def pre_post(runs: pd.DataFrame) -> pd.DataFrame:
    """Pre minus post over every cell, per metric: n_cells, the mean of the cell means with its t CI,
    Wilcoxon p over the cells, and the fold-blocked p (n/a below 3 folds)."""
    cells = pre_post_cells(runs)
    rows = []
    for m, label in MAP_METRICS.items():
        d = cells[f"{m}_delta"].dropna().to_numpy(dtype=float) if len(cells) else np.array([])
        lo, hi = paired_ci(d)
        p = float(stats.wilcoxon(d).pvalue) if len(d) >= 6 and np.any(d != 0) else math.nan
        folds, p_blocked = _fold_blocked(runs, cells, m)
        rows.append({"metric": label, "n_cells": len(d), "pre_minus_post": float(d.mean()) if len(d) else math.nan,
                     "ci_low": lo, "ci_high": hi, "cells_pre_better": int((d > 0).sum()),
                     "p_wilcoxon_cells": p, "n_folds": folds, "p_fold_blocked": p_blocked})
    return pd.DataFrame(rows)
