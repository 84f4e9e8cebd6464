"""Checkpoint selection: the best validation check, patience, and a snapshot ensemble's members.

Every validation check offers the evaluated weights. The best by validation AUC is the run's
checkpoint; `stale` counts checks since the last new best (``train.patience``). With
``train.snapshots`` = k > 1 the k best checks at least ``train.snapshot_gap`` epochs apart are
kept too (a snapshot ensemble, Huang et al., ICLR 2017, selected by validation rather than by
lr cycle): a new check closer than the gap to a kept one replaces it only when it is better, so
the members are not k neighbouring checks of one plateau.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch


@dataclass
class Snapshot:
    auc: float  # validation AUC of the check
    epoch: int  # epoch during which it was taken (0-based)
    at: float  # epochs trained at the check
    val: dict[str, float]
    state: dict  # {"G": state_dict, "D": state_dict}


class Checkpoints:
    """The best check so far (`best`), the checks since it (`stale`), and the kept `snapshots`
    (best first, at most `keep`, pairwise >= `gap` epochs apart; the best is always the first)."""

    def __init__(self, keep: int = 1, gap: float = 0.0):
        self.keep, self.gap = max(1, keep), gap
        self.snapshots: list[Snapshot] = []
        self.stale = 0

    @property
    def best(self) -> Snapshot | None:
        return self.snapshots[0] if self.snapshots else None

    def offer(self, val: dict[str, float], epoch: int, at: float, G: torch.nn.Module, D: torch.nn.Module) -> bool:
        """Consider one check (validation metrics `val` of G, D after `at` epochs); True when it is the new best."""
        self.stale += 1
        new_best = self.best is None or val["auc"] > self.best.auc
        if new_best:
            self.stale = 0
        near = [s for s in self.snapshots if abs(s.at - at) < self.gap]
        if not self._admits(val["auc"], near):
            return new_best
        snap = Snapshot(val["auc"], epoch, at, val, {"G": copy.deepcopy(G.state_dict()),
                                                     "D": copy.deepcopy(D.state_dict())})
        kept = [s for s in self.snapshots if s not in near] + [snap]
        self.snapshots = sorted(kept, key=lambda s: -s.auc)[: self.keep]
        return new_best

    def state(self) -> dict:
        """What `restore` takes back (for `ablation.train.resume`): plain containers and tensors."""
        return {"stale": self.stale, "snapshots": [dict(vars(s)) for s in self.snapshots]}

    def restore(self, state: dict) -> None:
        self.stale = state["stale"]
        self.snapshots = [Snapshot(**s) for s in state["snapshots"]]

    def _admits(self, auc: float, near: list[Snapshot]) -> bool:
        if near:  # replaces its neighbours only when better than all of them
            return all(auc > s.auc for s in near)
        return len(self.snapshots) < self.keep or auc > self.snapshots[-1].auc
