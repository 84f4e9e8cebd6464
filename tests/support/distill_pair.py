"""A tiny teacher-student pair and the loop's G and D steps up to the distillation terms, for
tests that look at a term's value and gradient (the way `ablation.train.step.Step` computes them)."""
from __future__ import annotations

import torch

from ablation.config import DistillConfig, ModelConfig, RunConfig, from_dict
from ablation.data.synthetic import synthetic_beats
from ablation.distill.distiller import Distiller
from ablation.models.beatgan import BeatGAN
from ablation.train.step import tap_dict
from support.tiny import TINY_MODEL

STUDENT = TINY_MODEL
TEACHER = {"ndf": 8, "ngf": 8, "nz": 16}  # every width differs: connectors and the latent projection are used



def distill_cfg(kd: str = "none", features: list[dict] | None = None, **extra) -> DistillConfig:
    """A DistillConfig loaded the way a YAML file is (so registry checks run)."""
    d = {"teacher": TEACHER, "kd": {"kind": kd, "T": 2.0}, "features": features or [], **extra}
    return from_dict(RunConfig, {"role": "student", "model": STUDENT, "distill": d}).distill


def beats(n: int = 8, seed: int = 1) -> torch.Tensor:
    """(n, 1, 320) synthetic normal beats in [-1, 1]."""
    b = synthetic_beats({"N": n}, seed=seed)
    return torch.from_numpy(b.x[:, :1].copy())


def models(seed: int = 0) -> tuple[BeatGAN, BeatGAN]:
    torch.manual_seed(seed)
    teacher = BeatGAN.build(ModelConfig(**TEACHER), 1)
    student = BeatGAN.build(ModelConfig(**STUDENT), 1)
    # give the teacher BatchNorm running statistics that are not the defaults (0 / 1)
    with torch.no_grad():
        x = beats(16, seed=7)
        teacher.G(x)
        teacher.D(x)
    return teacher, student


def build(cfg: DistillConfig, seed: int = 0, x: torch.Tensor | None = None):
    teacher, student = models(seed)
    x = beats() if x is None else x
    return Distiller(cfg, teacher, student, x), teacher, student, x


def g_step(distiller: Distiller, student: BeatGAN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loop's G step up to the terms: student G on x, student D (frozen) on fake and on x."""
    G, D = student.G, student.D
    g_taps: dict[str, torch.Tensor] = {}
    fake, latent = G(x, g_taps)
    D.requires_grad_(False)
    g_fake: dict[str, torch.Tensor] = {}
    g_real: dict[str, torch.Tensor] = {}
    D(fake, g_fake)
    with torch.no_grad():
        D(x, g_real)
    terms = distiller.g_terms(x, fake, latent, tap_dict(real={**g_taps, **g_real}, fake=g_fake))
    D.requires_grad_(True)
    return terms


def d_step(distiller: Distiller, student: BeatGAN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loop's D step up to the terms: student D on x and on the detached reconstruction."""
    fake, _ = student.G(x, {})
    d_real: dict[str, torch.Tensor] = {}
    d_fake: dict[str, torch.Tensor] = {}
    student.D(x, d_real)
    student.D(fake.detach(), d_fake)
    return distiller.d_terms(x, fake.detach(), tap_dict(real=d_real, fake=d_fake))
