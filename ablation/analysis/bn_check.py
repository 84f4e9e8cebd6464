"""Which BatchNorm statistics a trained generator is scored with, and what that does to its AUC.

BeatGAN's reference code (``experiments/ecg/model.py``) validates without ``.eval()``: every
validation batch of 64 shuffled beats is normalised by its own statistics (anomalies included), and
those passes also overwrite the running statistics that the test, in eval mode, then uses. We
validate and test in eval mode with statistics from training beats. `bn_modes` scores one generator
both ways, so the effect of that protocol detail is measured rather than assumed:

- ``val`` / ``test``: eval mode, the stored running statistics (what this platform reports);
- ``val_batch_stats`` / ``test_batch_stats``: train-mode BN, statistics of each shuffled batch
  (the reference's validation);
- ``test_bn_from_val``: running statistics recomputed on the validation beats, then eval mode
  (roughly the reference's test after its last validation);
- ``test_bn_from_train``: running statistics recomputed on the training beats (all of them, exact
  average), then eval mode.

Every value is a ROC AUC; all scoring is per-beat mean squared reconstruction error.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ablation.data.dataset import DataBundle
from ablation.models.beatgan import Generator, anomaly_score
from ablation.train.evaluate import scores


def _shuffled_batches(x: torch.Tensor, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Indices of x in shuffled batches of `batch_size` (the last one may be short)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return list(perm.split(batch_size))


@torch.no_grad()
def batch_stat_scores(G: Generator, x: torch.Tensor, batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """Scores with train-mode BN: each shuffled batch normalised by its own statistics. (n,)."""
    G = copy.deepcopy(G).train()
    out = np.empty(len(x), dtype=np.float32)
    for idx in _shuffled_batches(x, batch_size, seed):
        xb = x[idx]
        out[idx.numpy()] = anomaly_score(xb, G(xb)[0]).float().cpu().numpy()
    return out


def with_bn_from(G: Generator, x: torch.Tensor, batch_size: int = 64, seed: int = 0) -> Generator:
    """A copy of G whose BN running statistics are the exact average over `x`, in eval mode."""
    G = copy.deepcopy(G)
    batches = [x[idx] for idx in _shuffled_batches(x, batch_size, seed)]
    torch.optim.swa_utils.update_bn(batches, G)
    return G.eval()


def bn_modes(G: Generator, data: DataBundle, seed: int = 0) -> dict[str, float]:
    """ROC AUC of G on validation and test under each BN treatment listed in the module docstring."""
    if data.test is None:
        raise ValueError("bn_modes needs the test set (the data bundle was built without it)")
    val, test = data.val, data.test

    def auc(y, s) -> float:
        return float(roc_auc_score(y, s))

    return {
        "val": auc(val.y, scores(G, val.x)),
        "test": auc(test.y, scores(G, test.x)),
        "val_batch_stats": auc(val.y, batch_stat_scores(G, val.x, seed=seed)),
        "test_batch_stats": auc(test.y, batch_stat_scores(G, test.x, seed=seed)),
        "test_bn_from_val": auc(test.y, scores(with_bn_from(G, val.x, seed=seed), test.x)),
        "test_bn_from_train": auc(test.y, scores(with_bn_from(G, data.train, seed=seed), test.x)),
    }
