"""The figures of one run's MLflow page: ROC and PR curves on test, the score distribution per
class with the run's threshold, and a grid of fixed test beats with their reconstructions.

Pure numpy -> Plotly: `ablation.run` computes the arrays, `ablation.tracking.log_figures` logs
them. The beats of the grid are `pick_beats` of the test split's classes: the split is a function
of the fold (and split seed) only, so every run of a fold shows the same beats.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ablation.data.mitdb import AFTER, BEFORE, CLASSES, FS
from ablation.report.figures import thin

BEATS_PER_CLASS = 2
CLASS_COLORS = {"N": "#1f77b4", "S": "#ff7f0e", "V": "#d62728", "F": "#9467bd", "Q": "#8c564b"}
BEAT_COLOR, RUN_COLOR, TEACHER_COLOR = "#222222", "#1f77b4", "#d62728"
HIST_BINS = 60
MS = ((np.arange(BEFORE + AFTER) - BEFORE) * 1000 / FS).astype(np.float32)  # (320,) ms from the R peak


@dataclass
class BeatViews:
    """The grid's beats: index (k,) into the test set, cls (k,) class indices, x (k, 320) lead 0,
    recon (k, 320) and score (k,: reconstruction MSE) of the run; teacher_recon (k, 320) and
    teacher_score (k,) for a student."""

    index: np.ndarray
    cls: np.ndarray
    x: np.ndarray
    recon: np.ndarray
    score: np.ndarray
    teacher_recon: np.ndarray | None = None
    teacher_score: np.ndarray | None = None


def pick_beats(cls: np.ndarray, per_class: int = BEATS_PER_CLASS) -> np.ndarray:
    """Indices into a test set whose classes are cls (n,): for each class present, `per_class`
    of its beats evenly spaced through the split's order (the first, ..., the last), class by
    class in CLASSES order. The same split gives the same beats. -> (k,) int, k <= 5 per_class."""
    out = []
    for c in range(len(CLASSES)):
        members = np.flatnonzero(cls == c)
        if len(members):
            out.append(members[np.unique(np.linspace(0, len(members) - 1, per_class).round().astype(int))])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _layout(fig: go.Figure, title: str, height: int, **kw) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left"}, height=height, template="plotly_white",
                      margin={"l": 70, "r": 30, "t": 70, "b": 60}, **kw)
    return fig


def roc_figure(y: np.ndarray, score: np.ndarray, threshold: float) -> go.Figure:
    """ROC curve of the per-beat scores (n,) against labels y (n,), with the threshold's point."""
    fpr, tpr, _ = roc_curve(y, score)
    fpr, tpr = thin(fpr, tpr)
    flagged = score >= threshold
    at = (flagged[y == 0].mean(), flagged[y == 1].mean())
    fig = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance (AUC 0.5)", hoverinfo="skip",
                   line={"color": "#bbbbbb", "dash": "dash", "width": 1}),
        go.Scatter(x=fpr, y=tpr, mode="lines", name=f"this run: AUC {roc_auc_score(y, score):.4f}",
                   line={"color": RUN_COLOR, "width": 2}, hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<extra></extra>"),
        go.Scatter(x=[at[0]], y=[at[1]], mode="markers", name=f"F1-best threshold {threshold:.4g}",
                   marker={"color": TEACHER_COLOR, "size": 10})])
    _layout(fig, f"ROC curve on test ({len(y):,} beats, {int(y.sum()):,} anomalous)", 520)
    fig.update_xaxes(title_text="false positive rate (share of normal beats flagged)", range=[0, 1])
    fig.update_yaxes(title_text="true positive rate (share of anomalous beats flagged)", range=[0, 1.02])
    return fig


