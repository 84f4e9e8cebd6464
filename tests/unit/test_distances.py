"""Feature distances and connectors: hand-computed values, Heo's margin, gradients, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from ablation.distill.connectors import make_connector
from ablation.distill.distances import (
    DISTANCES,
    HEO_LOSS_SCALE,
    Distance,
    build_distance,
    bn_margin,
    register_distance,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def value(name: str, f_s, f_t, s_channels=None, t_channels=None, teacher_bn=None, **params) -> float:
    s_channels = s_channels if s_channels is not None else f_s.shape[1]
    t_channels = t_channels if t_channels is not None else f_t.shape[1]
    return build_distance(name, s_channels, t_channels, teacher_bn=teacher_bn, **params)(f_s, f_t).item()


# ------------------------------------------------------------------------------------------------
# Values on hand-built tensors
# ------------------------------------------------------------------------------------------------
def test_l2_l1_by_hand():
    f_s = t([[[1, 2], [3, 4]]])
    f_t = t([[[0, 2], [1, 1]]])  # differences 1, 0, 2, 3
    assert value("l2", f_s, f_t) == pytest.approx((1 + 0 + 4 + 9) / 4)
    assert value("l1", f_s, f_t) == pytest.approx((1 + 0 + 2 + 3) / 4)


def test_cosine_by_hand():
    f_s = t([[[1], [0]], [[1], [1]]])  # sample 0 flattened (1, 0), sample 1 (1, 1)
    f_t = t([[[0], [1]], [[2], [2]]])  # orthogonal to sample 0, parallel to sample 1
    assert value("cosine", f_s, f_t) == pytest.approx(1 - (0 + 1) / 2)


def test_at_by_hand_with_different_channels():
    f_s = t([[[1, 0], [1, 2]]])  # mean of squares over channels: (1, 2) -> (1, 2) / sqrt(5)
    f_t = t([[[1, 0], [-1, 0], [2, 0]]])  # (2, 0) -> (1, 0)
    expected = ((1 / math.sqrt(5) - 1) ** 2 + (2 / math.sqrt(5)) ** 2) / 2
    assert value("at", f_s, f_t) == pytest.approx(expected)


def test_at_p1_uses_absolute_values():
    f_s = t([[[-1, 0], [1, 2]]])  # mean of |f|: (1, 1) -> (1, 1) / sqrt(2)
    f_t = t([[[0, 3]]])  # (0, 3) -> (0, 1)
    expected = ((1 / math.sqrt(2)) ** 2 + (1 / math.sqrt(2) - 1) ** 2) / 2
    assert value("at", f_s, f_t, p=1) == pytest.approx(expected)


def test_sp_by_hand():
    f_s = t([[[1, 0]], [[0, 1]]])  # Gram = I, rows already unit
    f_t = t([[[1, 0], [0, 0]], [[1, 0], [0, 0]]])  # Gram = all ones -> rows (1, 1) / sqrt(2)
    r = 1 / math.sqrt(2)
    expected = (2 * (1 - r) ** 2 + 2 * r**2) / 2**2
    assert value("sp", f_s, f_t) == pytest.approx(expected)


def test_sp_matches_numpy_rederivation():
    rng = np.random.default_rng(0)
    s, tt = rng.normal(size=(5, 3, 7)), rng.normal(size=(5, 4, 6))

    def gram(x):
        flat = x.reshape(len(x), -1)
        g = flat @ flat.T
        return g / np.sqrt((g**2).sum(axis=1, keepdims=True))

    expected = ((gram(s) - gram(tt)) ** 2).sum() / 25
    got = value("sp", torch.from_numpy(s), torch.from_numpy(tt))
    assert got == pytest.approx(expected, rel=1e-6)


def test_ab_by_hand():
    f_t = t([[[1, -1, 0, 2]]])
    f_s = t([[[0.5, -0.5, -2, 3]]])
    # t>0: relu(1-0.5)^2 = 0.25; t<=0: relu(1-0.5)^2 = 0.25; t<=0: relu(1-2) = 0; t>0: relu(1-3) = 0
    assert value("ab", f_s, f_t) == pytest.approx(0.5 / 4)
    # margin 2: 1.5^2 + 1.5^2 + 0 + 0
    assert value("ab", f_s, f_t, margin=2.0) == pytest.approx(4.5 / 4)


def test_fsp_by_hand_pools_the_longer_feature():
    s1, s2 = t([[[1, 2]]]), t([[[3, 4]]])  # G_s = (1*3 + 2*4) / 2 = 5.5
    t1, t2 = t([[[1, 1]]]), t([[[2, 4, 6, 8]]])  # t2 pooled to (3, 7): G_t = (3 + 7) / 2 = 5
    assert value("fsp", (s1, s2), (t1, t2), 1, 1) == pytest.approx(0.25)


def test_fsp_matches_numpy_rederivation():
    rng = np.random.default_rng(1)
    s = (rng.normal(size=(3, 2, 8)), rng.normal(size=(3, 4, 8)))
    tt = (rng.normal(size=(3, 2, 8)), rng.normal(size=(3, 4, 8)))

    def fsp(a, b):
        return np.einsum("bil,bjl->bij", a, b) / a.shape[2]

    expected = ((fsp(*s) - fsp(*tt)) ** 2).mean()
    got = value("fsp", tuple(map(torch.from_numpy, s)), tuple(map(torch.from_numpy, tt)), (2, 4), (2, 4))
    assert got == pytest.approx(expected, rel=1e-6)


def test_partial_l2_by_hand_with_bn_margin():
    bn = nn.BatchNorm1d(1)  # gamma 1, beta 0: m = -pdf(0) / cdf(0) = -sqrt(2 / pi)
    m = -math.sqrt(2 / math.pi)
    f_t = t([[[-2, -0.5, 1, -2]], [[0, 0, 0, 0]]])
    f_s = t([[[-3, -1, 0.5, 0]], [[0, 0, 0, 0]]])
    # targets (m, -0.5, 1, m): skipped, skipped, (0.5-1)^2, (0-m)^2; sample 1: all skipped (0 <= 0)
    expected = (0.25 + m**2) / (2 * HEO_LOSS_SCALE)
    assert value("partial_l2", f_s, f_t, teacher_bn=bn) == pytest.approx(expected)


def test_ft_loss_formula_and_paraphraser_training():
    torch.manual_seed(0)
    teacher = [torch.randn(8, 4, 10) for _ in range(3)]
    dist = build_distance("ft", 3, 4, factor_rate=0.5, p=1, paraphraser_epochs=8, paraphraser_lr=2e-2)
    assert dist.factors == 2
    with torch.no_grad():
        before = sum(torch.mean((dist.paraphraser(x) - x) ** 2).item() for x in teacher)
    dist.prepare(teacher)
    with torch.no_grad():
        after = sum(torch.mean((dist.paraphraser(x) - x) ** 2).item() for x in teacher)
    assert after < 0.8 * before

    dist.eval()
    f_s, f_t = torch.randn(5, 3, 10), torch.randn(5, 4, 10)
    with torch.no_grad():
        fs = dist.translator(f_s).flatten(1).numpy()
        ft = dist.paraphraser.encoder(f_t).flatten(1).numpy()
    fs = fs / np.linalg.norm(fs, axis=1, keepdims=True)
    ft = ft / np.linalg.norm(ft, axis=1, keepdims=True)
    assert dist(f_s, f_t).item() == pytest.approx(np.abs(fs - ft).sum(axis=1).mean(), rel=1e-5)
    dist.hparams["p"] = 2
    assert dist(f_s, f_t).item() == pytest.approx(np.sqrt(((fs - ft) ** 2).sum(axis=1)).mean(), rel=1e-5)


def test_ft_paraphraser_is_frozen_and_translator_trainable():
    dist = build_distance("ft", 3, 6, factor_rate=0.5)
    dist.prepare([torch.randn(4, 6, 5)])
    dist.train()
    assert not dist.paraphraser.training
    assert all(not p.requires_grad for p in dist.paraphraser.parameters())
    assert all(p.requires_grad for p in dist.translator.parameters())
    assert dist.translator[-1][0].out_channels == 3


def test_ft_forward_before_prepare_raises():
    dist = build_distance("ft", 3, 4)
    with pytest.raises(RuntimeError, match="prepare"):
        dist(torch.randn(2, 3, 5), torch.randn(2, 4, 5))


# ------------------------------------------------------------------------------------------------
# Heo's margin
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma, beta", [(1.0, 0.0), (-0.5, 0.7), (2.0, -1.3), (0.3, 0.5)])
def test_bn_margin_is_mean_of_negative_part(gamma, beta):
    x = np.random.default_rng(42).normal(beta, abs(gamma), size=1_000_000)
    negative = x[x < 0]
    monte_carlo = negative.mean()  # = E[x 1(x<0)] / P(x<0) = E[x | x<0]
    m = bn_margin(t([gamma]), t([beta])).item()
    assert m == pytest.approx(monte_carlo, rel=1e-2)


def test_bn_margin_formula_near_the_tail_threshold():
    s, m0 = 1.5, 2.9 * 1.5  # cdf(-2.9) = 0.0019 > 0.001: formula branch
    expected = m0 - s * norm.pdf(m0 / s) / norm.cdf(-m0 / s)
    assert bn_margin(t([s]), t([m0])).item() == pytest.approx(expected, rel=1e-4)


def test_bn_margin_minus_three_s_branch():
    gamma, beta = t([1.0, -2.0, 0.5]), t([4.0, 10.0, 1.6])  # cdf(-z) < 0.001 for z = 4, 5, 3.2
    assert torch.allclose(bn_margin(gamma, beta), t([-3.0, -6.0, -1.5]))


def test_partial_l2_empirical_margin_fallback():
    dist = build_distance("partial_l2", 2, 2)
    with pytest.raises(RuntimeError, match="prepare"):
        dist(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    # channel 0 negatives: -1, -3, -2 -> mean -2; channel 1 never negative -> 0
    dist.prepare([t([[[-1, -3, 2], [1, 0, 4]]]), t([[[-2, 5, 0], [2, 3, 0]]])])
    assert torch.allclose(dist.margin, t([-2.0, 0.0]))
    f_t = t([[[-5, 1], [-1, 2]]])  # targets (-2, 1) and (0, 2)
    f_s = t([[[0, 1], [0.5, 0]]])  # counted: (0+2)^2, (1-1)^2, (0.5-0)^2, (0-2)^2
    assert dist(f_s, f_t).item() == pytest.approx((4 + 0 + 0.25 + 4) / HEO_LOSS_SCALE)


def test_partial_l2_with_bn_ignores_prepare_and_checks_channels():
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.copy_(t([1.0, -2.0, 0.5]))
        bn.bias.copy_(t([0.0, 10.0, -0.2]))
    dist = build_distance("partial_l2", 3, 3, teacher_bn=bn)
    dist.prepare([torch.full((2, 3, 4), -7.0)])
    assert torch.allclose(dist.margin, bn_margin(bn.weight, bn.bias))
    with pytest.raises(ValueError, match="channels"):
        build_distance("partial_l2", 3, 4, teacher_bn=bn)


# ------------------------------------------------------------------------------------------------
# Gradients, for every registered distance
# ------------------------------------------------------------------------------------------------
def _case(name: str):
    cls = DISTANCES[name]
    c_t = 6
    c_s = c_t if cls.needs_matched_channels else 4
    bn = nn.BatchNorm1d(c_t)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    if cls.n_positions == 2:
        def feats(c):
            return (torch.randn(5, c, 8), torch.randn(5, c + 1, 4))
        channels_s, channels_t = (c_s, c_s + 1), (c_t, c_t + 1)
    else:
        def feats(c):
            return torch.randn(5, c, 8)
        channels_s, channels_t = c_s, c_t
    dist = build_distance(name, channels_s, channels_t, teacher_bn=bn)
    dist.prepare([feats(c_t) for _ in range(2)])
    return dist, feats(c_s), feats(c_t)


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_gradient_reaches_student_only(name):
    torch.manual_seed(3)
    dist, f_s, f_t = _case(name)
    leaves_s = f_s if isinstance(f_s, tuple) else (f_s,)
    leaves_t = f_t if isinstance(f_t, tuple) else (f_t,)
    for x in leaves_s + leaves_t:
        x.requires_grad_(True)
    loss = dist(f_s, f_t)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for x in leaves_s:
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for x in leaves_t:
        assert x.grad is None


# ------------------------------------------------------------------------------------------------
# Registry errors
# ------------------------------------------------------------------------------------------------
def test_unknown_name_lists_registered():
    with pytest.raises(ValueError) as err:
        build_distance("nope", 3, 3)
    for name in DISTANCES:
        assert name in str(err.value)


def test_unknown_param_names_distance_key_and_allowed():
    with pytest.raises(ValueError) as err:
        build_distance("at", 3, 3, q=1)
    msg = str(err.value)
    assert "'at'" in msg and "'q'" in msg and "p" in msg.split("allowed")[1]
    with pytest.raises(ValueError, match="'l2'.*'margin'.*allowed parameters: none"):
        build_distance("l2", 3, 3, margin=1.0)


def test_bad_param_value_and_duplicate_registration():
    with pytest.raises(ValueError, match="'p'"):
        build_distance("at", 3, 3, p=0)
    with pytest.raises(ValueError, match="already registered"):
        register_distance("l2")(type("Another", (Distance,), {}))


def test_matched_distance_reports_shape_mismatch():
    with pytest.raises(ValueError, match="connector"):
        build_distance("l2", 3, 4)(torch.zeros(2, 3, 5), torch.zeros(2, 4, 5))


# ------------------------------------------------------------------------------------------------
# Connectors
# ------------------------------------------------------------------------------------------------
def test_connector_identity_when_channels_match():
    assert isinstance(make_connector(8, 8), nn.Identity)


@pytest.mark.parametrize("s, t_, force", [(256, 128, False), (128, 128, True)])
def test_connector_shape_and_init(s, t_, force):
    torch.manual_seed(0)
    conn = make_connector(s, t_, force=force)
    conv, bn = conn
    assert isinstance(conv, nn.Conv1d) and isinstance(bn, nn.BatchNorm1d)
    assert conv.kernel_size == (1,) and conv.bias is None and conv.weight.shape == (t_, s, 1)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / t_), rel=0.05)  # He normal, fan-out
    assert abs(conv.weight.mean().item()) < 0.01
    assert torch.equal(bn.weight, torch.ones(t_)) and torch.equal(bn.bias, torch.zeros(t_))
    assert conn(torch.randn(4, s, 10)).shape == (4, t_, 10)
