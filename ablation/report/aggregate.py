"""A study's runs -> a tidy table (one row per kept run) -> per-variant statistics.

A *variant* is a trial name (the study's variant plus its grid values, e.g. ``kd/distill.kd.T=4``):
every axis except fold and seed. Only FINISHED runs count; when a trial key has several FINISHED
runs the latest is kept, and when one (variant, fold, seed) has runs under several trial keys (the
study file changed in between) the latest of those is kept too.

Statistics per variant: mean, standard deviation (ddof 1) and a 95 % confidence interval from the
t-distribution for test AUC, AP and best F1, and the difference to a baseline variant over matched
(fold, seed) pairs: its mean and t confidence interval, a two-sided Wilcoxon signed-rank test,
Holm-adjusted p-values across the variants, the share of the teacher-baseline gap it closes, and
the smallest difference the design could detect (paired t, power 0.8, at alpha / comparisons).
A reference row holds the teachers the runs name (one per fold; more where a fold's teacher was
trained again). Where a statistic cannot be given (std/CI with fewer than 2 runs; Wilcoxon with
fewer than `MIN_PAIRS` pairs) the table holds NaN and `notes` says why.

The pure functions (`keep_latest`, `describe`, `paired_test`, `summarize`, ...) need no MLflow;
`collect` reads a study from the tracking store into a `ReportData`.
"""
from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ablation import tracking
from ablation.errors import BadInput, NotFound

METRICS = ("test_auc", "test_ap", "test_f1")
METRIC_LABELS = {"test_auc": "test AUC", "test_ap": "test AP", "test_f1": "best test F1"}
CLASS_METRICS = ("test_auc_S", "test_auc_V", "test_auc_F", "test_auc_Q")
PAIR_KEYS = ("fold", "seed")  # the axes a variant is averaged over, and runs are paired on
BASELINE_NAMES = ("student_alone", "baseline", "none")
CONFIDENCE = 0.95
# The two-sided exact Wilcoxon signed-rank test on n pairs cannot give p below 2 / 2**n:
# 0.0625 with 5 pairs, 0.03125 with 6. Fewer than 6 pairs can never reach p < 0.05.
MIN_PAIRS = 6
ALPHA = 0.05
TARGET_AUC = 0.95
HISTORY_METRICS = ("val_auc", "val_ap")  # per-epoch metrics besides the loss_* terms
TAG_NUMBERS = ("student_params", "teacher_params", "compression_ratio", "params_G", "params_D")


# ----------------------------------------------------------------------------------------------
# Runs -> tidy table
# ----------------------------------------------------------------------------------------------
def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def axis_value(value: Any) -> Any:
    """An axis tag's value as a number where it is one (``"4.0"`` -> 4.0), else the string."""
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return value
        return int(f) if f.is_integer() and re.fullmatch(r"[+-]?\d+", value.strip()) else f
    return value


