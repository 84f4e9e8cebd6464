"""The study report: one self-contained HTML page (plotly.js inline once, in the head) and a CSV.

    build_report("fd_positions", Path("dashboards"))  ->  dashboards/fd_positions.html (+ .csv)

The page needs no network: plotly.js is embedded once in a ``<script>`` in the page's head and
each figure is a ``<div>`` drawn by ``Plotly.newPlot``.
"""
from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import plotly
from plotly.offline import get_plotlyjs

from ablation.report.aggregate import (ALPHA, CONFIDENCE, METRIC_LABELS, METRICS, MIN_PAIRS, ReportData,
                                       collect, with_reference)
from ablation.report.figures import FigureSpec, figure_specs, map_runs
from ablation.report.markdown import markdown_table, position_markdown

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 0 24px 48px; color: #222; }
header { border-bottom: 2px solid #ddd; margin-bottom: 16px; }
h1 { margin: 20px 0 6px; font-size: 1.6em; }
h2 { margin-top: 36px; font-size: 1.25em; border-bottom: 1px solid #eee; padding-bottom: 4px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 0.92em; }
dl.meta dt { font-weight: 600; color: #555; } dl.meta dd { margin: 0; font-family: ui-monospace, monospace; }
table.summary { border-collapse: collapse; font-size: 0.88em; width: 100%; }
table.summary th, table.summary td { border: 1px solid #ddd; padding: 4px 7px; text-align: right; vertical-align: top; }
table.summary th { background: #f4f4f4; text-align: center; }
table.summary td.variant { text-align: left; font-family: ui-monospace, monospace; min-width: 12em; }
.tablewrap { overflow-x: auto; }
.num { white-space: nowrap; }
table.summary tr.baseline { background: #f3f7ff; }
.na { color: #888; font-style: italic; font-size: 0.9em; }
.ci { color: #666; font-size: 0.85em; white-space: nowrap; }
.sig { font-weight: 700; color: #0a6b2d; }
.best { font-weight: 700; }
.notes { font-size: 0.9em; color: #444; }
.caption { font-size: 0.9em; color: #444; margin: 4px 0 8px; }
.missing { color: #888; font-style: italic; }
.figure { border: 1px solid #eee; margin-bottom: 8px; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _na(text: str) -> str:
    return f'<span class="na">{_e(text)}</span>'


def _stat_cell(row: pd.Series, m: str, best: bool) -> str:
    mean, std, lo, hi, n = (row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci_low"], row[f"{m}_ci_high"],
                            int(row["n_runs"]))
    if _isnan(mean):
        return _na("n/a: no value")
    head = f'<span class="num{" best" if best else ""}">{mean:.4f}</span>'
    if n < 2 or _isnan(std):
        return f"{head}<br>{_na(f'sd, CI n/a: {n} run')}"
    return f'{head} <span class="num">&plusmn; {std:.4f}</span><br><span class="ci">[{lo:.4f}, {hi:.4f}]</span>'


def _delta_cell(row: pd.Series, m: str, baseline: str) -> str:
    if row["is_baseline"]:
        return _na("baseline")
    if row.get("is_reference", False):
        return _na("reference")
    delta, p, pairs = row[f"{m}_delta"], row[f"{m}_p"], row["n_pairs"]
    if _isnan(delta):
        return _na("n/a: no matched (fold, seed) pairs")
    pairs = int(pairs)
    ci = "" if _isnan(row.get(f"{m}_delta_ci_low", math.nan)) else (
        f'<br><span class="ci">[{row[f"{m}_delta_ci_low"]:+.4f}, {row[f"{m}_delta_ci_high"]:+.4f}]</span>')
    if _isnan(p):
        ptext = _na(f"p n/a: {pairs} pair{'s' if pairs != 1 else ''} (needs >= {MIN_PAIRS})")
    else:
        holm, blocked = row.get(f"{m}_p_holm", math.nan), row.get(f"{m}_p_blocked_holm", math.nan)
        sig = bool(row.get(f"{m}_resolved", False))
        blocked_text = "" if _isnan(blocked) else f", blocked Holm {blocked:.3g}"
        ptext = f'<span class="{"sig" if sig else ""}">p = {p:.3g}, Holm {holm:.3g}{blocked_text}</span>'
    return f'<span class="num">{delta:+.4f}</span>{ci}<br>{ptext}'


def _gap_cell(row: pd.Series) -> str:
    if row["is_baseline"] or row.get("is_reference", False):
        return _na("&ndash;")
    gap, mde = row.get("test_auc_gap_closed", math.nan), row.get("test_auc_mde", math.nan)
    gap_text = _na("n/a") if _isnan(gap) else f'<span class="num">{gap:+.0%}</span>'
    mde_text = _na("n/a") if _isnan(mde) else f'<span class="num">{mde:.4f}</span>'
    return f"{gap_text}<br><small>detectable &Delta; {mde_text}</small>"


def _int(x: Any, fmt: str = "{:,.0f}") -> str:
    return _na("n/a") if _isnan(x) else fmt.format(x)


def summary_table(data: ReportData) -> str:
    s = with_reference(data.summary, data.runs)
    best = data.summary["test_auc_mean"].max() if data.summary["test_auc_mean"].notna().any() else None
    head = ["variant", "runs"] + [f"{METRIC_LABELS[m]}<br><small>mean &plusmn; sd [{CONFIDENCE:.0%} CI]</small>"
                                  for m in METRICS]
    head += ["parameters<br><small>G + D</small>", "compression<br><small>teacher / student</small>",
             "matched pairs<br><small>(fold, seed)</small>"]
    head += [f"&Delta; {METRIC_LABELS[m]}<br><small>vs baseline [{CONFIDENCE:.0%} CI], Wilcoxon p, Holm p, "
             f"fold-blocked Holm p</small>"
             for m in METRICS]
    head += ["gap closed<br><small>(variant &minus; baseline) / (teacher &minus; baseline), test AUC</small>"]
    rows = []
    for _, r in s.iterrows():
        name = _e(r["variant"]).replace("/", "/<wbr>")
        cells = [f'<td class="variant">{name}{" <small>(baseline)</small>" if r["is_baseline"] else ""}</td>',
                 f'<td>{int(r["n_runs"])}</td>']
        cells += [f"<td>{_stat_cell(r, m, m == 'test_auc' and r['test_auc_mean'] == best)}</td>" for m in METRICS]
        cells += [f"<td>{_int(r['n_params'])}</td>", f"<td>{_int(r['compression_ratio'], '{:.2f}x')}</td>",
                  f"<td>{'&ndash;' if r['is_baseline'] else _int(r['n_pairs'], '{:.0f}')}</td>"]
        cells += [f"<td>{_delta_cell(r, m, data.baseline)}</td>" for m in METRICS]
        cells += [f"<td>{_gap_cell(r)}</td>"]
        rows.append(f'<tr class="{"baseline" if r["is_baseline"] else ""}">{"".join(cells)}</tr>')
    return ('<div class="tablewrap"><table class="summary"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table></div>")


def _signed(x: Any, fmt: str = "{:+.4f}") -> str:
    return _na("n/a") if _isnan(x) else fmt.format(x)


def _ci(lo: Any, hi: Any) -> str:
    return _na("n/a") if _isnan(lo) else f'<span class="ci">[{lo:+.4f}, {hi:+.4f}]</span>'


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    return ('<div class="tablewrap"><table class="summary"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table></div>")


def _cell_rows(cells: pd.DataFrame) -> list[list[str]]:
    """Per cell: its name, pairs, and per metric pre - post with CI and its two Holm-adjusted p."""
    from ablation.report.positions import MAP_METRICS, net_label
    return [[_e(f"{net_label(r['net'], r['input'])} {r['block']}"), str(r["n_pairs"])]
            + [f"{_signed(r[f'{m}_delta'])}<br>{_ci(r[f'{m}_ci_low'], r[f'{m}_ci_high'])}<br><small>Holm p "
               f"{_signed(r[f'{m}_p'], '{:.3g}')}, blocked {_signed(r[f'{m}_p_blocked'], '{:.3g}')}</small>"
               for m in MAP_METRICS]
            for _, r in cells.iterrows()]


def _cell_headers() -> list[str]:
    from ablation.report.positions import MAP_METRICS
    return ["cell", "pairs"] + [f"pre &minus; post, {label}" for label in MAP_METRICS.values()]


def confirmed_pre_post(data: ReportData) -> pd.DataFrame:
    """A staged study's confirmation, per cell confirmed at both points: pre minus post with its
    tests (`positions.pre_post_cells`); empty for other studies."""
    from ablation.report.positions import pre_post_cells
    return pre_post_cells(data.runs) if len(data.screen) else pd.DataFrame()


def pre_post_section(data: ReportData) -> str:
    """Pre minus post over every (net, block, input) cell: overall (CI, tests) and per cell; for a
    staged study also the confirmation's per-cell answer; '' when no cell is tapped at both points."""
    from ablation.report.positions import pre_post, pre_post_cells
    runs = map_runs(data)
    cells = pre_post_cells(runs)
    if cells.empty:
        return ""
    overall = [[_e(r["metric"]), str(r["n_cells"]), _signed(r["pre_minus_post"]), _ci(r["ci_low"], r["ci_high"]),
                f'{r["cells_pre_better"]} of {r["n_cells"]}', _signed(r["p_wilcoxon_cells"], "{:.3g}"),
                f'{_signed(r["p_fold_blocked"], "{:.3g}")} <small>({r["n_folds"]} folds)</small>']
               for _, r in pre_post(runs).iterrows()]
    stage = "the screen's runs" if len(data.screen) else "the study's runs"
    confirmed = confirmed_pre_post(data)
    confirmation = "" if confirmed.empty else (
        "<h3>In the confirmation</h3><p class=\"caption\">Per cell confirmed at both points, on the "
        "confirmation's pairs: pre minus post with its t-interval, the Wilcoxon p over the pairs and the "
        "fold-blocked p, each Holm-adjusted over these cells.</p>" + _html_table(_cell_headers(), _cell_rows(confirmed)))
    return (f'<section id="pre-post"><h2>Pre-activation against post-activation</h2><p class="caption">From '
            f"{stage}: per (network, block, input) cell, pre minus post paired on (fold, seed); overall, the mean "
            f"of the cell means with its {CONFIDENCE:.0%} t-interval over the cells, a Wilcoxon signed-rank test "
            "over the cells, and the fold-blocked t-test (every cell's differences averaged per fold; from 3 "
            "folds).</p>"
            + _html_table(["metric", "cells", "pre &minus; post", f"{CONFIDENCE:.0%} CI", "cells where pre is better",
                           "Wilcoxon p (cells)", "fold-blocked p"], overall)
            + _html_table(_cell_headers(), _cell_rows(cells)) + confirmation + "</section>")


def figure_html(spec: FigureSpec) -> str:
    if spec.figure is None:
        return (f'<section class="fig-missing" data-figure="{_e(spec.id)}"><h2>{_e(spec.title)}</h2>'
                f'<p class="missing">{_e(spec.missing)}</p></section>')
    height = spec.figure.layout.height or 480
    div = spec.figure.to_html(full_html=False, include_plotlyjs=False, div_id=spec.id, config=PLOTLY_CONFIG,
                              default_height=f"{height}px", default_width="100%")
    return (f'<section data-figure="{_e(spec.id)}"><h2>{_e(spec.title)}</h2>'
            f'<p class="caption">{_e(spec.caption)}</p><div class="figure">{div}</div></section>')


def render(data: ReportData, csv_name: str | None = None) -> str:
    """The whole page as one HTML string (plotly.js inline once)."""
    specs = figure_specs(data)
    meta = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in data.header.items())
    notes = [f"Baseline: <code>{_e(data.baseline)}</code>. Differences are variant minus baseline over runs "
             f"matched on (fold, seed); p: two-sided Wilcoxon signed-rank test (scipy). With n pairs the smallest "
             f"possible p is 2/2<sup>n</sup>, so at least {MIN_PAIRS} pairs are needed to reach p &lt; {ALPHA} "
             f"(5 pairs: 0.0625); with fewer the page says n/a. Holm p: adjusted for the number of variants "
             f"compared with the baseline. Blocked: the differences averaged per fold (the folds share their "
             f"abnormal test beats), then a one-sample t-test over the fold means (from 3 folds), Holm-adjusted; "
             f"a difference is resolved (bold) where both Holm p are below {ALPHA}. Standard deviation "
             f"and the {CONFIDENCE:.0%} confidence intervals (t-distribution) need at least 2 runs. Gap closed: "
             "the paired mean difference over the teacher's lead on the same pairs. Detectable &Delta;: the "
             "smallest test-AUC difference a paired t-test at alpha / comparisons would find with power 0.8, "
             "from the observed sd of the differences."]
    notes += [_e(n) for n in data.notes]
    csv_link = f'<p class="notes">Table as CSV: <a href="{_e(csv_name)}">{_e(csv_name)}</a></p>' if csv_name else ""
    figs = "\n".join(figure_html(s) for s in specs)
    toc = " &middot; ".join(f'<a href="#{_e(s.id)}">{_e(s.title)}</a>' if s.figure is not None else _e(s.title)
                            for s in specs)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Study {_e(data.study)}: report</title>
<style>{STYLE}</style>
<script type="text/javascript">/* plotly.js {plotly.__version__} (bundled by plotly.py) */
{get_plotlyjs()}</script>
</head>
<body>
<header>
<h1>Study <code>{_e(data.study)}</code></h1>
<dl class="meta">{meta}</dl>
</header>
<nav class="notes">Figures: {toc}</nav>
<section id="summary"><h2>Summary per variant</h2>
{summary_table(data)}
{csv_link}
<ul class="notes">{"".join(f"<li>{n}</li>" for n in notes)}</ul>
</section>
{pre_post_section(data)}
{figs}
</body>
</html>
"""


def safe_name(study: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study).strip("._") or "study"


def write_report(data: ReportData, out_dir: Path) -> Path:
    """Write ``<out_dir>/<study>.html``, ``.csv`` and ``.md`` (the summary as a Markdown table); return
    the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = safe_name(data.study)
    csv_path, html_path = out_dir / f"{name}.csv", out_dir / f"{name}.html"
    table = with_reference(data.summary, data.runs)
    table.to_csv(csv_path, index=False, float_format="%.6g")
    (out_dir / f"{name}.md").write_text(markdown_table(table, data.baseline), encoding="utf-8")
    write_position_tables(data, out_dir / f"{name}-positions.csv", out_dir / f"{name}-pre_post.csv")
    html_path.write_text(render(data, csv_path.name), encoding="utf-8")
    return html_path


def write_position_tables(data: ReportData, positions: Path, pre_post_path: Path) -> None:
    """Where the study taps feature positions: the map's numbers (one row per tap), pre minus post
    (one row per cell, then the overall rows, then a staged study's confirmed cells; column ``stage``)
    and both as Markdown (``<study>-positions.md``);
    nothing otherwise."""
    from ablation.report.positions import position_deltas, pre_post, pre_post_cells
    runs = map_runs(data)
    deltas = position_deltas(runs, data.baseline)
    if deltas.empty:
        return
    deltas.to_csv(positions, index=False, float_format="%.6g")
    overall, confirmed = pre_post(runs), confirmed_pre_post(data)
    stage = "screen" if len(data.screen) else ""
    pd.concat([pre_post_cells(runs).assign(stage=stage), overall.assign(stage=stage),
               confirmed.assign(stage="confirm")], ignore_index=True).to_csv(pre_post_path, index=False,
                                                                             float_format="%.6g")
    positions.with_suffix(".md").write_text(position_markdown(deltas, overall, confirmed), encoding="utf-8")


def build_report(study_name: str, out_dir: Path, baseline: str | None = None, tracking_uri: str | None = None,
                 optuna_study: Any = None, scale: str | None = None) -> Path:
    """Read study `study_name` from MLflow and write its report; returns the HTML path.

    baseline: the variant differences are taken to (default: student_alone / baseline / none, else the
    first). tracking_uri: the MLflow store (default: $MLFLOW_TRACKING_URI, else runs/mlflow.db).
    optuna_study: an optuna.Study of a tuned study, adding Optuna's figures. scale: which scale's runs
    (default: the scale of the latest finished run).
    """
    from ablation import tracking
    tracking.setup(tracking_uri)
    data = collect(study_name, baseline=baseline, scale=scale, optuna_study=optuna_study)
    return write_report(data, out_dir)
