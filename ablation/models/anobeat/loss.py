"""Anobeat's latent-space terms (Ou et al., IEEE DSC 2020), added to BeatGAN's objective
(`ablation.train.objective`: the beat discriminator's BCE, G's reconstruction MSE and feature
matching on the beat discriminator's last features, Anobeat's "multi-feature constraint"):

    D_z:  BCE(D_z(z), 1) + BCE(D_z(E(x)), 0),   z ~ N(0, I)     the latent discriminator
    E:    w_latent * BCE(D_z(E(x)), 1)                          the encoder fools it

The adversarial autoencoder's regularisation (Makhzani et al., ICLR workshop 2016): codes of normal
beats are pushed toward the prior, so a beat whose code falls outside it decodes badly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def d_latent(logit_prior: torch.Tensor, logit_code: torch.Tensor) -> torch.Tensor:
    """The latent discriminator's loss from its logits on prior samples (B,) and on codes (B,)."""
    return (F.binary_cross_entropy_with_logits(logit_prior, torch.ones_like(logit_prior))
            + F.binary_cross_entropy_with_logits(logit_code, torch.zeros_like(logit_code)))


def g_latent(logit_code: torch.Tensor) -> torch.Tensor:
    """The encoder's adversarial term from the latent discriminator's logits on its codes (B,)."""
    return F.binary_cross_entropy_with_logits(logit_code, torch.ones_like(logit_code))
