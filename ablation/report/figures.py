"""The report's Plotly figures; each has a title, axis labels and units.

`figure_specs(data)` lists every figure of a report in page order, with the reason where one
cannot be drawn (e.g. no heatmap without exactly two grid axes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ablation.report.aggregate import (CONFIDENCE, METRIC_LABELS, TARGET_AUC, ReportData, ScoreSet,
                                       axis_names, grid_axes, history_means)

AUC_AXIS = "test ROC AUC (per beat, unitless)"
PARAMS_AXIS = "student parameters, G + D (count, log scale)"
TEACHER_COLOR = "#222222"
TARGET_COLOR = "#d62728"
MAX_CURVE_POINTS = 1500
CURVE_LEGEND = {"orientation": "v", "x": 0, "y": -0.14, "xanchor": "left", "yanchor": "top"}
MAX_POINT_LABELS = 3  # text labels beside the compression curve's points when at most this many share a size
LOSS_NAMES = {"loss_d": "discriminator loss (loss_d)", "loss_g_rec": "reconstruction loss (loss_g_rec)",
              "loss_g_adv": "adversarial loss (loss_g_adv)"}


@dataclass
class FigureSpec:
    id: str  # the div id on the page
    title: str
    caption: str
    figure: go.Figure | None
    missing: str = ""  # why `figure` is None


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    palette = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
    return {v: palette[i % len(palette)] for i, v in enumerate(variants)}


def _layout(fig: go.Figure, title: str, height: int, **kw) -> go.Figure:
    kw["margin"] = {"l": 70, "r": 30, "t": 70, "b": 60, **kw.get("margin", {})}
    fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left"}, height=height, template="plotly_white",
                      **kw)
    return fig


def _target_line(fig: go.Figure, target: float, **kw) -> None:
    fig.add_hline(y=target, line={"color": TARGET_COLOR, "dash": "dash", "width": 1.5},
                  annotation_text=f"target {target:.2f}", annotation_position="top left", **kw)


def _teacher_lines(fig: go.Figure, teachers: pd.DataFrame, metric: str = "test_auc", **kw) -> None:
    t = teachers.dropna(subset=[metric]) if metric in teachers else teachers.iloc[0:0]
    for size, group in t.groupby("n_params", dropna=False) if len(t) else []:
        what = f"teacher ({int(size):,} params)" if not (isinstance(size, float) and math.isnan(size)) else "teacher"
        n = len(group)
        fig.add_hline(y=float(group[metric].mean()), line={"color": TEACHER_COLOR, "dash": "dot", "width": 1.5},
                      annotation_text=f"{what}: {group[metric].mean():.3f}" + (f" (mean of {n})" if n > 1 else ""),
                      annotation_position="bottom right", **kw)


# ----------------------------------------------------------------------------------------------
def auc_spread(runs: pd.DataFrame, summary: pd.DataFrame, teachers: pd.DataFrame, metric: str = "test_auc",
               target: float = TARGET_AUC) -> go.Figure:
    """Per variant: a box with every run as a point, the mean with its 95 % CI, the target and the teacher."""
    order = list(summary["variant"])
    colors = variant_colors(order)
    fig = go.Figure()
    for v in order:
        y = runs.loc[runs["variant"] == v, metric].dropna()
        fig.add_trace(go.Box(x=[v] * len(y), y=y, name=v, marker_color=colors[v], boxpoints="all", jitter=0.4,
                             pointpos=0, showlegend=False,
                             hovertemplate=f"{v}<br>{METRIC_LABELS.get(metric, metric)} %{{y:.4f}}<extra></extra>"))
    mean, lo, hi = summary[f"{metric}_mean"], summary[f"{metric}_ci_low"], summary[f"{metric}_ci_high"]
    fig.add_trace(go.Scatter(
        x=order, y=mean, mode="markers", name=f"mean with {CONFIDENCE:.0%} CI (t)",
        marker={"symbol": "diamond", "size": 11, "color": "black"},
        error_y={"type": "data", "symmetric": False, "array": (hi - mean).fillna(0), "arrayminus": (mean - lo).fillna(0),
                 "thickness": 2, "width": 8},
        customdata=np.stack([summary["n_runs"], lo, hi], axis=1),
        hovertemplate="%{x}<br>mean %{y:.4f}<br>95% CI [%{customdata[1]:.4f}, %{customdata[2]:.4f}]"
                      "<br>%{customdata[0]} runs<extra></extra>"))
    _target_line(fig, target)
    _teacher_lines(fig, teachers, metric)
    _layout(fig, f"{METRIC_LABELS.get(metric, metric)} per variant: runs, box, mean and {CONFIDENCE:.0%} CI",
            480 + 6 * max(len(v) for v in order), legend={"orientation": "h", "y": 1.08, "x": 1, "xanchor": "right"})
    fig.update_xaxes(title_text="variant (trial name)", tickangle=-30 if len(order) > 4 else 0)
    fig.update_yaxes(title_text=AUC_AXIS if metric == "test_auc" else f"{METRIC_LABELS.get(metric, metric)} (unitless)")
    return fig


def _sorted_values(values: pd.Series) -> list:
    vals = list(pd.unique(values.dropna()))
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=str)


def auc_heatmap(runs: pd.DataFrame, axes: tuple[str, str], metric: str = "test_auc") -> go.Figure:
    """Mean `metric` over axis A (x) x axis B (y), one panel per study variant."""
    a, b = axes
    bases = list(pd.unique(runs["base_variant"]))
    fig = make_subplots(rows=1, cols=len(bases), subplot_titles=[f"variant {v}" for v in bases],
                        horizontal_spacing=0.08)
    cells = runs.groupby(["base_variant", f"axis.{a}", f"axis.{b}"])[metric].agg(["mean", "count"])
    zmin, zmax = float(cells["mean"].min()), float(cells["mean"].max())
    xs, ys = _sorted_values(runs[f"axis.{a}"]), _sorted_values(runs[f"axis.{b}"])
    for i, v in enumerate(bases, start=1):
        z = np.full((len(ys), len(xs)), np.nan)
        text = np.full((len(ys), len(xs)), "", dtype=object)
        for (bv, xa, yb), row in cells.iterrows():
            if bv == v:
                z[ys.index(yb), xs.index(xa)] = row["mean"]
                text[ys.index(yb), xs.index(xa)] = f"{row['mean']:.3f}<br>n={int(row['count'])}"
        fig.add_trace(go.Heatmap(
            z=z, x=[str(x) for x in xs], y=[str(y) for y in ys], text=text, texttemplate="%{text}",
            zmin=zmin, zmax=zmax, colorscale="Viridis", showscale=i == 1,
            colorbar={"title": {"text": f"mean {METRIC_LABELS.get(metric, metric)}"}},
            hovertemplate=f"{a}=%{{x}}<br>{b}=%{{y}}<br>mean %{{z:.4f}}<extra>{v}</extra>"), row=1, col=i)
        fig.update_xaxes(title_text=f"{a}", type="category", row=1, col=i)
        fig.update_yaxes(title_text=f"{b}", type="category", row=1, col=i)
    return _layout(fig, f"Mean {METRIC_LABELS.get(metric, metric)} over {a} x {b} (means over folds and seeds)",
                   460)


def position_map(deltas: pd.DataFrame, baseline: str) -> go.Figure:
    """Net (rows; the discriminator once per input) x block (columns) heatmaps of the paired
    difference to `baseline`, pre and post side by side, validation AUC above test AUC; each cell
    gives the mean difference and its 95 % CI over the (fold, seed) pairs."""
    from ablation.report.positions import MAP_METRICS, net_label
    labels = list(dict.fromkeys(net_label(n, i) for n, i in zip(deltas["net"], deltas["input"])))
    blocks = sorted(deltas["block"].unique())
    titles = [f"Δ {label}, {point}" for label in MAP_METRICS.values() for point in ("pre", "post")]
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, horizontal_spacing=0.1, vertical_spacing=0.16)
    for r, (m, label) in enumerate(MAP_METRICS.items(), start=1):
        bound = float(np.nanmax(np.abs(deltas[f"{m}_delta"]))) if deltas[f"{m}_delta"].notna().any() else 1.0
        for c, point in enumerate(("pre", "post"), start=1):
            z = np.full((len(labels), len(blocks)), np.nan)
            text = np.full(z.shape, "", dtype=object)
            for _, d in deltas[deltas["point"] == point].iterrows():
                i, j = labels.index(net_label(d["net"], d["input"])), blocks.index(d["block"])
                z[i, j] = d[f"{m}_delta"]
                ci = "" if math.isnan(d[f"{m}_ci_low"]) else f"<br>[{d[f'{m}_ci_low']:+.3f}, {d[f'{m}_ci_high']:+.3f}]"
                text[i, j] = f"{d[f'{m}_delta']:+.4f}{ci}"
            fig.add_trace(go.Heatmap(
                z=z, x=[str(b) for b in blocks], y=labels, text=text, texttemplate="%{text}", zmid=0,
                zmin=-bound, zmax=bound, colorscale="RdBu", showscale=c == 2,
                colorbar={"title": {"text": f"Δ {label}"}, "len": 0.4, "y": 0.8 if r == 1 else 0.2},
                hovertemplate=f"%{{y}} block %{{x}} {point}<br>Δ {label} %{{text}}<extra></extra>"), row=r, col=c)
            fig.update_xaxes(title_text="block", type="category", row=r, col=c)
            fig.update_yaxes(title_text="network (input)", type="category", row=r, col=c)
    return _layout(fig, f"Where to distil: Δ AUC over {baseline} per tap (mean over (fold, seed) pairs, 95 % CI)",
                   260 + 90 * 2 * len(labels))


def parallel_axes(runs: pd.DataFrame, metric: str = "test_auc") -> go.Figure:
    """One line per run through its axis values (categorical axes numbered), coloured by `metric`."""
    runs = runs.dropna(subset=[metric])
    dims = []
    names = [a for a in axis_names(runs) if a != "variant"]
    for name in ["variant"] + names:
        col = "base_variant" if name == "variant" else f"axis.{name}"
        if col not in runs:
            continue
        values = runs[col]
        distinct = _sorted_values(values)
        if len(distinct) < 2 and name != "variant":
            continue
        numeric = all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
                      for x in distinct)
        if numeric:
            dims.append({"label": name, "values": values.astype(float),
                         **({"tickvals": distinct} if len(distinct) <= 12 else {})})
        else:
            codes = {x: i for i, x in enumerate(distinct)}
            dims.append({"label": f"{name} (coded)", "values": [codes.get(x, -1) for x in values],
                         "tickvals": list(range(len(distinct))), "ticktext": [str(x)[:24] for x in distinct],
                         "range": [-0.25, len(distinct) - 0.75] if len(distinct) > 1 else [-1, 1]})
    label = METRIC_LABELS.get(metric, metric)
    dims.append({"label": label, "values": runs[metric]})
    fig = go.Figure(go.Parcoords(
        line={"color": runs[metric], "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": {"text": label}}},
        dimensions=dims, labelangle=-15))
    _layout(fig, f"Axes of every run, coloured by {label} (categorical axes numbered; unitless)", 460,
            margin={"l": 90, "r": 90, "t": 110, "b": 40})
    return fig


def thin(*arrays: np.ndarray, n: int = MAX_CURVE_POINTS) -> tuple[np.ndarray, ...]:
    """At most `n` evenly spaced points of equally long curves (m,) each, both ends kept."""
    m = len(arrays[0])
    if m <= n:
        return arrays
    idx = np.unique(np.linspace(0, m - 1, n).round().astype(int))
    return tuple(a[idx] for a in arrays)


def _curve_style(s: ScoreSet, colors: dict[str, str]) -> dict[str, Any]:
    if s.kind == "teacher":
        return {"color": TEACHER_COLOR, "dash": "dash", "width": 2}
    return {"color": colors.get(s.variant, "#888"), "width": 2.5 if s.kind == "baseline" else 2,
            "dash": "dot" if s.kind == "baseline" else "solid"}


def roc_curves(curves: Sequence[ScoreSet], colors: dict[str, str]) -> go.Figure:
    """ROC curves of the given runs from their stored per-beat test scores."""
    from sklearn.metrics import roc_auc_score, roc_curve
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance (AUC 0.5)",
                             line={"color": "#bbbbbb", "dash": "dash", "width": 1}, hoverinfo="skip"))
    for s in curves:
        y, score = s.scores["label"].to_numpy(), s.scores["score"].to_numpy()
        fpr, tpr, _ = roc_curve(y, score)
        fpr, tpr = thin(fpr, tpr)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{s.label}: AUC {roc_auc_score(y, score):.3f}",
                                 line=_curve_style(s, colors),
                                 hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<extra>" + s.label + "</extra>"))
    _layout(fig, "ROC curves (test set, per beat): best 3 variants, baseline and teacher", 640, legend=CURVE_LEGEND,
            margin={"b": 150})
    fig.update_xaxes(title_text="false positive rate (share of normal beats flagged)", range=[0, 1])
    fig.update_yaxes(title_text="true positive rate (share of anomalous beats flagged)", range=[0, 1.02])
    return fig


def pr_curves(curves: Sequence[ScoreSet], colors: dict[str, str]) -> go.Figure:
    """Precision-recall curves of the given runs from their stored per-beat test scores."""
    from sklearn.metrics import average_precision_score, precision_recall_curve
    fig = go.Figure()
    prevalence = None
    for s in curves:
        y, score = s.scores["label"].to_numpy(), s.scores["score"].to_numpy()
        precision, recall, _ = precision_recall_curve(y, score)
        recall, precision = thin(recall, precision)
        prevalence = float(np.mean(y)) if prevalence is None else prevalence
        fig.add_trace(go.Scatter(x=recall, y=precision, mode="lines",
                                 name=f"{s.label}: AP {average_precision_score(y, score):.3f}",
                                 line=_curve_style(s, colors),
                                 hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<extra>" + s.label + "</extra>"))
    if prevalence is not None:
        fig.add_hline(y=prevalence, line={"color": "#bbbbbb", "dash": "dash", "width": 1},
                      annotation_text=f"chance (anomaly share {prevalence:.3f})", annotation_position="bottom left")
    _layout(fig, "Precision-recall curves (test set, per beat): best 3 variants, baseline and teacher", 640,
            legend=CURVE_LEGEND, margin={"b": 150})
    fig.update_xaxes(title_text="recall (share of anomalous beats flagged)", range=[0, 1])
    fig.update_yaxes(title_text="precision (share of flagged beats that are anomalous)", range=[0, 1.02])
    return fig


def _panel_order(metrics: Sequence[str]) -> list[str]:
    first = [m for m in ("val_auc", "val_ap", "loss_d", "loss_g_rec", "loss_g_adv") if m in metrics]
    return first + sorted(m for m in metrics if m not in first)


def _panel_title(metric: str) -> str:
    if metric == "val_auc":
        return "validation AUC"
    if metric == "val_ap":
        return "validation AP"
    return LOSS_NAMES.get(metric, f"distillation term ({metric})")


def training_curves(history: pd.DataFrame, order: Sequence[str]) -> go.Figure:
    """Validation AUC/AP and every loss term per epoch, the mean over a variant's runs."""
    means = history_means(history)
    panels = _panel_order(list(pd.unique(means["metric"])))
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    cells = [[{} if r * cols + c < len(panels) else None for c in range(cols)] for r in range(rows)]
    fig = make_subplots(rows=rows, cols=cols, specs=cells, subplot_titles=[_panel_title(m) for m in panels],
                        vertical_spacing=min(0.12, 0.5 / rows), horizontal_spacing=0.1)
    colors = variant_colors(order)
    for i, m in enumerate(panels):
        r, c = i // cols + 1, i % cols + 1
        for v in order:
            sub = means[(means["metric"] == m) & (means["variant"] == v)].sort_values("step")
            if sub.empty:
                continue
            fig.add_trace(go.Scatter(x=sub["step"], y=sub["value"], mode="lines+markers", name=v, legendgroup=v,
                                     showlegend=i == 0, line={"color": colors[v]}, marker={"size": 4},
                                     customdata=sub["n_runs"],
                                     hovertemplate=f"{v}<br>epoch %{{x}}<br>%{{y:.4g}} (mean of %{{customdata}} runs)"
                                                   "<extra></extra>"), row=r, col=c)
        fig.update_xaxes(title_text="epoch", row=r, col=c)
        fig.update_yaxes(title_text="AUC (unitless)" if m == "val_auc" else "AP (unitless)" if m == "val_ap"
                         else "loss (per batch, unitless)", row=r, col=c)
    return _layout(fig, "Training curves: mean over each variant's runs", 120 + 300 * rows,
                   legend={"title": {"text": "variant"}})