def runs_frame(runs: Iterable[Any]) -> pd.DataFrame:
    """MLflow runs (``mlflow.entities.Run``) -> one row each.

    Columns: run_id, status, start_time, end_time (ms), trial_key, variant (the trial name),
    base_variant (``axis.variant``), fold, seed, stage (a staged study's), ``axis.<name>`` for every axis tag, every metric,
    n_params (the student's, else params_G + params_D), teacher_params, compression_ratio,
    teacher_run_id (an ensemble's first member), teacher_run_ids (an ensemble's members, comma-separated;
    None for a single teacher), git_commit, scale, role, data_fingerprint and ``param.<key>`` for every param.
    """
    rows = []
    for r in runs:
        tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
        row: dict[str, Any] = {"run_id": r.info.run_id, "status": r.info.status,
                               "start_time": r.info.start_time, "end_time": r.info.end_time,
                               "trial_key": tags.get("trial_key", r.info.run_id)}
        axes = {k[len("axis."):]: axis_value(v) for k, v in tags.items() if k.startswith("axis.")}
        row["fold"] = axes.get("fold", axis_value(params.get("data.fold", "0")))
        row["seed"] = axes.get("seed", axis_value(params.get("train.seed", "0")))
        row["base_variant"] = str(axes.get("variant", tags.get("trial_name", "run")))
        row["variant"] = tags.get("trial_name") or "/".join(
            [row["base_variant"]] + [f"{k}={v}" for k, v in axes.items() if k not in ("variant", *PAIR_KEYS)])
        row.update({f"axis.{k}": v for k, v in axes.items()})
        if "stage" in tags:  # a staged study's trial: screen or confirm
            row["stage"] = tags["stage"]
        row.update(metrics)
        for t in TAG_NUMBERS:
            row[t] = _number(tags.get(t))
        student = row["student_params"]
        row["n_params"] = student if not math.isnan(student) else row["params_G"] + row["params_D"]
        for t in ("teacher_run_id", "teacher_run_ids", "git_commit", "scale", "role", "data_fingerprint",
                  "study", "weights_sha256", "numerics.mode", "numerics.cpu_model", "numerics.threads"):
            row[t] = tags.get(t)
        row.update({f"param.{k}": v for k, v in params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def keep_latest(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The FINISHED runs, latest per trial key and per (variant, fold, seed); plus what was dropped."""
    finished = runs[runs["status"] == "FINISHED"]
    if "start_time" in finished:
        finished = finished.sort_values("start_time", kind="stable")
    by_key = finished.drop_duplicates("trial_key", keep="last")
    kept = by_key.drop_duplicates(["variant", *PAIR_KEYS], keep="last")
    counts = {"runs": len(runs), "not_finished": len(runs) - len(finished),
              "repeated": len(finished) - len(by_key), "superseded": len(by_key) - len(kept)}
    return kept.reset_index(drop=True), counts


def axis_names(runs: pd.DataFrame) -> list[str]:
    """The study's axes (``axis.<name>`` columns), variant first, fold and seed last."""
    names = [c[len("axis."):] for c in runs.columns if c.startswith("axis.")]
    middle = [n for n in names if n not in ("variant", *PAIR_KEYS)]
    return [n for n in ("variant",) if n in names] + middle + [n for n in PAIR_KEYS if n in names]


def grid_axes(runs: pd.DataFrame) -> list[str]:
    """The axes besides variant, fold and seed (a study's grid keys)."""
    return [a for a in axis_names(runs) if a not in ("variant", *PAIR_KEYS)]


def variant_order(runs: pd.DataFrame, declared: Sequence[str] = ()) -> list[str]:
    """Variants in the `declared` order (the study file's variant names; a grid variant's trials,
    "name/key=value", under its name), then any others; within each, the order their trials first ran."""
    if "start_time" in runs and runs["start_time"].notna().any():
        ran = list(runs.groupby("variant", sort=False)["start_time"].min().sort_values(kind="stable").index)
    else:
        ran = list(pd.unique(runs["variant"]))
    rank = {name: i for i, name in enumerate(declared)}
    return sorted(ran, key=lambda v: rank.get(v.split("/")[0], len(rank)))


def default_baseline(variants: Sequence[str]) -> str:
    """A variant named student_alone / baseline / none (exactly, else as its first part), else the first."""
    for name in BASELINE_NAMES:
        if name in variants:
            return name
    for name in BASELINE_NAMES:
        for v in variants:
            if v.split("/")[0] == name:
                return v
    return variants[0]


def resolve_baseline(variants: Sequence[str], baseline: str | None) -> str:
    if baseline is None:
        return default_baseline(variants)
    if baseline in variants:
        return baseline
    matches = [v for v in variants if v.split("/")[0] == baseline]
    if len(matches) == 1:
        return matches[0]
    raise BadInput(f"baseline {baseline!r} is not a variant of this study; variants: {', '.join(variants)}")


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------
@dataclass
class Described:
    n: int
    mean: float
    std: float  # NaN when n < 2
    ci_low: float
    ci_high: float


def describe(values: Iterable[float], confidence: float = CONFIDENCE) -> Described:
    """Mean, sample standard deviation and the t-distribution confidence interval of the mean."""
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Described(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Described(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Described(n, mean, std, mean - half, mean + half)


@dataclass
class Paired:
    n_pairs: int
    delta: float  # mean over matched pairs of (variant - baseline); NaN without pairs
    p_value: float  # two-sided Wilcoxon signed-rank; NaN when it cannot be given
    note: str = ""  # why p_value is NaN


def paired_differences(runs: pd.DataFrame, variant: str, baseline: str, metric: str) -> pd.Series:
    """variant - baseline of `metric` over the (fold, seed) pairs both have, indexed by (fold, seed)."""
    def values(name: str) -> pd.Series:
        sub = runs[(runs["variant"] == name) & runs[metric].notna()]
        return sub.set_index(list(PAIR_KEYS))[metric]
    v, b = values(variant), values(baseline)
    common = v.index.intersection(b.index)
    return (v.loc[common] - b.loc[common]).sort_index()


def paired_test(runs: pd.DataFrame, variant: str, baseline: str, metric: str = "test_auc") -> Paired:
    """The difference of `variant` to `baseline` over matched (fold, seed) pairs and its Wilcoxon p."""
    d = paired_differences(runs, variant, baseline, metric).to_numpy(dtype=float)
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, math.nan, "n/a: no matched (fold, seed) pairs")
    delta = float(d.mean())
    if n < MIN_PAIRS:
        return Paired(n, delta, math.nan, f"n/a: {n} pair{'s' if n != 1 else ''} (needs >= {MIN_PAIRS} "
                                          f"to reach p < {ALPHA})")
    if np.all(d == 0):
        return Paired(n, delta, 1.0, "")
    return Paired(n, delta, float(stats.wilcoxon(d).pvalue), "")


def blocked_test(runs: pd.DataFrame, variant: str, baseline: str, metric: str = "test_auc") -> Paired:
    """The fold-blocked analysis: the paired differences averaged within each fold (the folds share
    their abnormal test beats, so a fold's seeds are not independent samples), then a two-sided
    one-sample t-test of the fold means against 0. Needs 3 folds."""
    d = paired_differences(runs, variant, baseline, metric)
    if d.empty:
        return Paired(0, math.nan, math.nan, "n/a: no matched pairs")
    by_fold = d.groupby(level="fold").mean().to_numpy(dtype=float)
    n = len(by_fold)
    if n < 3:
        return Paired(n, float(by_fold.mean()), math.nan, f"n/a: {n} fold{'s' if n != 1 else ''} (needs >= 3)")
    if np.all(by_fold == by_fold[0]):
        return Paired(n, float(by_fold.mean()), 1.0 if by_fold[0] == 0 else 0.0, "")
    return Paired(n, float(by_fold.mean()), float(stats.ttest_1samp(by_fold, 0.0).pvalue), "")


def paired_ci(d: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t-distribution confidence interval of the mean paired difference (NaN below 2 pairs)."""
    desc = describe(d, confidence)
    return desc.ci_low, desc.ci_high


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and are not counted): the i-th
    smallest of k is max over j <= i of min(1, (k - j + 1) p_(j)). Reject where adjusted p < alpha."""
    p = np.asarray(p_values, dtype=float)
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), math.nan)
    k = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (k - rank) * p[i]))
        out[i] = running
    return out.tolist()


def detectable_difference(d: np.ndarray, alpha: float, power: float = 0.8) -> float:
    """The smallest mean paired difference a paired t-test at two-sided `alpha` would detect with
    `power`, given the observed sd of the differences: (t_{1-alpha/2} + t_{power}) sd / sqrt(n),
    n - 1 degrees of freedom. NaN below 3 pairs."""
    n = len(d)
    if n < 3:
        return math.nan
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * np.std(d, ddof=1) / math.sqrt(n))


