"""Score functions beyond the reconstruction error, on a trained G and D.

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
added as z_rec + w * z_extra (`combine`). ``train.score_feat_weight: w`` makes training select its
checkpoints by z_rec + w z_feat and report it (`score_sets`); `ablation.analysis.rescore` chooses
w for stored checkpoints.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ablation.data.dataset import DataBundle
from ablation.models.beatgan import Discriminator, Generator, anomaly_score
from ablation.train.evaluate import scores

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
