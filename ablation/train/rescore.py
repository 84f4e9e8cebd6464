"""Score functions beyond the reconstruction error, on stored checkpoints (no retraining).

f-AnoGAN (Schlegl et al., Medical Image Analysis 2019) scores a sample by its residual plus the
residual of the discriminator's features; Anobeat's multi-feature constraint is the same idea for
ECG. For BeatGAN, per beat x:

    rec(x)  = mean((x - G(x))^2)                         BeatGAN's score
    feat(x) = mean((f_D(x) - f_D(G(x)))^2)               f_D: D's features, block 4 after its activation

Both are standardised by their mean and sd over the validation set's normal beats, and combined as
z_rec + w * z_feat, with w chosen on validation AUC from `WEIGHTS` (w = 0 is BeatGAN's score, up to
a monotone map: the same AUC). The test set is scored once, at the chosen w.
"""
from __future__ import annotations

import numpy as np
import torch

from ablation.data.dataset import DataBundle
from ablation.models.beatgan import BeatGAN, anomaly_score
from ablation.train.evaluate import metrics

WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


@torch.no_grad()
def components(model: BeatGAN, x: torch.Tensor, batch_size: int = 2048) -> np.ndarray:
    """(n, 2): the reconstruction and the D-feature residual of each beat, in eval mode. x: (n, nc, 320)."""
    modes = (model.G.training, model.D.training)
    model.G.eval()
    model.D.eval()
    out = []
    for xb in x.split(batch_size):
        recon, _ = model.G(xb)
        f_real, f_fake = model.D(xb)[1], model.D(recon)[1]
        out.append(torch.stack([anomaly_score(xb, recon), (f_real - f_fake).pow(2).flatten(1).mean(1)], 1))
    model.G.train(modes[0])
    model.D.train(modes[1])
    return torch.cat(out).double().cpu().numpy()


def combine(c: np.ndarray, ref: np.ndarray, w: float) -> np.ndarray:
    """z_rec + w z_feat, each standardised by `ref` (the validation normals' components)."""
    z = (c - ref.mean(0)) / np.maximum(ref.std(0), 1e-12)
    return z[:, 0] + w * z[:, 1]


def rescore(model: BeatGAN, data: DataBundle, batch_size: int = 2048) -> dict[str, float]:
    """Validation AUC at every weight, the weight chosen on it, and test metrics at w = 0 and at it."""
    val, test = components(model, data.val.x, batch_size), components(model, data.test.x, batch_size)
    ref = val[data.val.y == 0]
    val_auc = {w: metrics(data.val.y, combine(val, ref, w))["auc"] for w in WEIGHTS}
    best = max(WEIGHTS, key=lambda w: (val_auc[w], -w))  # ties: the smaller weight
    plain, chosen = (metrics(data.test.y, combine(test, ref, w), data.test.cls) for w in (0.0, best))
    return {"weight": best, "val_auc_plain": val_auc[0.0], "val_auc_chosen": val_auc[best],
            **{f"val_auc_w{w:g}": v for w, v in val_auc.items()},
            "test_auc_plain": plain["auc"], "test_ap_plain": plain["ap"],
            "test_auc_chosen": chosen["auc"], "test_ap_chosen": chosen["ap"]}
