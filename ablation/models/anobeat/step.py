"""One Anobeat update (Ou et al., IEEE DSC 2020): BeatGAN's D and G steps (`ablation.train.step.Step`)
with the latent discriminator trained beside the beat discriminator in the D step and the
encoder's latent adversarial term added in the G step (`ablation.models.anobeat.loss`)."""
from __future__ import annotations

import torch

from ablation.models.anobeat import loss
from ablation.train.step import Step


class AnobeatStep(Step):
    """`Step` with Anobeat's objective; ``train.w_latent`` weighs the encoder's latent term.
    Logged: ``loss_d``, ``loss_dz`` (latent D), ``loss_g_rec``, ``loss_g_adv``, ``loss_g_latent``."""

    def __init__(self, G_run, D_run, D, opt_g, opt_d, terms, tc, *rest):
        super().__init__(G_run, D_run, D, opt_g, opt_d, terms, tc, *rest)
        self.w_latent = tc.w_latent

    def d_objective(self, logit_real: torch.Tensor, logit_fake: torch.Tensor,
                    latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """BeatGAN's D term and the latent D's on prior samples and the detached codes (B, nz, 1)."""
        prior = torch.randn_like(latent)
        return {**super().d_objective(logit_real, logit_fake, latent),
                "dz": loss.d_latent(self.D.latent(prior), self.D.latent(latent))}

    def d_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return terms["d"] + terms["dz"]

    def g_objective(self, x: torch.Tensor, fake: torch.Tensor, latent: torch.Tensor, feat_fake: torch.Tensor,
                    feat_real: torch.Tensor) -> dict[str, torch.Tensor]:
        """BeatGAN's G terms and the encoder's latent term on its codes (B, nz, 1); D is frozen here."""
        return {**super().g_objective(x, fake, latent, feat_fake, feat_real),
                "g_latent": loss.g_latent(self.D.latent(latent))}

    def g_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """rec + w_adv * adv + w_latent * latent."""
        return super().g_loss(terms) + self.w_latent * terms["g_latent"]