def gap_closed(runs: pd.DataFrame, variant: str, baseline: str, metric: str) -> float:
    """(variant - baseline) / (teacher - baseline) of `metric`, each a mean over the matched (fold,
    seed) pairs, the teacher's value being that of each pair's own teacher (column ``teacher_<metric>``:
    the baseline's, or the variant's where an undistilled baseline names none).
    NaN without teacher values or when the teacher is no better than the baseline."""
    col = f"teacher_{metric}"
    if col not in runs:
        return math.nan
    d = paired_differences(runs, variant, baseline, metric)
    if d.empty:
        return math.nan
    base, var = (runs[runs["variant"] == v].set_index(list(PAIR_KEYS)).loc[d.index] for v in (baseline, variant))
    teacher = base[col].fillna(var[col])
    if teacher.isna().all():
        return math.nan
    gap = float((teacher - base[metric]).mean())
    return float(d.mean()) / gap if gap > 0 else math.nan


def teacher_row(runs: pd.DataFrame, metrics: Sequence[str] = METRICS, baseline: str | None = None
                ) -> dict[str, Any] | None:
    """The distinct teachers the baseline's runs name, as a reference row of the summary: those
    `gap_closed` measures against. An undistilled baseline names none: then each fold's teacher
    named by the most runs. A variant's own teacher (two leads, say) is not averaged in."""
    if "teacher_run_id" not in runs or f"teacher_{metrics[0]}" not in runs:
        return None
    named = runs.dropna(subset=["teacher_run_id"])
    if baseline is not None and (named["variant"] == baseline).any():
        named = named[named["variant"] == baseline]
    elif len(named):
        most = named.groupby("fold")["teacher_run_id"].agg(lambda ids: ids.value_counts().index[0])
        named = named[named["teacher_run_id"].isin(set(most))]
    t = named.drop_duplicates("teacher_run_id")
    if t.empty or t[f"teacher_{metrics[0]}"].isna().all():
        return None
    row: dict[str, Any] = {"variant": "teacher", "n_runs": len(t), "is_baseline": False, "is_reference": True,
                           "n_pairs": math.nan, "n_params": _constant(t["teacher_params"]),
                           "compression_ratio": 1.0, "teacher_params": _constant(t["teacher_params"]),
                           "notes": f"reference: the {len(t)} teacher run(s) the baseline's students name, "
                                    f"{t['fold'].nunique() if 'fold' in t else '?'} fold(s)"}
    for m in metrics:
        d = describe(t.get(f"teacher_{m}", pd.Series(dtype=float)))
        row.update({f"{m}_mean": d.mean, f"{m}_std": d.std, f"{m}_ci_low": d.ci_low, f"{m}_ci_high": d.ci_high})
    return row