def pr_figure(y: np.ndarray, score: np.ndarray, threshold: float) -> go.Figure:
    """Precision-recall curve of the per-beat scores (n,) against labels y (n,), with the threshold's point."""
    precision, recall, _ = precision_recall_curve(y, score)
    recall, precision = thin(recall, precision)
    flagged = score >= threshold
    p_at, r_at = y[flagged].mean(), flagged[y == 1].mean()
    fig = go.Figure([
        go.Scatter(x=recall, y=precision, mode="lines", name=f"this run: AP {average_precision_score(y, score):.4f}",
                   line={"color": RUN_COLOR, "width": 2},
                   hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<extra></extra>"),
        go.Scatter(x=[r_at], y=[p_at], mode="markers", marker={"color": TEACHER_COLOR, "size": 10},
                   name=f"F1-best threshold {threshold:.4g}: F1 {2 * p_at * r_at / max(p_at + r_at, 1e-12):.4f}")])
    fig.add_hline(y=float(y.mean()), line={"color": "#bbbbbb", "dash": "dash", "width": 1},
                  annotation_text=f"chance (anomaly share {y.mean():.3f})", annotation_position="bottom left")
    _layout(fig, "Precision-recall curve on test", 520)
    fig.update_xaxes(title_text="recall (share of anomalous beats flagged)", range=[0, 1])
    fig.update_yaxes(title_text="precision (share of flagged beats that are anomalous)", range=[0, 1.02])
    return fig


def _bin_edges(score: np.ndarray) -> tuple[np.ndarray, bool]:
    """HIST_BINS + 1 edges over the scores (n,): geometric when all are positive (reconstruction
    errors span decades), else linear; and whether they are geometric."""
    lo, hi = float(score.min()), float(score.max())
    if lo > 0 and hi > lo:
        return np.geomspace(lo, hi, HIST_BINS + 1), True
    return np.linspace(lo, hi if hi > lo else lo + 1, HIST_BINS + 1), False


def score_distribution(score: np.ndarray, cls: np.ndarray, threshold: float) -> go.Figure:
    """The scores (n,) of each class (cls (n,) class indices) as a share of that class's beats per
    bin, one line per class, and the run's threshold as a vertical line."""
    edges, geometric = _bin_edges(score)
    centers = np.sqrt(edges[:-1] * edges[1:]) if geometric else (edges[:-1] + edges[1:]) / 2
    fig, top = go.Figure(), 0.0
    for c, name in enumerate(CLASSES):
        s = score[cls == c]
        if len(s):
            share = np.histogram(s, edges)[0] / len(s)
            top = max(top, float(share.max()))
            fig.add_trace(go.Scatter(x=centers, y=share, mode="lines", line={"shape": "hvh", "color": CLASS_COLORS[name]},
                                     name=f"{name}: {len(s):,} beats, {(s >= threshold).mean():.1%} above the threshold",
                                     hovertemplate=f"{name}<br>score %{{x:.4g}}<br>share %{{y:.3f}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[threshold, threshold], y=[0, top], mode="lines", hoverinfo="skip",
                             name=f"F1-best threshold {threshold:.4g}", line={"color": "#444444", "dash": "dash"}))
    _layout(fig, "Anomaly scores on test per class (share of each class's beats per bin)", 520)
    fig.update_xaxes(title_text="anomaly score" + (" (log scale)" if geometric else ""),
                     type="log" if geometric else "linear")
    fig.update_yaxes(title_text="share of the class's beats")
    return fig


def _beat_title(v: BeatViews, i: int) -> str:
    text = f"{CLASSES[v.cls[i]]}, test beat {v.index[i]}<br>MSE {v.score[i]:.2g}"
    return text + (f", teacher {v.teacher_score[i]:.2g}" if v.teacher_score is not None else "")


def beat_grid(v: BeatViews) -> go.Figure:
    """One column per class, two rows per beat of it: the beat (lead 0) with the run's (and the
    teacher's) reconstruction, then the residuals beat - reconstruction."""
    classes = list(dict.fromkeys(v.cls.tolist()))
    slot = {i: (int((v.cls[:i] == v.cls[i]).sum()), classes.index(v.cls[i])) for i in range(len(v.index))}
    per_class = max(j for j, _ in slot.values()) + 1 if slot else 1
    titles = [""] * (2 * per_class * len(classes))
    for i, (j, col) in slot.items():
        titles[2 * j * len(classes) + col] = _beat_title(v, i)
    fig = make_subplots(rows=2 * per_class, cols=max(len(classes), 1), shared_xaxes=True, subplot_titles=titles,
                        vertical_spacing=0.08, horizontal_spacing=0.04)
    lines = [("beat", v.x, BEAT_COLOR, None), ("this run", v.recon, RUN_COLOR, "dot"),
             ("teacher", v.teacher_recon, TEACHER_COLOR, "dash")]
    for i, (j, col) in slot.items():
        first = i == 0
        for name, arr, color, dash in lines:
            if arr is None:
                continue
            fig.add_trace(go.Scatter(x=MS, y=arr[i], mode="lines", name=name, legendgroup=name, showlegend=first,
                                     line={"color": color, "width": 1.5, "dash": dash}), row=2 * j + 1, col=col + 1)
            if name != "beat":
                fig.add_trace(go.Scatter(x=MS, y=v.x[i] - arr[i], mode="lines", name=f"residual, {name}",
                                         legendgroup=f"r{name}", showlegend=first, line={"color": color, "width": 1}),
                              row=2 * j + 2, col=col + 1)
    for r in range(per_class):
        fig.update_yaxes(title_text="amplitude", row=2 * r + 1, col=1)
        fig.update_yaxes(title_text="residual", row=2 * r + 2, col=1)
    fig.update_xaxes(title_text="ms from the R peak", row=2 * per_class)
    who = "this run's and its teacher's" if v.teacher_recon is not None else "this run's"
    _layout(fig, f"Fixed test beats of the fold (lead 0), {who} reconstructions, residuals below",
            300 * per_class + 160, legend={"orientation": "h", "x": 0, "y": -60 / (300 * per_class), "yanchor": "top"})
    fig.update_layout(margin={"t": 100, "b": 110})
    fig.update_annotations(font_size=10)
    return fig
