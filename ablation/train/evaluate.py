"""Anomaly scores and the metrics of BeatGAN's evaluation: ROC AUC, AP, best F1, per-class AUC."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from ablation.data.mitdb import CLASSES
from ablation.models.beatgan import Generator, anomaly_score


@torch.no_grad()
def scores(G: Generator, x: torch.Tensor, batch_size: int = 2048) -> np.ndarray:
    """Per-beat anomaly score (mean squared reconstruction error) in eval mode. x: (n, nc, 320) -> (n,)."""
    was_training = G.training
    G.eval()
    out = [anomaly_score(xb, G(xb)[0]) for xb in x.split(batch_size)]
    G.train(was_training)
    return torch.cat(out).float().cpu().numpy()


@torch.no_grad()
def reconstruct(G: Generator, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructions (n, nc, 320) and anomaly scores (n,) of beats x (n, nc, 320) in eval mode (a few beats)."""
    was_training = G.training
    G.eval()
    recon = G(x)[0]
    G.train(was_training)
    return recon.float().cpu().numpy(), anomaly_score(x, recon).float().cpu().numpy()


def best_f1(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """The highest F1 over all thresholds, and the threshold that gives it (score >= threshold)."""
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[i]), float(thresholds[i]) if len(thresholds) else float("nan")


def metrics(y: np.ndarray, s: np.ndarray, cls: np.ndarray | None = None) -> dict[str, float]:
    """auc, ap, f1, f1_threshold, and auc_<C> (N against class C only) for C in S, V, F, Q."""
    if len(np.unique(y)) < 2:
        raise ValueError("metrics need both normal and anomalous beats")
    f1, thr = best_f1(y, s)
    out = {"auc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s)),
           "f1": f1, "f1_threshold": thr}
    if cls is not None:
        normal = cls == CLASSES.index("N")
        for k, c in enumerate(CLASSES[1:], start=1):
            sel = normal | (cls == k)
            if (cls == k).any():
                out[f"auc_{c}"] = float(roc_auc_score(y[sel], s[sel]))
    return out