def with_reference(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The summary with the teachers' reference row (`teacher_row`) appended, when the runs name them:
    what the page and the CSV show."""
    ref = teacher_row(runs, baseline=summary.attrs.get("baseline"))
    if ref is None:
        return summary
    out = pd.concat([summary, pd.DataFrame([ref])], ignore_index=True)
    out["is_reference"] = out["is_reference"].fillna(False).astype(bool)
    out.attrs = dict(summary.attrs)
    return out


def _constant(values: pd.Series) -> float:
    v = values.dropna()
    return float(v.median()) if len(v) else math.nan


def summarize(runs: pd.DataFrame, baseline: str | None = None, metrics: Sequence[str] = METRICS,
              order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per variant: n_runs, <metric>_mean/_std/_ci_low/_ci_high, n_params, compression_ratio,
    teacher_params, is_baseline, n_pairs, <metric>_delta/_p (vs the baseline), per-class AUC means and
    `notes` (why a statistic is missing). ``attrs['baseline']`` holds the baseline's name."""
    variants = list(order) if order is not None else variant_order(runs)
    base = resolve_baseline(variants, baseline)
    rows = []
    for v in variants:
        sub = runs[runs["variant"] == v]
        row: dict[str, Any] = {"variant": v, "n_runs": len(sub)}
        notes = []
        for m in metrics:
            d = describe(sub[m] if m in sub else [])
            row.update({f"{m}_mean": d.mean, f"{m}_std": d.std, f"{m}_ci_low": d.ci_low, f"{m}_ci_high": d.ci_high})
        if len(sub) < 2:
            notes.append(f"std/CI n/a: {len(sub)} run")
        for col in ("n_params", "compression_ratio", "teacher_params"):
            row[col] = _constant(sub[col]) if col in sub else math.nan
        row["is_baseline"] = v == base
        row["is_reference"] = False
        row["n_pairs"] = 0
        for m in metrics:
            row.update({f"{m}_delta_ci_low": math.nan, f"{m}_delta_ci_high": math.nan,
                        f"{m}_gap_closed": math.nan, f"{m}_mde": math.nan})
            if v == base or m not in runs:
                row[f"{m}_delta"], row[f"{m}_p"] = (0.0 if v == base else math.nan), math.nan
                row[f"{m}_p_blocked"] = math.nan
                continue
            p = paired_test(runs, v, base, m)
            d = paired_differences(runs, v, base, m).to_numpy(dtype=float)
            row["n_pairs"] = max(row["n_pairs"], p.n_pairs)
            row[f"{m}_delta"], row[f"{m}_p"] = p.delta, p.p_value
            blocked = blocked_test(runs, v, base, m)
            row["n_folds"], row[f"{m}_p_blocked"] = blocked.n_pairs, blocked.p_value
            row[f"{m}_delta_ci_low"], row[f"{m}_delta_ci_high"] = paired_ci(d)
            row[f"{m}_gap_closed"] = gap_closed(runs, v, base, m)
            row[f"{m}_mde"] = detectable_difference(d, ALPHA / max(1, len(variants) - 1))
            if p.note and f"Wilcoxon {p.note}" not in notes:
                notes.append(f"Wilcoxon {p.note}")
        if v == base:
            row["n_pairs"] = math.nan
            notes.append("baseline")
        for m in CLASS_METRICS + ("best_val_auc", "best_epoch"):
            row[f"{m}_mean"] = float(sub[m].mean()) if m in sub and sub[m].notna().any() else math.nan
        row["notes"] = "; ".join(notes)
        rows.append(row)
    for m in metrics:  # Holm over the variants compared with the baseline, per metric and test
        for col in (f"{m}_p", f"{m}_p_blocked"):
            for r, q in zip(rows, holm([r[col] for r in rows])):
                r[f"{col}_holm"] = q
        for r in rows:  # resolved: the pairs' Wilcoxon and the fold-blocked t-test agree after Holm
            r[f"{m}_resolved"] = bool(r[f"{m}_p_holm"] < ALPHA and r[f"{m}_p_blocked_holm"] < ALPHA)
    table = pd.DataFrame(rows)
    table.attrs["baseline"] = base
    return table


def representative(runs: pd.DataFrame, variant: str) -> pd.Series:
    """The run of `variant` shown in the ROC/PR curves: fold 0 / seed 0, else the first by (fold, seed)."""
    sub = runs[runs["variant"] == variant]
    exact = sub[(sub["fold"] == 0) & (sub["seed"] == 0)]
    if len(exact):
        return exact.iloc[-1]
    return sub.sort_values(list(PAIR_KEYS), kind="stable").iloc[0]


def top_variants(summary: pd.DataFrame, k: int = 3, metric: str = "test_auc") -> list[str]:
    return list(summary.sort_values(f"{metric}_mean", ascending=False, kind="stable")["variant"].head(k))


def history_means(history: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch means over a variant's runs: columns variant, metric, step, value, n_runs."""
    if history.empty:
        return pd.DataFrame(columns=["variant", "metric", "step", "value", "n_runs"])
    g = history.groupby(["variant", "metric", "step"], sort=False)["value"]
    return g.agg(value="mean", n_runs="count").reset_index()


# ----------------------------------------------------------------------------------------------
# Everything a report shows
# ----------------------------------------------------------------------------------------------
TEACHER_COLUMNS = ["run_id", "fold", "n_params", *METRICS]


def empty_teachers() -> pd.DataFrame:
    return pd.DataFrame(columns=TEACHER_COLUMNS)


@dataclass
class ScoreSet:
    """Per-beat test scores of one run, shown as a ROC and a PR curve."""

    label: str
    kind: str  # "top", "baseline" or "teacher"
    variant: str
    run_id: str
    scores: pd.DataFrame  # columns score, label (1 = anomaly)


@dataclass
class ReportData:
    study: str
    runs: pd.DataFrame  # kept runs (see runs_frame)
    summary: pd.DataFrame  # see summarize
    baseline: str
    header: dict[str, str] = field(default_factory=dict)  # label -> text, shown at the top
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run_id", "variant", "metric",
                                                                                  "step", "value"]))
    curves: list[ScoreSet] = field(default_factory=list)
    teachers: pd.DataFrame = field(default_factory=lambda: empty_teachers())  # see fetch_teachers
    notes: list[str] = field(default_factory=list)
    optuna_study: Any = None
    screen: pd.DataFrame = field(default_factory=pd.DataFrame)  # a staged study's screening runs


