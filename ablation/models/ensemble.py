"""A teacher made of several trained BeatGANs (an ensemble of seeds), for distillation.

Its generator returns the members' mean reconstruction (the anomaly score KD reads is that mean's
error) and its discriminator the members' mean logit: what output KD compares (``recon``,
``score_kl``, ``score_nce``, ``disc``). It exposes no taps: independently trained members' feature
maps do not correspond channel by channel, nor do their latent codes, so feature terms and
``latent`` KD are refused for an ensemble when the config loads.
"""
from __future__ import annotations

import torch
from torch import nn

from ablation.models.beatgan import BeatGAN


class EnsembleG(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def nz(self) -> int:
        """The first member's latent width (the latent it returns)."""
        return self.members[0].nz

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nc, 320) -> (mean reconstruction (B, nc, 320), the first member's latent (B, nz, 1))."""
        outs = [g(x) for g in self.members]
        return torch.stack([r for r, _ in outs]).mean(0), outs[0][1]


class EnsembleD(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nc, 320) -> (mean logit (B,), mean last features (B, C, 10))."""
        outs = [d(x) for d in self.members]
        return torch.stack([lg for lg, _ in outs]).mean(0), torch.stack([f for _, f in outs]).mean(0)


def ensemble(models: list[BeatGAN]) -> BeatGAN:
    """One teacher from several: a single model is returned as it is."""
    if len(models) == 1:
        return models[0]
    return BeatGAN(EnsembleG([m.G for m in models]), EnsembleD([m.D for m in models]))
