"""Score functions beyond the reconstruction error, on stored checkpoints (no retraining).

BeatGAN scores a beat by its reconstruction error. Three residuals from the literature can be
added to it, each from one more pass of a network the model already has. Per beat x (nc, 320):

    rec(x)     = mean((x - G(x))^2)                       BeatGAN's score
    feat(x)    = mean((f_D(x) - f_D(G(x)))^2)             f_D: D's block-4 features after the
                 activation (f-AnoGAN's izi_f, Schlegl et al. 2019; Anobeat's multi-feature constraint)
    latent(x)  = mean((E(x) - E(G(x)))^2)                 E: G's encoder, the latent consistency of
                 GANomaly (Akcay et al., ACCV 2018)
    window(x)  = max_t mean_{t..t+31}((x - G(x))^2)        the largest local error over 32 samples
                 (89 ms, about a QRS complex): an abnormal P wave or QRS is diluted in a mean over 320
                 samples; a max over a localised error map, as image anomaly detectors score

Each is standardised by its mean and sd over the validation set's normal beats, and one is
added as z_rec + w * z_extra. `rescore` chooses w on validation AUC from `WEIGHTS` for each extra
(w = 0 is BeatGAN's score, up to a monotone map: the same AUC) and scores the test set once, at
it; and names the score (rec alone or one extra at its weight) with the best validation AUC.
``train.score_feat_weight: w`` makes training select its checkpoints by z_rec + w z_feat and
report it (`score_sets`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ablation.data.dataset import DataBundle
from ablation.models.beatgan import BeatGAN, Discriminator, Generator, anomaly_score
from ablation.train.evaluate import metrics, scores

WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
WINDOW = 32  # samples of the local error window (360 Hz)


def _feat(G: Generator, D: Discriminator, x: torch.Tensor, recon: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (D(x)[1] - D(recon)[1]).pow(2).flatten(1).mean(1)


def _latent(G: Generator, D: Discriminator, x: torch.Tensor, recon: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (z - G.encoder(recon)).pow(2).flatten(1).mean(1)


def _window(G: Generator, D: Discriminator, x: torch.Tensor, recon: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    err = (x - recon).pow(2).mean(1, keepdim=True)  # (n, 1, 320): the error over the leads
    return F.avg_pool1d(err, WINDOW, stride=1).flatten(1).amax(1)


EXTRAS: dict[str, Callable[..., torch.Tensor]] = {"feat": _feat, "latent": _latent, "window": _window}
"""The residuals that can be added to BeatGAN's score: (G, D, x, G(x), E(x)) -> (n,)."""


@torch.no_grad()
def components(G: Generator, D: Discriminator, x: torch.Tensor, extras: tuple[str, ...] = ("feat",), *,
               batch_size: int = 2048) -> np.ndarray:
    """(n, 1 + len(extras)): the reconstruction error and each extra residual of each beat, in eval
    mode. x: (n, nc, 320)."""
    modes = (G.training, D.training)
    G.eval()
    D.eval()
    out = []
    for xb in x.split(batch_size):
        recon, z = G(xb)
        out.append(torch.stack([anomaly_score(xb, recon), *(EXTRAS[e](G, D, xb, recon, z) for e in extras)], 1))
    G.train(modes[0])
    D.train(modes[1])
    return torch.cat(out).double().cpu().numpy()


def combine(c: np.ndarray, ref: np.ndarray, w) -> np.ndarray:
    """z_rec + sum_i w_i z_extra_i, each column standardised by `ref` (the validation normals'
    components); `w`: one weight per extra column (a number when there is one)."""
    z = (c - ref.mean(0)) / np.maximum(ref.std(0), 1e-12)
    return z[:, 0] + z[:, 1:] @ np.broadcast_to(np.asarray(w, dtype=float), (z.shape[1] - 1,))


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
    val = components(G, D, val_x, batch_size=batch_size)
    ref = val[data.val.y == 0]
    test = combine(components(G, D, test_x, batch_size=batch_size), ref, weight) if test_x is not None else None
    return combine(val, ref, weight), test


def _only(i: int, n: int, w: float) -> np.ndarray:
    """Weights for `combine` over n extra columns: w on column i, 0 on the others."""
    return np.eye(n)[i] * w


def _choose(val: np.ndarray, ref: np.ndarray, y: np.ndarray, i: int) -> tuple[float, dict[float, float]]:
    """The weight of extra column i (the others at 0) with the best validation AUC (ties: the
    smaller weight) and the validation AUC at every weight."""
    val_auc = {w: metrics(y, combine(val, ref, _only(i, val.shape[1] - 1, w)))["auc"] for w in WEIGHTS}
    return max(WEIGHTS, key=lambda w: (val_auc[w], -w)), val_auc


def rescore(model: BeatGAN, data: DataBundle, batch_size: int = 2048) -> dict[str, float | str]:
    """For each extra residual `name`: `name_weight` chosen on validation, `name_val_auc`, and
    `name_test_auc` / `name_test_ap` at it; `best_score` is the score with the best validation AUC
    (`rec`: BeatGAN's own, kept on ties) and `test_auc_best` its test AUC. `weight`, `val_auc_w*`
    and `*_chosen` repeat the D-feature residual's (the columns of the earlier tables)."""
    extras = tuple(EXTRAS)
    val = components(model.G, model.D, data.val.x, extras, batch_size=batch_size)
    test = components(model.G, model.D, data.test.x, extras, batch_size=batch_size)
    ref = val[data.val.y == 0]
    plain = metrics(data.test.y, combine(test, ref, 0.0), data.test.cls)
    val_plain = metrics(data.val.y, combine(val, ref, 0.0))["auc"]
    out: dict[str, float | str] = {"val_auc_plain": val_plain, "test_auc_plain": plain["auc"], "test_ap_plain": plain["ap"]}
    best = (val_plain, "rec", plain)
    for i, name in enumerate(extras):
        w, val_auc = _choose(val, ref, data.val.y, i)
        chosen = metrics(data.test.y, combine(test, ref, _only(i, len(extras), w)), data.test.cls)
        out.update({f"{name}_weight": w, f"{name}_val_auc": val_auc[w], f"{name}_test_auc": chosen["auc"],
                    f"{name}_test_ap": chosen["ap"]})
        if name == "feat":
            out.update({"weight": w, "val_auc_chosen": val_auc[w], **{f"val_auc_w{v:g}": a for v, a in val_auc.items()},
                        "test_auc_chosen": chosen["auc"], "test_ap_chosen": chosen["ap"]})
        if val_auc[w] > best[0]:
            best = (val_auc[w], name, chosen)
    return {**out, "best_score": best[1], "best_val_auc": best[0], "test_auc_best": best[2]["auc"],
            "test_ap_best": best[2]["ap"]}
