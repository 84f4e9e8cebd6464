"""A run's training state, saved at the end of every epoch, so that a run cut short (a session's
end, SIGKILL, a reboot) continues from its last finished epoch and ends with the same bits as a run
that was never stopped.

What a BeatGAN run changes as it trains: the weights and BN statistics of G and D, both Adam
states, the lr schedules, the distillation terms' own modules and state (connectors, the latent
projection, the normalising scales fixed at the first batch), the averaged G, the kept checks
(`ablation.train.checkpoints`), the epoch history, and two random streams: the loop's generator
(batch order, time warp) and torch's global one (D's re-initialisation, Anobeat's prior samples).
All of it goes into one file, written under a temporary name and renamed over the last one, so a
kill during the write leaves the previous epoch's state. The file holds tensors, numbers, strings
and containers only: it is read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ablation.errors import BadInput
from ablation.train.checkpoints import Checkpoints


@dataclass
class Saved:
    """Where a resumed run starts: `epoch` epochs done, their `history` rows, `seconds` trained."""
    epoch: int
    history: list[dict[str, float]]
    seconds: float


class Resume:
    """The state file of one run (`key`: its run key, checked on load: a file of another run is never read).

    `parts` maps a name to each object with ``state_dict`` / ``load_state_dict`` that training
    changes (modules, optimisers, schedulers); `kept` the checks; `gen` the loop's generator."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key

    def save(self, epoch: int, parts: dict[str, Any], kept: Checkpoints, gen: torch.Generator,
             history: list[dict[str, float]], seconds: float) -> None:
        state = {"key": self.key, "epoch": epoch, "history": history, "seconds": seconds,
                 "parts": {name: p.state_dict() for name, p in parts.items()},
                 "kept": kept.state(), "rng": _rng_state(gen)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self, parts: dict[str, Any], kept: Checkpoints, gen: torch.Generator) -> Saved | None:
        """Restore `parts`, `kept` and the random streams from the file; None when there is no
        state of this run to resume (no file, or one of another key)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: nothing of it is used
            return self._discard(f"unreadable ({type(e).__name__})")
        if state.get("key") != self.key:
            return None
        if set(state["parts"]) != set(parts) or not all(_fits(p, state["parts"][n]) for n, p in parts.items()):
            return self._discard("saved by code whose modules differ from this run's")
        try:
            for name, p in parts.items():
                p.load_state_dict(state["parts"][name])
        except (RuntimeError, ValueError, KeyError) as e:
            self.clear()  # the parts may be half restored: this attempt cannot go on, the next starts afresh
            raise BadInput(f"{self.path}: a saved state that does not fit this run "
                           f"({' '.join(str(e).split())[:160]}); removed, run it again to start over") from e
        kept.restore(state["kept"])
        _set_rng_state(gen, state["rng"])
        return Saved(state["epoch"], state["history"], state["seconds"])

    def _discard(self, why: str) -> None:
        print(f"warning: {self.path}: {why}; the run starts from epoch 0", file=sys.stderr)
        self.clear()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _fits(part: Any, saved: dict) -> bool:
    """Whether a saved state has the part's entries, and its tensors the part's shapes."""
    now = part.state_dict()
    return set(now) == set(saved) and all(
        not isinstance(v, torch.Tensor) or (isinstance(saved[k], torch.Tensor) and v.shape == saved[k].shape)
        for k, v in now.items())


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"loop": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["loop"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
