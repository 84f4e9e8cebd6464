"""The report's summary as a Markdown table (the README's results table is this text, verbatim).

    markdown_table(summary, baseline="student_alone")  ->  "| variant | runs | test AUC ... |\n|---|..."

`summary` is the report CSV's frame (`with_reference(summary, runs)`): one row per variant, the
teachers' reference row last. Each variant row gives test AUC and AP as mean ± sd, the paired
difference to the baseline with its 95 % CI, the Holm-adjusted p of the pairs' Wilcoxon test and of
the fold-blocked t-test (`aggregate.blocked_test`), and the share of the teacher-student AUC gap closed; the baseline and the teacher rows give the means only.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

COLUMNS = ("variant", "runs", "test AUC mean ± sd", "Δ AUC [95 % CI]", "Holm p", "blocked p", "test AP mean ± sd",
           "Δ AP [95 % CI]", "Holm p", "blocked p", "AUC gap closed")


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _mean_sd(row: pd.Series, m: str) -> str:
    return f"{row[f'{m}_mean']:.4f} ± {row[f'{m}_std']:.4f}"


def _delta(row: pd.Series, m: str) -> str:
    if _missing(row.get(f"{m}_delta_ci_low")):
        return "—"
    return (f"{row[f'{m}_delta']:+.4f} [{row[f'{m}_delta_ci_low']:+.4f}, "
            f"{row[f'{m}_delta_ci_high']:+.4f}]")


def _p(row: pd.Series, m: str, test: str = "") -> str:
    """A Holm-adjusted p (`test` "_blocked": the fold-blocked t-test's), bold where the difference
    is resolved: both tests below 0.05 after Holm."""
    p = row.get(f"{m}_p{test}_holm")
    if _missing(p):
        return "—"
    return f"**{p:.3f}**" if bool(row.get(f"{m}_resolved", False)) else f"{p:.3f}"


def _gap(row: pd.Series) -> str:
    g = row.get("test_auc_gap_closed")
    return "—" if _missing(g) else f"{100 * g:+.0f} %"


def _name(row: pd.Series, baseline: str) -> str:
    if bool(row.get("is_reference", False)):
        return "teacher (reference)"
    return f"`{row['variant']}` (baseline)" if row["variant"] == baseline else f"`{row['variant']}`"


def markdown_table(summary: pd.DataFrame, baseline: str) -> str:
    """One Markdown row per variant of `summary` (order kept); p in bold where the pairs' Wilcoxon
    and the fold-blocked t-test are both below 0.05 after Holm."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for _, row in summary.iterrows():
        cells = [_name(row, baseline), f"{int(row['n_runs'])}", _mean_sd(row, "test_auc"), _delta(row, "test_auc"),
                 _p(row, "test_auc"), _p(row, "test_auc", "_blocked"), _mean_sd(row, "test_ap"),
                 _delta(row, "test_ap"), _p(row, "test_ap"), _p(row, "test_ap", "_blocked"), _gap(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
