"""Ensembles of trained detectors, on stored checkpoints (no retraining).

Members are checkpoints: runs of different seeds (a seed ensemble) or the snapshots one run kept
(``train.snapshots``, a snapshot ensemble). Each member's reconstruction score is standardised by
its mean and sd over the validation set's normal beats, so members on different scales weigh the
same, and the ensemble's score is the mean of the members' standardised scores (Lakshminarayanan
et al., NeurIPS 2017, average members' outputs; here their anomaly scores). `curve` reports the
ensemble of the first K members for every K, so a table shows how AUC grows with K.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ablation.data.dataset import DataBundle
from ablation.models.beatgan import BeatGAN
from ablation.train.evaluate import metrics
from ablation.train.scores import score_sets


@dataclass
class Member:
    name: str
    val: np.ndarray  # (n_val,) standardised scores
    test: np.ndarray  # (n_test,)


def member(name: str, model: BeatGAN, data: DataBundle, score_feat_weight: float | None = None,
           batch_size: int = 2048) -> Member:
    """Score the validation and test sets with `model` (under its run's score function),
    standardised on the validation normals."""
    val, test = (s.astype(np.float64) for s in score_sets(model.G, model.D, data, score_feat_weight, batch_size, True))
    ref = val[data.val.y == 0]
    mu, sd = ref.mean(), max(ref.std(), 1e-12)
    return Member(name, (val - mu) / sd, (test - mu) / sd)


def curve(members: list[Member], data: DataBundle) -> list[dict]:
    """One row per K = 1..len(members): validation AUC and test AUC / AP / F1 of the mean of the
    first K members' standardised scores (K = 1 is the first member alone)."""
    rows = []
    for k in range(1, len(members) + 1):
        val = np.mean([m.val for m in members[:k]], axis=0)
        test = np.mean([m.test for m in members[:k]], axis=0)
        t = metrics(data.test.y, test)
        rows.append({"k": k, "members": " ".join(m.name for m in members[:k]),
                     "val_auc": metrics(data.val.y, val)["auc"],
                     "test_auc": t["auc"], "test_ap": t["ap"], "test_f1": t["f1"]})
    return rows
