"""Score functions beyond the reconstruction error, on stored checkpoints (no retraining).

f-AnoGAN (Schlegl et al., Medical Image Analysis 2019) scores a sample by its residual plus the
residual of the discriminator's features; Anobeat's multi-feature constraint is the same idea for
ECG. For BeatGAN, per beat x:

    rec(x)  = mean((x - G(x))^2)                         BeatGAN's score
    feat(x) = mean((f_D(x) - f_D(G(x)))^2)               f_D: D's features, block 4 after its activation

Both are standardised by their mean and sd over the validation set's normal beats, and combined as
z_rec + w * z_feat. `rescore` chooses w on validation AUC from `WEIGHTS` for a stored model (w = 0
is BeatGAN's score, up to a monotone map: the same AUC) and scores the test set once, at it.
``train.score_feat_weight: w`` makes training select its checkpoints by this score and report it
(`score_sets`).
"""
from __future__ import annotations

import numpy as np
import torch

from ablation.data.dataset import DataBundle
from ablation.models.beatgan import BeatGAN, Discriminator, Generator, anomaly_score
from ablation.train.evaluate import metrics, scores

WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


@torch.no_grad()
def components(G: Generator, D: Discriminator, x: torch.Tensor, batch_size: int = 2048) -> np.ndarray:
    """(n, 2): the reconstruction and the D-feature residual of each beat, in eval mode. x: (n, nc, 320)."""
    modes = (G.training, D.training)
    G.eval()
    D.eval()
    out = []
    for xb in x.split(batch_size):
        recon, _ = G(xb)
        f_real, f_fake = D(xb)[1], D(recon)[1]
        out.append(torch.stack([anomaly_score(xb, recon), (f_real - f_fake).pow(2).flatten(1).mean(1)], 1))
    G.train(modes[0])
    D.train(modes[1])
    return torch.cat(out).double().cpu().numpy()


def combine(c: np.ndarray, ref: np.ndarray, w: float) -> np.ndarray:
    """z_rec + w z_feat, each standardised by `ref` (the validation normals' components)."""
    z = (c - ref.mean(0)) / np.maximum(ref.std(0), 1e-12)
    return z[:, 0] + w * z[:, 1]


def score_sets(G: Generator, D: Discriminator, data: DataBundle, weight: float | None, batch_size: int = 2048,
               with_test: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Validation scores (n_val,) and, `with_test`, test scores (n_test,) of one model: BeatGAN's
    reconstruction MSE when `weight` is None, else z_rec + weight * z_feat standardised on the
    validation normals (`train.score_feat_weight`)."""
    device = next(G.parameters()).device
    val_x = data.val.x.to(device)
    test_x = data.test.x.to(device) if with_test and data.test is not None else None
    if weight is None:
        return scores(G, val_x, batch_size), (scores(G, test_x, batch_size) if test_x is not None else None)
    val = components(G, D, val_x, batch_size)
    ref = val[data.val.y == 0]
    test = combine(components(G, D, test_x, batch_size), ref, weight) if test_x is not None else None
    return combine(val, ref, weight), test


def rescore(model: BeatGAN, data: DataBundle, batch_size: int = 2048) -> dict[str, float]:
    """Validation AUC at every weight, the weight chosen on it, and test metrics at w = 0 and at it."""
    val = components(model.G, model.D, data.val.x, batch_size)
    test = components(model.G, model.D, data.test.x, batch_size)
    ref = val[data.val.y == 0]
    val_auc = {w: metrics(data.val.y, combine(val, ref, w))["auc"] for w in WEIGHTS}
    best = max(WEIGHTS, key=lambda w: (val_auc[w], -w))  # ties: the smaller weight
    plain, chosen = (metrics(data.test.y, combine(test, ref, w), data.test.cls) for w in (0.0, best))
    return {"weight": best, "val_auc_plain": val_auc[0.0], "val_auc_chosen": val_auc[best],
            **{f"val_auc_w{w:g}": v for w, v in val_auc.items()},
            "test_auc_plain": plain["auc"], "test_ap_plain": plain["ap"],
            "test_auc_chosen": chosen["auc"], "test_ap_chosen": chosen["ap"]}