def compression_curve(runs: pd.DataFrame, summary: pd.DataFrame, teachers: pd.DataFrame,
                      metric: str = "test_auc", target: float = TARGET_AUC) -> go.Figure:
    """Mean `metric` (95 % CI) against student size on a log axis; the teacher as a star."""
    colors = variant_colors(list(summary["variant"]))
    fig = go.Figure()
    label = METRIC_LABELS.get(metric, metric)
    pts = runs.dropna(subset=["n_params", metric])
    fig.add_trace(go.Scatter(x=pts["n_params"], y=pts[metric], mode="markers", name="runs",
                             marker={"color": "#999999", "size": 5, "opacity": 0.5},
                             text=pts["variant"], hovertemplate="%{text}<br>%{x:,} params<br>%{y:.4f}<extra></extra>"))
    s = summary.dropna(subset=["n_params", f"{metric}_mean"])
    crowded = s["n_params"].map(s["n_params"].value_counts()) > MAX_POINT_LABELS
    for _, row in s.iterrows():
        mean, lo, hi = row[f"{metric}_mean"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
        fig.add_trace(go.Scatter(
            x=[row["n_params"]], y=[mean], mode="markers" if crowded[row.name] else "markers+text",
            name=row["variant"], text=[row["variant"]],
            textposition="middle right", marker={"size": 11, "color": colors[row["variant"]]},
            error_y={"type": "data", "symmetric": False, "array": [0 if math.isnan(hi) else hi - mean],
                     "arrayminus": [0 if math.isnan(lo) else mean - lo]},
            hovertemplate=f"{row['variant']}<br>%{{x:,}} params<br>mean %{{y:.4f}}<extra></extra>"))
    frontier = s.groupby("n_params")[f"{metric}_mean"].max().sort_index()
    if len(frontier) > 1:
        fig.add_trace(go.Scatter(x=frontier.index, y=frontier.values, mode="lines", name="best mean per size",
                                 line={"color": "#555555", "dash": "dot", "width": 1}, hoverinfo="skip"))
    t = teachers.dropna(subset=["n_params", metric]) if len(teachers) else teachers
    if len(t):
        g = t.groupby("n_params")[metric].mean()
        fig.add_trace(go.Scatter(x=g.index, y=g.values, mode="markers+text", name="teacher", text=["teacher"] * len(g),
                                 textposition="middle left", marker={"symbol": "star", "size": 16, "color": TEACHER_COLOR},
                                 hovertemplate="teacher<br>%{x:,} params<br>%{y:.4f}<extra></extra>"))
    _target_line(fig, target)
    _layout(fig, f"Compression curve: {label} against model size (mean and {CONFIDENCE:.0%} CI per variant)", 520)
    fig.update_xaxes(type="log", title_text=PARAMS_AXIS, tickformat="~s")
    fig.update_yaxes(title_text=AUC_AXIS if metric == "test_auc" else f"{label} (unitless)")
    return fig


# ----------------------------------------------------------------------------------------------
def optuna_figures(study: Any) -> list[FigureSpec]:
    """Optuna's optimisation history, parameter importances and parallel coordinates of a tuned study."""
    import optuna.visualization as ov
    specs = []
    for fid, title, fn, caption in [
        ("fig-optuna-history", "Optuna optimisation history", ov.plot_optimization_history,
         "Objective value of each completed trial and the best so far."),
        ("fig-optuna-importance", "Optuna parameter importances", ov.plot_param_importances,
         "Share of the objective's variance each searched parameter explains (fANOVA)."),
        ("fig-optuna-parcoords", "Optuna parallel coordinates", ov.plot_parallel_coordinate,
         "Searched parameters of every completed trial, coloured by the objective."),
    ]:
        try:
            fig = fn(study)
        except Exception as e:  # too few completed trials, no searched parameters, ...
            specs.append(FigureSpec(fid, title, caption, None, f"not drawn: {type(e).__name__}: {e}"))
            continue
        if not fig.data:
            specs.append(FigureSpec(fid, title, caption, None, "not drawn: no completed trials with parameters"))
            continue
        fig.update_layout(title={"text": f"{title} (study {study.study_name})"}, height=480,
                          template="plotly_white")
        specs.append(FigureSpec(fid, title, caption, fig))
    return specs


def map_runs(data: ReportData) -> pd.DataFrame:
    """The runs the position map reads: a staged study's screen (every tap), else the table's runs."""
    return data.screen if len(data.screen) else data.runs


def position_specs(data: ReportData) -> list[FigureSpec]:
    """The position map, where the study's variants tap feature positions (none otherwise)."""
    from ablation.report.positions import position_deltas
    deltas = position_deltas(map_runs(data), data.baseline)
    if deltas.empty:
        return []
    stage = "the screen's" if len(data.screen) else "the study's"
    return [FigureSpec("fig-positions", "Position map",
                       f"Paired difference to {data.baseline} in validation (top) and test AUC (bottom) per tap, "
                       f"from {stage} runs: pre-activation (left) and post-activation (right) points; each cell "
                       f"gives the mean over the (fold, seed) pairs and its {CONFIDENCE:.0%} t-interval (none "
                       "with one pair). Blue: better than the baseline.", position_map(deltas, data.baseline))]


def figure_specs(data: ReportData) -> list[FigureSpec]:
    """Every figure of the report, in page order."""
    order = list(data.summary["variant"])
    colors = variant_colors(order)
    specs = [FigureSpec("fig-auc", "Test AUC per variant",
                        f"Each point is one run (fold x seed); the diamond is the mean with its {CONFIDENCE:.0%} "
                        "t-interval (absent with one run). Dashed red: the 0.95 target; dotted black: the teacher.",
                        auc_spread(data.runs, data.summary, data.teachers))]
    specs += position_specs(data)
    grid = grid_axes(data.runs)
    heat = "Mean test AUC over the two grid axes, one panel per study variant."
    if len(grid) == 2:
        specs.append(FigureSpec("fig-heatmap", "Grid heatmap", heat, auc_heatmap(data.runs, (grid[0], grid[1]))))
    else:
        specs.append(FigureSpec("fig-heatmap", "Grid heatmap", heat, None,
                                f"not drawn: the study has {len(grid)} grid axes besides variant, fold and seed "
                                f"({', '.join(grid) or 'none'}); a heatmap needs exactly two"))
    specs.append(FigureSpec("fig-parcoords", "Parallel coordinates over the axes",
                            "One line per run through its axis values; categorical axes are numbered (labels on "
                            "the ticks); axes with a single value are left out.", parallel_axes(data.runs)))
    if data.curves:
        cap = ("One representative run per variant (fold 0 / seed 0, else the first), from the per-beat test scores "
               "stored with the run; the legend gives the area computed from those scores.")
        specs.append(FigureSpec("fig-roc", "ROC curves", cap, roc_curves(data.curves, colors)))
        specs.append(FigureSpec("fig-pr", "Precision-recall curves", cap, pr_curves(data.curves, colors)))
    else:
        for fid, title in (("fig-roc", "ROC curves"), ("fig-pr", "Precision-recall curves")):
            specs.append(FigureSpec(fid, title, "", None, "not drawn: no stored per-beat test scores"))
    if len(data.history):
        specs.append(FigureSpec("fig-training", "Training curves",
                                "Per-epoch validation AUC/AP and every loss term logged, averaged over the runs of "
                                "each variant (loss terms are per-batch means over the epoch).",
                                training_curves(data.history, order)))
    else:
        specs.append(FigureSpec("fig-training", "Training curves", "", None, "not drawn: no per-epoch metrics"))
    if data.summary["n_params"].notna().any():
        specs.append(FigureSpec("fig-compression", "Test AUC against student size",
                                "Mean test AUC (95 % CI) per variant at its parameter count (generator + "
                                "discriminator); grey: single runs; star: the teacher.",
                                compression_curve(data.runs, data.summary, data.teachers)))
    else:
        specs.append(FigureSpec("fig-compression", "Test AUC against student size", "", None,
                                "not drawn: no parameter counts recorded"))
    if data.optuna_study is not None:
        specs += optuna_figures(data.optuna_study)
    return specs
