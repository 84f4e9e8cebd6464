"""Student-side connectors that map a student feature onto the teacher's channel count.

Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019): the student transform
is a 1x1 convolution followed by batch normalisation, trained with the student. FitNets' regressor
(Romero et al., ICLR 2015) plays the same role for the plain L2 hint.
"""
from __future__ import annotations

from torch import nn


def make_connector(s_channels: int, t_channels: int, force: bool = False) -> nn.Module:
    """A connector (B, s_channels, L) -> (B, t_channels, L).

    ``Conv1d(s_channels, t_channels, kernel_size=1, bias=False)`` + ``BatchNorm1d(t_channels)``
    when the channel counts differ or ``force`` is set, else ``nn.Identity()``. The convolution is
    He-normal initialised in fan-out mode (std = sqrt(2 / t_channels), as in Heo et al.'s code);
    the BN starts at weight 1, bias 0.
    """
    if s_channels < 1 or t_channels < 1:
        raise ValueError(f"connector channel counts must be positive, got {s_channels} -> {t_channels}")
    if s_channels == t_channels and not force:
        return nn.Identity()
    conv = nn.Conv1d(s_channels, t_channels, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    bn = nn.BatchNorm1d(t_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)
