"""The report's summary as a Markdown table (the README's results table is this text, verbatim).

    markdown_table(summary, baseline="student_alone")  ->  "| variant | runs | test AUC ... |\n|---|..."
    position_markdown(deltas, overall, confirmed)      ->  the position map and pre minus post, as text

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


def _map_cell(taps: pd.DataFrame, metric: str) -> str:
    """'pre / post' mean differences of one (net, input, block) cell; a missing point is '·'."""
    by_point = taps.set_index("point")[f"{metric}_delta"]
    return " / ".join(f"{by_point[p]:+.4f}" if p in by_point and not _missing(by_point[p]) else "·"
                      for p in ("pre", "post"))


def p_text(p: Any) -> str:
    return "n/a" if _missing(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def confirmed_markdown(cells: pd.DataFrame) -> list[str]:
    """A confirmation's per-cell pre minus post (`positions.pre_post_cells`) as a Markdown table."""
    from ablation.report.positions import MAP_METRICS, net_label
    out = ["Pre minus post in the confirmation, per cell (Holm over the cells; blocked: fold-blocked):", "",
           "| cell | pairs | " + " | ".join(f"{label}: pre - post [95 % CI] | Holm p | blocked p"
                                            for label in MAP_METRICS.values()) + " |",
           "|" + "---|" * (2 + 3 * len(MAP_METRICS))]
    for _, c in cells.iterrows():
        values = [f"{c[f'{m}_delta']:+.4f} [{c[f'{m}_ci_low']:+.4f}, {c[f'{m}_ci_high']:+.4f}] | "
                  f"{p_text(c[f'{m}_p'])} | {p_text(c[f'{m}_p_blocked'])}" for m in MAP_METRICS]
        out.append(f"| {net_label(c['net'], c['input'])} {c['block']} | {int(c['n_pairs'])} | " + " | ".join(values) + " |")
    return out


def position_markdown(deltas: pd.DataFrame, overall: pd.DataFrame, confirmed: pd.DataFrame | None = None) -> str:
    """The position map (`positions.position_deltas`: one row per tap) as one Markdown table per
    metric, network (the discriminator once per input) x block, each cell 'pre / post' paired
    difference to the baseline; then pre minus post over the cells (`positions.pre_post`); then, for
    a staged study, the confirmation's per-cell answer (`confirmed`: `positions.pre_post_cells`)."""
    from ablation.report.positions import MAP_METRICS, net_label
    blocks = sorted(deltas["block"].unique())
    keyed = deltas.assign(row=[net_label(n, i) for n, i in zip(deltas["net"], deltas["input"])])
    order = {"enc": 0, "dec": 1, "disc (real)": 2, "disc (fake)": 3}  # the pipeline's order
    rows = sorted(keyed["row"].unique(), key=lambda r: (order.get(r, len(order)), r))
    out = []
    for metric, label in MAP_METRICS.items():
        out += [f"Δ {label} to the baseline, pre / post, mean over {int(deltas['n_pairs'].max())} pairs:", "",
                "| network | " + " | ".join(f"block {b}" for b in blocks) + " |", "|" + "---|" * (len(blocks) + 1)]
        for r in rows:
            cells = [_map_cell(keyed[(keyed["row"] == r) & (keyed["block"] == b)], metric) for b in blocks]
            out.append(f"| {r} | " + " | ".join(cells) + " |")
        out.append("")
    for _, o in overall.iterrows():
        blocked = "n/a" if _missing(o["p_fold_blocked"]) else f"{o['p_fold_blocked']:.3f}"
        wilcoxon = "n/a" if _missing(o["p_wilcoxon_cells"]) else f"{o['p_wilcoxon_cells']:.3f}"
        out.append(f"- pre minus post, {o['metric']}, over {int(o['n_cells'])} cells: {o['pre_minus_post']:+.4f} "
                   f"[{o['ci_low']:+.4f}, {o['ci_high']:+.4f}], pre better in {int(o['cells_pre_better'])}; "
                   f"Wilcoxon p over the cells {wilcoxon}, fold-blocked p {blocked} "
                   f"({int(o['n_folds'])} fold{'' if int(o['n_folds']) == 1 else 's'})")
    if confirmed is not None and len(confirmed):
        out += [""] + confirmed_markdown(confirmed)
    return "\n".join(out) + "\n"
