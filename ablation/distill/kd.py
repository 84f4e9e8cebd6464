"""Output knowledge distillation for a reconstruction-based anomaly detector: one small class per
kind, one registry (`KD_KINDS`).

BeatGAN has no class logits, so "outputs" are what it does produce on a batch of beats: the per-beat
anomaly scores (B,), the reconstruction (B, C, 320), the latent code (B, nz) and the
discriminator's logit (B,). Each kind declares in which step its term is added (``"G"`` or ``"D"``),
what it reads of the teacher and of the student, and whether an ensemble teacher may stand in; it
compares student and teacher outputs computed on the same beats in the same step; the teacher side
is a constant target. Temperatures follow Hinton et al. (2015): terms on softened distributions are
multiplied by T^2 so that their gradient scale does not shrink with T.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablation.registry import Registry

KD_KINDS: Registry[type["KD"]] = Registry("KD kind")
register_kd = KD_KINDS.register
EPS = 1e-12


@dataclass
class Outputs:
    """One network pair's outputs on a batch. score (B,), recon (B, C, L), latent (B, nz),
    logit_real / logit_fake (B,): the discriminator on the real beats / on the student's
    reconstructions. Fields a kind does not need may be None."""

    score: Tensor | None = None
    recon: Tensor | None = None
    latent: Tensor | None = None
    logit_real: Tensor | None = None
    logit_fake: Tensor | None = None


class KD(nn.Module):
    """Base class. ``step`` is the optimiser step the term joins; ``T`` the temperature; ``reads``
    the teacher outputs the term needs, by teacher pass (``G:real``: G on the real beats; ``D:real``,
    ``D:fake``: D on the real beats / on the student's reconstructions): the Distiller runs exactly
    those passes; ``student_reads`` the student's `Outputs` fields, built in the term's step;
    ``ensemble_ok`` whether a mean of teachers (``distill.teacher_seeds``) gives a meaningful target."""

    name: ClassVar[str] = ""
    step: ClassVar[str] = "G"
    uses_T: ClassVar[bool] = False  # whether ``T`` changes the term (else it leaves the run's identity)
    reads: ClassVar[dict[str, tuple[str, ...]]] = {}
    student_reads: ClassVar[tuple[str, ...]] = ()
    ensemble_ok: ClassVar[bool] = True

    def __init__(self, T: float, s_nz: int, t_nz: int):
        super().__init__()
        self.T = T

    def forward(self, s: Outputs, t: Outputs) -> Tensor:
        raise NotImplementedError


@register_kd("none")
class NoKD(KD):
    """No output distillation (the baseline student)."""


@register_kd("score_kl")
class ScoreKL(KD):
    """KL(p_t || p_s) * T^2 with p = softmax(z / T) over the B beats of the batch, where
    z = score / sd(teacher's scores in the batch): both sides divided by the same constant.

    The earlier project's idea (Hinton et al. 2015 applied to the vector of anomaly scores),
    computed here differentiably and on the very same beats for teacher and student. Why the
    scale: BeatGAN's scores are per-beat MSEs of about 1e-2, so softmax(score / T) is uniform to
    first order for every T >= 1, and T^2 * KL then reduces to half the batch variance of
    (s_s - s_t) whatever T is. Dividing by the teacher's spread puts the scores on unit scale,
    where T sets how soft the distribution over beats is (softmax is shift-invariant, so only the
    scale matters). The teacher's sd is a constant (detached): the gradient reaches the student
    through its own scores only. score_nce needs no such step: its y^(1/T) is a softmax of
    log-scores, whose spread is already of order one.
    """

    uses_T = True
    reads = {"G:real": ("out:score",)}
    student_reads = ("score",)

    def forward(self, s: Outputs, t: Outputs) -> Tensor:
        t_score = t.score.detach()
        scale = t_score.std(unbiased=False).clamp_min(EPS) * self.T
        log_ps = F.log_softmax(s.score / scale, dim=0)
        log_pt = F.log_softmax(t_score / scale, dim=0)
        return (log_pt.exp() * (log_pt - log_ps)).sum() * self.T ** 2


def power_log_normalise(y: Tensor, T: float) -> Tensor:
    """log of y'(i) = y(i)^(1/T) / sum_j y(j)^(1/T), for positive y (B,) -> (B,)."""
    z = torch.log(y.clamp_min(EPS)) / T
    return z - torch.logsumexp(z, dim=0)


@register_kd("score_nce")
class ScoreNCE(KD):
    """-sum_i y'_t(i) log y'_s(i), y' = y^(1/T) / sum y^(1/T) over the batch's anomaly scores.

    The modified cross-entropy of Learning without Forgetting (Li & Hoiem, ECCV 2016), as the
    earlier project used it (without T^2, as in LwF).
    """

    uses_T = True
    reads = {"G:real": ("out:score",)}
    student_reads = ("score",)

    def forward(self, s: Outputs, t: Outputs) -> Tensor:
        return -(power_log_normalise(t.score.detach(), self.T).exp() * power_log_normalise(s.score, self.T)).sum()


@register_kd("recon")
class Recon(KD):
    """MSE between the student's and the teacher's reconstructions of the same beats (B, C, L)."""

    reads = {"G:real": ("out:recon",)}
    student_reads = ("recon",)

    def forward(self, s: Outputs, t: Outputs) -> Tensor:
        return F.mse_loss(s.recon, t.recon.detach())


@register_kd("latent")
class Latent(KD):
    """MSE between latent codes (B, nz); a learned linear map nz_s -> nz_t when sizes differ."""

    reads = {"G:real": ("out:latent",)}
    student_reads = ("latent",)
    ensemble_ok = False  # the members' latent codes do not correspond

    def __init__(self, T: float, s_nz: int, t_nz: int):
        super().__init__(T, s_nz, t_nz)
        self.proj = nn.Linear(s_nz, t_nz, bias=False) if s_nz != t_nz else nn.Identity()

    def forward(self, s: Outputs, t: Outputs) -> Tensor:
        return F.mse_loss(self.proj(s.latent), t.latent.detach())


def binary_kl(s_logit: Tensor, t_logit: Tensor, T: float) -> Tensor:
    """Mean over beats of KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))), times T^2. (B,), (B,) -> ()."""
    p = torch.sigmoid(t_logit.detach() / T)
    log_p, log_1mp = F.logsigmoid(t_logit.detach() / T), F.logsigmoid(-t_logit.detach() / T)
    log_q, log_1mq = F.logsigmoid(s_logit / T), F.logsigmoid(-s_logit / T)
    return (p * (log_p - log_q) + (1 - p) * (log_1mp - log_1mq)).mean() * T ** 2


@register_kd("disc")
class Disc(KD):
    """Binary KD of the discriminator's logit with temperature, on the real beats and on the
    student's reconstructions: the student D learns the teacher D's soft verdicts (D step)."""

    step = "D"
    uses_T = True
    reads = {"D:real": ("out:logit_real",), "D:fake": ("out:logit_fake",)}
    student_reads = ("logit_real", "logit_fake")

    def forward(self, s: Outputs, t: Outputs) -> Tensor:
        return binary_kl(s.logit_real, t.logit_real, self.T) + binary_kl(s.logit_fake, t.logit_fake, self.T)
