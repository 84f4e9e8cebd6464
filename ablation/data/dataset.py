"""The tensors a run trains and evaluates on: beats of a split, moved to the device once."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ablation.config import DataConfig
from ablation.data.mitdb import CLASSES, Beats, Protocol, load_beats
from ablation.data.splits import Split, make_split


@dataclass
class EvalSet:
    """x: (n, nc, 320); y: (n,) 1 = anomaly; cls: (n,) class index into CLASSES."""

    x: torch.Tensor
    y: np.ndarray
    cls: np.ndarray


@dataclass
class DataBundle:
    train: torch.Tensor  # (n, nc, 320), N beats only
    val: EvalSet
    test: EvalSet | None  # None for tuning trials: no test beat may reach a search
    fingerprint: str
    sizes: dict
    beats: Beats | None = field(default=None, repr=False, compare=False)  # the beats it was cut from

    def for_config(self, cfg: DataConfig) -> "DataBundle":
        """The bundle of another run's data config cut from the same beats (a teacher's full
        validation set and its own training subset, say): itself where `cfg` selects the same split."""
        if self.beats is None:
            raise ValueError("this DataBundle does not hold the beats it was cut from; build it with load_data")
        return bundle(self.beats, make_split(self.beats, cfg), cfg.nc, self.test is not None)


def bundle(beats: Beats, split: Split, nc: int, with_test: bool = True) -> DataBundle:
    def take(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(beats.x[idx, :nc]))

    def evalset(idx: np.ndarray) -> EvalSet:
        cls = beats.label[idx].astype(np.int64)
        return EvalSet(take(idx), (cls != CLASSES.index("N")).astype(np.int64), cls)

    return DataBundle(take(split.train), evalset(split.val), evalset(split.test) if with_test else None,
                      beats.fingerprint, split.sizes(beats), beats)


def load_data(cfg: DataConfig, mitdb: str | None = None, beats: Beats | None = None,
              progress: bool = True, with_test: bool = True) -> DataBundle:
    """The split of `cfg` as tensors. `beats` replaces the records (synthetic data in tests);
    ``with_test=False`` leaves the test set out entirely (tuning)."""
    if beats is None:
        beats = load_beats(Protocol(cfg.rpeak_check, cfg.rpeak_detector), mitdb, progress=progress)
    return bundle(beats, make_split(beats, cfg), cfg.nc, with_test)
