"""Anobeat's networks (Ou et al., IEEE DSC 2020): BeatGAN's generator (encoder E, decoder), a beat
discriminator, and a latent discriminator on the encoder's codes.

Shapes for a beat of 320 samples (ndf = ngf = 32, nz = 50):

    G        x (B, nc, 320) -> (reconstruction (B, nc, 320), code E(x) (B, nz, 1)): BeatGAN's Generator
    D        x (B, nc, 320) -> (logit (B,), features (B, 16 ndf, 10)): BeatGAN's Discriminator layout
    D.latent z (B, nz, 1)   -> logit (B,): nz -> 4 ndf -> 4 ndf -> 1, LeakyReLU(0.2), prior N(0, I)

Taps: every BeatGAN position (``enc``, ``dec``, ``disc``; `ablation.models.beatgan`), from the same
modules, so feature distillation reads them as it reads a BeatGAN's. The latent discriminator has
no taps: no position names it, and a term can only ask for a position its families declare.
The paper does not publish its layer sizes; the convolutional networks are BeatGAN's, which it
builds on and compares with, so that the latent regularisation is the one change between families.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ablation.models import register_family
from ablation.models.anobeat.step import AnobeatStep
from ablation.models.beatgan import TAP_NAMES, BeatGAN, Discriminator, Generator, Widths, init_weights


class LatentDiscriminator(nn.Module):
    """An MLP telling prior samples z ~ N(0, I) from codes E(x) (the adversarial autoencoder's
    latent discriminator, Makhzani et al. 2016, which Anobeat adopts)."""

    def __init__(self, nz: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(nz, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, nz, 1) -> logit (B,)."""
        return self.net(z.flatten(1)).flatten()


class AnobeatD(Discriminator):
    """Anobeat's two discriminators in one module (one optimiser, one checkpoint entry): the beat
    discriminator is BeatGAN's (its forward, its ``disc`` taps), `latent` the latent one."""

    def __init__(self, nc: int, ndf: int, nz: int):
        super().__init__(nc, ndf)
        self.latent = LatentDiscriminator(nz, 4 * ndf)


@register_family("anobeat")
@dataclass
class Anobeat(BeatGAN):
    """G and the two discriminators built from a ModelConfig: the ``anobeat`` family."""

    G: Generator
    D: AnobeatD
    taps: ClassVar[tuple[str, ...]] = tuple(TAP_NAMES)
    train_fields: ClassVar[tuple[str, ...]] = ("w_latent",)
    step: ClassVar[type[AnobeatStep]] = AnobeatStep

    @classmethod
    def build(cls, cfg: Widths, nc: int) -> "Anobeat":
        """G and D of widths ``cfg.ndf``, ``cfg.ngf``, ``cfg.nz`` for ``nc`` leads; convolutions with
        BeatGAN's initialisation, the latent discriminator with PyTorch's default."""
        model = cls(Generator(nc, cfg.ndf, cfg.ngf, cfg.nz), AnobeatD(nc, cfg.ndf, cfg.nz))
        model.G.apply(init_weights)
        model.D.apply(init_weights)
        return model
