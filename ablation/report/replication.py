"""A study run twice -> what replicated: the same trials side by side, and each variant's paired
difference to the baseline in both runs, on the (fold, seed) pairs both runs hold.

Two committed tables of one study (``results/first_run/headline.csv`` and ``results/headline.csv``,
say) match trial by trial on (variant, fold, seed): their keys may differ (another teacher, a key
that lost a field), the trial does not. Per trial: the two test AUCs and their difference; over
the trials: the sd and largest size of that difference, the spread two runs of one trial show
(an upper bound on run-to-run noise where the machines, teachers or code differ). Per variant:
`aggregate.summarize` of each run restricted to the common trials (mean difference, its 95 % CI,
Wilcoxon and fold-blocked p, Holm over the variants, resolved or not), and whether the two agree
in sign and in being resolved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ablation.errors import BadInput
from ablation.report.aggregate import PAIR_KEYS, keep_latest, summarize, variant_order

TRIAL = ("variant", *PAIR_KEYS)
NEEDED = (*TRIAL, "test_auc", "trial_key", "status")


def read_table(path: Path) -> pd.DataFrame:
    """A committed per-run table, its FINISHED runs only, one per trial (`aggregate.keep_latest`);
    BadInput naming the file where it is missing or lacks a column."""
    if not path.is_file():
        raise BadInput(f"{path}: no such results table")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: not a CSV table ({' '.join(str(e).split())[:120]})") from e
    missing = [c for c in NEEDED if c not in table]
    if missing:
        raise BadInput(f"{path}: lacks column(s) {', '.join(missing)} (a study's results table has {', '.join(NEEDED)})")
    return keep_latest(table)[0]


def matched(first: pd.DataFrame, second: pd.DataFrame, metric: str = "test_auc",
            declared: Sequence[str] = ()) -> pd.DataFrame:
    """One row per trial (variant, fold, seed) in both tables (of `read_table`: one row a trial):
    `first`, `second`, `diff` (second - first) of `metric`; variants in the `declared` order (the
    study file's, `variant_order`), then fold and seed."""
    both = pd.concat({name: t.set_index(list(TRIAL))[metric] for name, t in (("first", first), ("second", second))},
                     axis=1, join="inner").reset_index()
    both["diff"] = both["second"] - both["first"]
    rank = {v: i for i, v in enumerate(variant_order(first, declared))}
    return both.sort_values(list(TRIAL), key=lambda c: c.map(rank) if c.name == "variant" else c,
                            ignore_index=True)


def noise(trials: pd.DataFrame) -> dict[str, float]:
    """The spread of one trial's result across the two runs: n, sd (ddof 1), mean |diff|, max |diff|."""
    d = trials["diff"].to_numpy(dtype=float)
    return {"n": len(d), "sd": float(np.std(d, ddof=1)) if len(d) > 1 else float("nan"),
            "mean_abs": float(np.abs(d).mean()) if len(d) else float("nan"),
            "max_abs": float(np.abs(d).max()) if len(d) else float("nan")}


def _common(table: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    return table.merge(trials[list(TRIAL)], on=list(TRIAL))


def compare(first: pd.DataFrame, second: pd.DataFrame, baseline: str | None = None,
            declared: Sequence[str] = ()) -> pd.DataFrame:
    """One row per variant other than the baseline, on the common trials: n_pairs, and per run
    (`first_`, `second_`) the test AUC delta to the baseline, its CI, Holm-adjusted Wilcoxon and
    fold-blocked p and `resolved`; `same_sign`, `same_call` (both resolved or both not)."""
    trials = matched(first, second, declared=declared)
    order = list(pd.unique(trials["variant"]))
    out = {}
    for name, table in (("first", first), ("second", second)):
        s = summarize(_common(table, trials), baseline, metrics=("test_auc",), order=order)
        base = s.attrs["baseline"]
        s = s[~s["is_baseline"]].set_index("variant")
        out[name] = s[["n_pairs", "test_auc_delta", "test_auc_delta_ci_low", "test_auc_delta_ci_high",
                       "test_auc_p_holm", "test_auc_p_blocked_holm", "test_auc_resolved"]]
    table = pd.concat(out, axis=1)
    table.columns = [f"{run}_{col.removeprefix('test_auc_')}" for run, col in table.columns]
    table = table.drop(columns="second_n_pairs").rename(columns={"first_n_pairs": "n_pairs"})
    table["same_sign"] = np.sign(table["first_delta"]) == np.sign(table["second_delta"])
    table["same_call"] = table["first_resolved"] == table["second_resolved"]
    table.attrs["baseline"] = base
    return table.reset_index()


def _f(x: float, fmt: str) -> str:
    return "n/a" if pd.isna(x) else format(x, fmt)


def _delta(row: pd.Series, run: str) -> str:
    text = (f"{_f(row[f'{run}_delta'], '+.4f')} [{_f(row[f'{run}_delta_ci_low'], '+.4f')}, "
            f"{_f(row[f'{run}_delta_ci_high'], '+.4f')}], p {_f(row[f'{run}_p_holm'], '.3f')} / "
            f"{_f(row[f'{run}_p_blocked_holm'], '.3f')}")
    return f"**{text}**" if row[f"{run}_resolved"] else text


def markdown(first: pd.DataFrame, second: pd.DataFrame, names: tuple[str, str] = ("first", "second"),
             baseline: str | None = None, declared: Sequence[str] = ()) -> str:
    """The comparison as Markdown: the noise line, the per-variant table, the per-trial table."""
    trials = matched(first, second, declared=declared)
    if trials.empty:
        return "no trial (variant, fold, seed) is in both tables\n"
    n = noise(trials)
    table = compare(first, second, baseline, declared)
    a, b = names
    lines = [f"{n['n']} trials in both: test AUC {b} - {a}: sd {_f(n['sd'], '.4f')}, mean |diff| {n['mean_abs']:.4f}, "
             f"largest {n['max_abs']:.4f}.", "",
             f"Difference to `{table.attrs['baseline']}` on those trials (mean [95 % CI], p Wilcoxon / "
             f"fold-blocked, Holm over the variants; bold: both < 0.05):", "",
             f"| variant | pairs | {a} | {b} | same sign | same call |", "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| `{r['variant']}` | {r['n_pairs']:.0f} | {_delta(r, 'first')} | {_delta(r, 'second')} | "
                     f"{'yes' if r['same_sign'] else 'no'} | {'yes' if r['same_call'] else 'no'} |")
    lines += ["", f"| variant | fold | seed | {a} test AUC | {b} test AUC | diff |", "|---|---|---|---|---|---|"]
    for _, r in trials.iterrows():
        lines.append(f"| `{r['variant']}` | {r['fold']} | {r['seed']} | {r['first']:.4f} | {r['second']:.4f} | "
                     f"{r['diff']:+.4f} |")
    return "\n".join(lines) + "\n"
