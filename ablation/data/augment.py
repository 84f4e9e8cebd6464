"""BeatGAN's time-warp augmentation of training beats (Zhou et al., IJCAI 2019, section 4.3).

For each beat, 7 random ticks in [0, 140) and 7 in [140, 319) get a midpoint inserted after
them, and 7 + 7 other ticks of the same ranges are deleted, so the length stays 320: the beat
is stretched in some places and compressed in others, on both sides of the R-peak (tick 140).
The reference augments a fixed copy of the training set (``n_aug`` copies per beat, 3 in the
paper's table); here fresh warps are drawn every step for a chosen fraction of the batch.
"""
from __future__ import annotations

import torch

SPLIT = 140  # the annotated beat's position in the window [-140, +180)
N_WARP = 7  # ticks stretched (and as many deleted) on each side of SPLIT


def _pick(n: int, lo: int, hi: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2 * N_WARP) distinct ticks in [lo, hi) per row: first half stretched, second half deleted."""
    return torch.rand(n, hi - lo, generator=generator).argsort(dim=1)[:, : 2 * N_WARP] + lo


def source_positions(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(n, length) fractional positions in the original beat that each output tick reads from."""
    ticks = torch.cat([_pick(n, 0, SPLIT, generator), _pick(n, SPLIT, length - 1, generator)], dim=1)
    up = torch.cat([ticks[:, :N_WARP], ticks[:, 2 * N_WARP: 3 * N_WARP]], dim=1)
    down = torch.cat([ticks[:, N_WARP: 2 * N_WARP], ticks[:, 3 * N_WARP:]], dim=1)
    copies = torch.ones(n, length, dtype=torch.long)  # output ticks produced by each input tick
    copies.scatter_(1, up, 2)
    copies.scatter_(1, down, 0)
    start = copies.cumsum(1) - copies  # where each input tick's first output lands
    tick = torch.arange(length, dtype=torch.float32).expand(n, length)
    pos = torch.zeros(n, length)
    kept = copies > 0
    rows = torch.arange(n).unsqueeze(1).expand(n, length)
    pos[rows[kept], start[kept]] = tick[kept]
    stretched = copies == 2
    pos[rows[stretched], start[stretched] + 1] = tick[stretched] + 0.5  # the inserted midpoint
    return pos


def time_warp(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Warped copies of beats x: (B, C, L) -> (B, C, L); midpoints are the mean of two neighbours."""
    b, c, length = x.shape
    pos = source_positions(b, length, generator).to(x.device)
    left = pos.floor().long()
    frac = (pos - left).unsqueeze(1).to(x.dtype)
    right = (left + 1).clamp(max=length - 1)
    gather = lambda i: x.gather(2, i.unsqueeze(1).expand(b, c, length))  # noqa: E731
    return gather(left) * (1 - frac) + gather(right) * frac


def warp_fraction(x: torch.Tensor, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x with a random `fraction` of its beats time-warped, the (B,) bool mask of those beats on
    x's device, or None when none was warped)."""
    if fraction <= 0:
        return x, None
    chosen = torch.rand(len(x), generator=generator) < fraction  # drawn on the host: no device sync
    if not chosen.any():
        return x, None
    chosen = chosen.to(x.device)
    out = x.clone()
    out[chosen] = time_warp(x[chosen], generator)
    return out, chosen
