"""BeatGAN's objective (Zhou et al., IJCAI 2019, eqs. 3-6), as anomalib keeps a model's loss:

    D:  BCE(D(x), r) + BCE(D(G(x)), 0)
    G:  MSE(G(x), x) + w_adv * MSE(f_D(G(x)), f_D(x))

r is 1 (the paper) or ``train.d_real_label`` (one-sided label smoothing); f_D is D's last feature
map. Distillation terms are added to these by `ablation.train.step.Step`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def d_adversarial(logit_real: torch.Tensor, logit_fake: torch.Tensor, real_target: torch.Tensor) -> torch.Tensor:
    """D's loss from its logits on real (B,) and on reconstructed (B,) beats."""
    return (F.binary_cross_entropy_with_logits(logit_real, real_target)
            + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake)))


def g_reconstruction(fake: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the reconstruction (B, nc, L) against the beats (B, nc, L)."""
    return F.mse_loss(fake, x)


def g_adversarial(feat_fake: torch.Tensor, feat_real: torch.Tensor) -> torch.Tensor:
    """Feature matching on D's last feature map (B, C, l): G's adversarial term."""
    return F.mse_loss(feat_fake, feat_real)