def _summ(values: Iterable[Any], fmt=str) -> str:
    vals = sorted({v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))},
                  key=lambda v: (isinstance(v, str), v))
    return ", ".join(fmt(v) for v in vals) if vals else "?"


def _ms_date(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def header_info(runs: pd.DataFrame, scale: str | None = None, description: str = "",
                teachers: pd.DataFrame | None = None, tracking_uri: str | None = None,
                ui_link: str | None = None) -> dict[str, str]:
    """The page header: scale (epochs, train subset, folds, seeds), dates, git commit(s)."""
    def param(key: str) -> list[Any]:
        return list(runs[f"param.{key}"]) if f"param.{key}" in runs else []

    subset = _summ(param("data.train_subset"), lambda v: "all" if v in ("None", None) else str(v))
    h = {"scale": scale or _summ(runs.get("scale", pd.Series(dtype=object))),
         "epochs": _summ(param("train.epochs")),
         "train subset (beats)": subset,
         "folds": _summ(runs["fold"]), "seeds": _summ(runs["seed"]),
         "runs": f"{len(runs)} kept runs of {runs['variant'].nunique()} variants"}
    t_epochs = param("distill.teacher_train.epochs")
    if t_epochs:
        h["teacher epochs"] = _summ(t_epochs)
    if teachers is not None and len(teachers):
        h["teacher params"] = _summ(teachers["n_params"], lambda v: f"{int(v):,}")
    commits = runs["git_commit"].dropna() if "git_commit" in runs else pd.Series(dtype=object)
    counts = commits.value_counts()
    h["git commit"] = ("unknown" if counts.empty else counts.index[0] if len(counts) == 1 else
                       "mixed: " + ", ".join(f"{c[:12]} ({n} runs)" for c, n in counts.items()))
    h["report date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if "start_time" in runs and runs["start_time"].notna().any():
        end = runs["end_time"].max() if "end_time" in runs and runs["end_time"].notna().any() else runs["start_time"].max()
        h["runs dated"] = f"{_ms_date(runs['start_time'].min())} to {_ms_date(end)}"
    if "data_fingerprint" in runs and runs["data_fingerprint"].notna().any():
        h["data fingerprint"] = _summ(runs["data_fingerprint"])
    if tracking_uri:
        h["tracking store"] = tracking_uri
    if ui_link:
        h["MLflow runs table"] = f"{ui_link} (make ui)"
    if description:
        h["description"] = description.strip()
    return h


# ----------------------------------------------------------------------------------------------
# Reading a study from MLflow
# ----------------------------------------------------------------------------------------------
def fetch_history(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch val_auc, val_ap and loss_* of every run: columns run_id, variant, metric, step, value."""
    rows = []
    for _, r in runs.iterrows():
        keys = [c for c in runs.columns if (c in HISTORY_METRICS or c.startswith("loss_")) and pd.notna(r[c])]
        for key in keys:
            for m in tracking.metric_history(r["run_id"], key):
                rows.append((r["run_id"], r["variant"], key, int(m.step), float(m.value)))
    return pd.DataFrame(rows, columns=["run_id", "variant", "metric", "step", "value"])


def fetch_teachers(runs: pd.DataFrame) -> pd.DataFrame:
    """The teacher runs the students name (``teacher_run_id``): run_id, fold, n_params and test metrics."""
    ids = list(pd.unique(runs["teacher_run_id"].dropna())) if "teacher_run_id" in runs else []
    if not ids:
        return empty_teachers()
    frame = runs_frame([tracking.get_run(i) for i in ids])
    sizes = runs.groupby("teacher_run_id")["teacher_params"].median()
    frame["n_params"] = pd.Series([sizes.get(i, math.nan) for i in frame["run_id"]]).fillna(frame["n_params"])
    for m in METRICS:
        if m not in frame:
            frame[m] = math.nan
    return frame[TEACHER_COLUMNS].reset_index(drop=True)


def attach_teachers(runs: pd.DataFrame, teachers: pd.DataFrame) -> pd.DataFrame:
    """`runs` with ``teacher_<metric>``: the test metrics of each run's own teacher."""
    out = runs.copy()
    by_id = teachers.set_index("run_id") if len(teachers) else None
    for m in METRICS:
        if by_id is None or "teacher_run_id" not in out:
            out[f"teacher_{m}"] = out.get(f"teacher_{m}", math.nan)
            continue
        out[f"teacher_{m}"] = out["teacher_run_id"].map(by_id[m])
    return out


@contextmanager
def _quiet_downloads():
    """No MLflow download progress bars on the console while the report reads artifacts."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def fetch_curves(runs: pd.DataFrame, summary: pd.DataFrame, baseline: str, teachers: pd.DataFrame,
                 notes: list[str], k: int = 3) -> list[ScoreSet]:
    """Stored per-beat scores of the top-k variants' and the baseline's representative runs and their teachers."""
    _load = tracking.load_scores

    def load_scores(run_id: str) -> pd.DataFrame:
        with _quiet_downloads():
            return _load(run_id)

    chosen = [(v, "top") for v in top_variants(summary, k)]
    if baseline not in [v for v, _ in chosen]:
        chosen.append((baseline, "baseline"))
    out: list[ScoreSet] = []
    teacher_ids: list[str] = []
    for v, kind in chosen:
        rep = representative(runs, v)
        label = f"{v} (fold {rep['fold']}, seed {rep['seed']})" + (" [baseline]" if v == baseline else "")
        try:
            out.append(ScoreSet(label, "baseline" if v == baseline else kind, v, rep["run_id"],
                                load_scores(rep["run_id"])))
        except Exception as e:  # an older run without stored scores
            notes.append(f"no stored scores for {v} (run {rep['run_id']}): {type(e).__name__}")
        t = rep.get("teacher_run_id")
        if isinstance(t, str) and t and t not in teacher_ids:
            teacher_ids.append(t)
    folds = dict(zip(teachers["run_id"], teachers["fold"]))
    for t in teacher_ids:
        label = "teacher" + (f" (fold {folds.get(t, '?')})" if len(teacher_ids) > 1 else "")
        try:
            out.append(ScoreSet(label, "teacher", "teacher", t, load_scores(t)))
        except Exception as e:
            notes.append(f"no stored scores for teacher run {t}: {type(e).__name__}")
    return out


def _with_committed(raw: pd.DataFrame, committed: pd.DataFrame) -> pd.DataFrame:
    """MLflow's runs (``source`` mlflow) plus the committed rows (``source`` results) of trial keys
    MLflow has no FINISHED run of: rows trained on another machine."""
    raw = raw.assign(source="mlflow")
    if committed.empty:
        return raw
    done = set(raw.loc[raw["status"] == "FINISHED", "trial_key"]) if len(raw) else set()
    extra = committed[~committed["trial_key"].isin(done)].assign(source="results")
    return pd.concat([raw, extra], ignore_index=True) if len(raw) else extra.reset_index(drop=True)


def split_stages(runs: pd.DataFrame, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A staged study's runs as (the table's, the screen's): the confirmation is what the table
    tests against the baseline (Holm over its variants), the screen draws the position map; before
    the confirmation has runs both are the screen's. Other studies: (runs, an empty frame)."""
    if "stage" not in runs or runs["stage"].isna().all():
        return runs, runs.iloc[0:0]
    screen = runs[runs["stage"] == "screen"].reset_index(drop=True)
    confirm = runs[runs["stage"] == "confirm"].reset_index(drop=True)
    if confirm.empty:
        notes.append(f"staged study: the confirmation has no runs yet; the table is the screen's ({len(screen)} runs)")
        return screen, screen
    notes.append(f"staged study: the table is the confirmation's {len(confirm)} runs of {confirm['variant'].nunique()} "
                 f"variants (Holm over them); the screen's {len(screen)} runs draw the position map and the "
                 f"pre/post test")
    return confirm, screen


def collect(study: str, baseline: str | None = None, scale: str | None = None,
            optuna_study: Any = None) -> ReportData:
    """Read study `study` from the current MLflow tracking store, and from its committed results table
    (``results/<study>.csv``) for the trials MLflow does not have, into a ReportData."""
    from ablation.study import results
    from ablation.study.spec import declared_variants
    exp = tracking.experiment(study)
    uri = tracking.current_uri()
    committed = results.load(study)
    raw = runs_frame(tracking.trial_runs(study)) if exp is not None else pd.DataFrame()
    if raw.empty and committed.empty:
        where = f"no MLflow experiment {study!r}" if exp is None else f"experiment {study!r} has no study runs"
        raise NotFound(f"{where} in {uri} and no {results.results_path(study)}; "
                          f"run `python -m ablation study {study}` first")
    raw = _with_committed(raw, committed)
    notes: list[str] = []
    if (raw["source"] == "results").any():
        notes.append(f"{int((raw['source'] == 'results').sum())} runs read from {results.results_path(study).name} "
                     "(committed results; no training curves or per-beat scores for them)")
    scales = raw["scale"].fillna("?")
    if scale is None:
        fin = raw[raw["status"] == "FINISHED"]
        scale = str((fin if len(fin) else raw).sort_values("start_time")["scale"].fillna("?").iloc[-1])
    others = scales[scales != scale].value_counts()
    if len(others):
        notes.append("left out: runs of other scales (" + ", ".join(f"{s}: {n}" for s, n in others.items())
                     + "); pass scale= to report one of them")
    runs, counts = keep_latest(raw[scales == scale])
    if runs.empty:
        raise NotFound(f"study {study!r} (scale {scale}) has no FINISHED runs in {uri}")
    if counts["not_finished"]:
        notes.append(f"left out: {counts['not_finished']} runs not FINISHED (failed, killed or running)")
    if counts["repeated"]:
        notes.append(f"left out: {counts['repeated']} earlier FINISHED runs of a trial key run again later")
    if counts["superseded"]:
        notes.append(f"left out: {counts['superseded']} runs of an older version of a trial (same variant, "
                     "fold and seed, different config)")
    tracked = runs[runs["source"] == "mlflow"]
    teachers = fetch_teachers(tracked)
    runs = pd.concat([attach_teachers(tracked, teachers), runs[runs["source"] != "mlflow"]], ignore_index=True)
    runs, screen = split_stages(runs, notes)
    summary = summarize(runs, baseline, order=variant_order(runs, declared_variants(study)))
    base = summary.attrs["baseline"]
    parents = tracking.parent_runs(study)
    parents = [p for p in parents if p.data.tags.get("scale") in (scale, None)] or parents
    description = parents[0].data.tags.get("mlflow.note.content", "") if parents else ""
    from ablation.study.reproduce import noise_floor
    if (floor := noise_floor(study)) is not None:
        notes.append(floor)
    data = ReportData(study=study, runs=runs, summary=summary, baseline=base,
                      header=header_info(runs, scale, description, teachers, uri,
                                         tracking.ui_link(study) if exp is not None else None),
                      history=fetch_history(tracked[tracked["run_id"].isin(set(runs["run_id"]))]),
                      teachers=teachers, notes=notes, optuna_study=optuna_study, screen=screen)
    data.curves = fetch_curves(runs, summary, base, teachers, notes)
    return data
