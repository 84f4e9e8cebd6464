"""Feature-distillation positions: which network, block and point a term taps, and in which
optimiser step its gradient belongs.

A position ``<net>.<block>.<point>`` (see `ablation.models.beatgan`) is tapped on an input:

- ``enc`` / ``dec`` on the real beat: the student generator's own pass; the term joins G's step.
- ``disc`` on ``fake`` (the student's reconstruction): the student D's pass in G's step, whose
  gradient flows through the reconstruction into G (D's weights are frozen there). Its target is
  the teacher D on the same reconstruction, or (``self_real``) the student D on the real beat,
  the earlier project's set-up.
- ``disc`` on ``real``: the student D's pass in D's step; the term trains the student D.
"""
from __future__ import annotations

from dataclasses import dataclass

from ablation.models.beatgan import TAP_NAMES


@dataclass(frozen=True)
class Position:
    net: str
    block: int
    point: str
    input: str

    @classmethod
    def parse(cls, tap: str, input: str) -> "Position":
        if tap not in TAP_NAMES:
            raise ValueError(f"unknown position {tap!r}; valid positions: {', '.join(TAP_NAMES)}")
        net, block, point = tap.split(".")
        if net != "disc" and input != "real":
            raise ValueError(f"position {tap!r}: the generator only sees real beats; use input: real")
        return cls(net, int(block), point, input)

    @property
    def tap(self) -> str:
        return f"{self.net}.{self.block}.{self.point}"

    @property
    def key(self) -> str:
        """The key of this tap in the training loop's tap dicts (``<input>:<tap>``)."""
        return f"{self.input}:{self.tap}"

    @property
    def step(self) -> str:
        return "D" if (self.net == "disc" and self.input == "real") else "G"
