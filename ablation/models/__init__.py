"""Detector families, one registry (`FAMILIES`): ``model.family`` in a config names one.

A family is a class registered with ``@register_family("name")`` (BeatGAN in `ablation.models.beatgan`,
Anobeat in `ablation.models.anobeat`) that the loop, the Distiller and the checkpoints read through:

    build(cfg, nc) -> model      G (beats -> reconstruction, latent) and D (beats -> logit, features)
    taps                         the feature-distillation positions its G and D expose
    train_fields                 the ``train.*`` keys only this family reads (its own loss weights)
    step                         the class of one training update (`ablation.train.step.Step` or a subclass)

Every family scores a beat by its reconstruction error, so scoring, output KD (``recon``, the score
kinds, ``latent``, ``disc``) and checkpoint selection work across families unchanged.
"""
from __future__ import annotations

from ablation.registry import Registry

FAMILIES: Registry[type] = Registry("model family")
register_family = FAMILIES.register


def families() -> Registry[type]:
    """The registry with every family module imported (registration happens at import)."""
    import ablation.models.anobeat  # noqa: F401
    import ablation.models.beatgan  # noqa: F401
    return FAMILIES


def family(name: str) -> type:
    """The family class registered as `name` (ValueError listing the registered ones otherwise)."""
    return families().get(name)
