"""Train / validation / test splits of the beats.

``beatgan`` (Zhou et al. 2019): N beats, shuffled with a seed, are cut into 5 contiguous folds; fold k
is test-N; the other 80 % is split 90/10 into train and val-N. Anomalies never train: of each of
S, V, F, Q, 10 % go to validation and 90 % to test.

``interpatient`` (de Chazal et al., IEEE TBME 2004): records of DS1 train (their N beats, 90/10 into
train and val-N; DS1's anomalies join validation), records of DS2 are the test set: unseen patients.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ablation.config import DataConfig
from ablation.data.mitdb import CLASSES, Beats

DS1 = [101, 106, 108, 109, 112, 114, 115, 116, 118, 119, 122, 124, 201, 203, 205, 207, 208, 209, 215,
       220, 223, 230]
DS2 = [100, 103, 105, 111, 113, 117, 121, 123, 200, 202, 210, 212, 213, 214, 219, 221, 222, 228, 231,
       232, 233, 234]
N = CLASSES.index("N")


@dataclass
class Split:
    """Index arrays into a `Beats` object. Train holds N beats only."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self, beats: Beats) -> dict[str, dict[str, int]]:
        return {name: {c: int((beats.label[idx] == k).sum()) for k, c in enumerate(CLASSES)}
                for name, idx in (("train", self.train), ("val", self.val), ("test", self.test))}


def _cut(idx: np.ndarray, frac: float) -> tuple[np.ndarray, np.ndarray]:
    k = int(round(len(idx) * frac))
    return idx[:k], idx[k:]


def beatgan_split(beats: Beats, fold: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    n_idx = rng.permutation(np.flatnonzero(beats.label == N))
    folds = np.array_split(n_idx, 5)
    test_n = folds[fold]
    rest = rng.permutation(np.concatenate([f for i, f in enumerate(folds) if i != fold]))
    val_n, train = _cut(rest, 0.1)
    val, test = [val_n], [test_n]
    for k in range(1, len(CLASSES)):
        a = rng.permutation(np.flatnonzero(beats.label == k))
        v, t = _cut(a, 0.1)
        val.append(v)
        test.append(t)
    return Split(train=train, val=np.concatenate(val), test=np.concatenate(test))


def interpatient_split(beats: Beats, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    ds1 = np.isin(beats.record, DS1)
    n1 = rng.permutation(np.flatnonzero(ds1 & (beats.label == N)))
    val_n, train = _cut(n1, 0.1)
    val = np.concatenate([val_n, np.flatnonzero(ds1 & (beats.label != N))])
    test = np.flatnonzero(np.isin(beats.record, DS2))
    return Split(train=train, val=val, test=test)


def _subsample(idx: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    return idx if cap is None or len(idx) <= cap else np.sort(rng.choice(idx, cap, replace=False))


def make_split(beats: Beats, cfg: DataConfig) -> Split:
    """The split of `cfg`, with the CPU-scale caps applied (train beats, val beats of each of N and
    anomalies), all seeded by ``cfg.split_seed``."""
    split = (beatgan_split(beats, cfg.fold, cfg.split_seed) if cfg.split == "beatgan"
             else interpatient_split(beats, cfg.split_seed))
    rng = np.random.default_rng(cfg.split_seed + 1)
    train = _subsample(split.train, cfg.train_subset, rng)
    val = split.val
    if cfg.val_subset is not None:
        is_n = beats.label[val] == N
        val = np.concatenate([_subsample(val[is_n], cfg.val_subset, rng),
                              _subsample(val[~is_n], cfg.val_subset, rng)])
    return Split(train=train, val=val, test=split.test)
