"""One BeatGAN update: a D step, then a G step with D frozen, each with its distillation terms.

`Step` is BeatGAN's (Zhou et al., IJCAI 2019); a family with other losses subclasses it and
overrides `d_objective`, `d_loss`, `g_objective`, `g_loss` (Anobeat's: `ablation.models.anobeat.step`), so the passes,
the distillation terms and the optimiser updates stay one code path for every family."""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from ablation.train import objective


class Terms(Protocol):
    """Distillation plugged into the step (see `ablation.distill.distiller.Distiller`)."""

    def g_terms(self, x: torch.Tensor, fake: torch.Tensor, latent: torch.Tensor,
                taps: dict[str, torch.Tensor], idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Terms added to G's loss. taps: ``real:enc.*``, ``real:dec.*`` (student G on x),
        ``fake:disc.*`` (student D on G(x), differentiable into G), ``real:disc.*`` (no grad)."""

    def d_terms(self, x: torch.Tensor, fake: torch.Tensor, taps: dict[str, torch.Tensor],
                idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Terms added to D's loss. taps: ``real:disc.*`` and ``fake:disc.*`` (fake detached from G);
        idx (B,): the batch's indices into the training set, -1 for a beat that was augmented."""

    def g_parameters(self) -> list[torch.nn.Parameter]: ...

    def d_parameters(self) -> list[torch.nn.Parameter]: ...


def tap_dict(**by_input: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Merge tap dicts under keys ``<input>:<tap>``, e.g. ``fake:disc.3.pre``."""
    return {f"{inp}:{k}": v for inp, taps in by_input.items() for k, v in taps.items()}


class Step:
    """Updates D then G on one batch and returns the batch's losses (detached, on the device):
    ``loss_<name>`` for each term the objectives name (BeatGAN: d, g_rec, g_adv) and each distillation term.

    `G_run`/`D_run` are the modules called (compiled or not), `D` the one whose gradients are
    switched off during G's step; `tc` the run's `TrainConfig` (loss weights); `after_g` runs after
    each G update (the EMA of G's weights)."""

    def __init__(self, G_run, D_run, D: torch.nn.Module, opt_g, opt_d, terms: Terms | None, tc,
                 real_target: torch.Tensor, amp: Callable, after_g: Callable[[], None] | None = None):
        self.G_run, self.D_run, self.D = G_run, D_run, D
        self.opt_g, self.opt_d, self.terms, self.w_adv = opt_g, opt_d, terms, tc.w_adv
        self.real_target, self.amp, self.after_g = real_target, amp, after_g

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, nc, L) beats; idx (B,) their indices into the training set (-1: augmented)."""
        g_taps: dict[str, torch.Tensor] = {}
        with self.amp():
            fake, latent = self.G_run(x, g_taps)
        d_logged, d_extra = self._d_step(x, fake, latent, idx)
        g_logged, g_extra = self._g_step(x, fake, latent, g_taps, idx)
        return {**{f"loss_{k}": v.detach() for k, v in {**d_logged, **g_logged}.items()},
                **{f"loss_{k}": v.detach() for k, v in {**d_extra, **g_extra}.items()}}

    def d_objective(self, logit_real: torch.Tensor, logit_fake: torch.Tensor,
                    latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """BeatGAN's D term from D's logits on real (B,) and reconstructed (B,) beats (eq. 3); the
        latent (B, nz, 1), detached, is not read here. {name: term}, each logged as ``loss_<name>``."""
        return {"d": objective.d_adversarial(logit_real, logit_fake, self.real_target)}

    def d_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """D's loss from its terms."""
        return terms["d"]

    def g_objective(self, x: torch.Tensor, fake: torch.Tensor, latent: torch.Tensor, feat_fake: torch.Tensor,
                    feat_real: torch.Tensor) -> dict[str, torch.Tensor]:
        """BeatGAN's G terms: MSE(fake, x) over (B, nc, L) and feature matching of D's last features
        (B, C, l) on fake and real beats (eqs. 4-5). {name: term}, each logged as ``loss_<name>``."""
        return {"g_rec": objective.g_reconstruction(fake, x), "g_adv": objective.g_adversarial(feat_fake, feat_real)}

    def g_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """G's loss from its terms: rec + w_adv * adv (eq. 6)."""
        return terms["g_rec"] + self.w_adv * terms["g_adv"]

    def _d_step(self, x, fake, latent, idx):
        d_real: dict[str, torch.Tensor] = {}
        d_fake: dict[str, torch.Tensor] = {}
        with self.amp():
            logit_real, _ = self.D_run(x, d_real)
            logit_fake, _ = self.D_run(fake.detach(), d_fake)
            logged = self.d_objective(logit_real, logit_fake, latent.detach())
            extra = (self.terms.d_terms(x, fake.detach(), tap_dict(real=d_real, fake=d_fake), idx)
                     if self.terms else {})
            loss = self.d_loss(logged) + sum(extra.values())
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return logged, extra

    def _g_step(self, x, fake, latent, g_taps, idx):
        self.D.requires_grad_(False)  # D frozen: no weight gradients computed for it
        g_fake: dict[str, torch.Tensor] = {}
        g_real: dict[str, torch.Tensor] = {}
        with self.amp():
            _, feat_fake = self.D_run(fake, g_fake)
            with torch.no_grad():
                _, feat_real = self.D_run(x, g_real)
            logged = self.g_objective(x, fake, latent, feat_fake, feat_real)
            extra = (self.terms.g_terms(x, fake, latent, tap_dict(real={**g_taps, **g_real}, fake=g_fake), idx)
                     if self.terms else {})
            loss = self.g_loss(logged) + sum(extra.values())  # summed after the terms are built: the same graph as ever
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        if self.after_g:
            self.after_g()
        self.D.requires_grad_(True)
        return logged, extra
