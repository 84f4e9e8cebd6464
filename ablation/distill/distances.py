"""Feature distances for feature distillation, one small class per paper, one registry.

Features are 1-D maps shaped (B, C, L). A distance compares a student feature ``f_s`` with a
teacher feature ``f_t`` and returns a differentiable scalar; the teacher side is always a constant
target (`Distance.forward` detaches it). Two-position distances (``n_positions == 2``: fsp) take a
pair of features per network instead.

Adding a distance is one class with ``@register_distance("name")``: configs, studies and the
training loop resolve names through `DISTANCES` / `build_distance`.

Scales differ by orders of magnitude between distances (partial_l2 is a sum divided by
batch x `HEO_LOSS_SCALE`, the others are means), so each docstring states its reduction.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablation.registry import Registry

Feature = Union[Tensor, tuple[Tensor, ...]]
Channels = Union[int, tuple[int, ...]]

HEO_LOSS_SCALE = 1000.0
"""partial_l2 divides its summed squared error by batch size x this constant (Heo et al. 2019)."""

BN_MARGIN_TAIL = 0.001
"""bn_margin uses the truncated-normal mean only while P(x < 0) exceeds this; else -3 s."""

DISTANCES: Registry[type["Distance"]] = Registry("distance")
register_distance = DISTANCES.register


def build_distance(name: str, s_channels: Channels, t_channels: Channels,
                   teacher_bn: nn.BatchNorm1d | None = None, **params: Any) -> Distance:
    """Instantiate the distance registered as ``name``; ValueError lists the registered names."""
    return DISTANCES.get(name)(s_channels, t_channels, teacher_bn=teacher_bn, **params)


def _detach(f: Feature) -> Feature:
    return tuple(x.detach() for x in f) if isinstance(f, (tuple, list)) else f.detach()


class Distance(nn.Module):
    """Base class: a scalar distance between a student and a teacher feature.

    ``s_channels`` / ``t_channels`` are the channel counts of the raw student and teacher
    features (a pair of counts for two-position distances). When ``needs_matched_channels`` is
    set, the caller puts a connector (`ablation.distill.connectors.make_connector`) on the student
    side, owns it and optimises it; the distance then sees features of the teacher's shape.
    ``teacher_bn`` is the teacher's BatchNorm right before the tapped activation, for distances
    that use it (partial_l2); the others ignore it. ``params`` must be keys of ``defaults``.
    """

    name: ClassVar[str] = ""
    n_positions: ClassVar[int] = 1
    needs_matched_channels: ClassVar[bool] = False
    defaults: ClassVar[Mapping[str, Any]] = {}
    min_length: ClassVar[int] = 1  # shortest feature length on which the distance is not constant
    fitted_on_teacher: ClassVar[bool] = False  # fits on the teacher's network (margin, paraphraser)

    def __init__(self, s_channels: Channels, t_channels: Channels,
                 teacher_bn: nn.BatchNorm1d | None = None, **params: Any) -> None:
        super().__init__()
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"distance {self._label()!r}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                             f"allowed parameters: {allowed}")
        self.s_channels = s_channels
        self.t_channels = t_channels
        self.hparams: dict[str, Any] = {**self.defaults, **params}

    def prepare(self, teacher_batches: Iterable[Feature]) -> None:
        """Optional one-off fit on teacher features before training; the default does nothing."""

    def forward(self, f_s: Feature, f_t: Feature) -> Tensor:
        """Scalar loss, differentiable w.r.t. ``f_s``; ``f_t`` is detached (a constant target)."""
        self._check_arity(f_s, "student")
        self._check_arity(f_t, "teacher")
        return self.compute(f_s, _detach(f_t))

    def compute(self, f_s: Feature, f_t: Feature) -> Tensor:
        """The distance itself, on an already detached teacher feature (subclasses implement it)."""
        raise NotImplementedError

    def _label(self) -> str:
        return self.name or type(self).__name__

    def _check_arity(self, f: Feature, side: str) -> None:
        pair = isinstance(f, (tuple, list))
        if (self.n_positions == 1 and pair) or (self.n_positions > 1 and not (pair and len(f) == self.n_positions)):
            expected = "a tensor" if self.n_positions == 1 else f"a tuple of {self.n_positions} tensors"
            raise ValueError(f"distance {self._label()!r} expects {expected} as the {side} feature")

    def _check_param(self, key: str, ok: Callable[[Any], bool], what: str) -> None:
        value = self.hparams[key]
        if isinstance(value, bool) or not ok(value):
            raise ValueError(f"distance {self._label()!r}: parameter {key!r} must be {what}, got {value!r}")

    def _check_same_shape(self, f_s: Tensor, f_t: Tensor) -> None:
        if f_s.shape != f_t.shape:
            hint = " (insert a connector on the student side)" if f_s.shape[1:2] != f_t.shape[1:2] else ""
            raise ValueError(f"distance {self._label()!r} needs student and teacher features of one shape, "
                             f"got {tuple(f_s.shape)} and {tuple(f_t.shape)}{hint}")

    def _check_dims(self, f_s: Tensor, f_t: Tensor, dims: tuple[int, ...]) -> None:
        if any(f_s.shape[d] != f_t.shape[d] for d in dims):
            axes = ", ".join(("batch", "channel", "length")[d] for d in dims)
            raise ValueError(f"distance {self._label()!r} needs equal {axes} sizes, "
                             f"got {tuple(f_s.shape)} and {tuple(f_t.shape)}")


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and v > 0


# ------------------------------------------------------------------------------------------------
# Point-wise distances on matched features
# ------------------------------------------------------------------------------------------------
@register_distance("l2")
class L2(Distance):
    """FitNets hint loss (Romero et al., ICLR 2015): mean((f_s - f_t)^2) over all B x C x L elements.

    The regressor of FitNets is the caller's connector. Shapes: f_s, f_t (B, C, L), equal.
    """

    needs_matched_channels = True

    def compute(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        self._check_same_shape(f_s, f_t)
        return F.mse_loss(f_s, f_t)


@register_distance("l1")
class L1(Distance):
    """Mean absolute error mean(|f_s - f_t|) over all elements. Shapes: f_s, f_t (B, C, L), equal."""

    needs_matched_channels = True

    def compute(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        self._check_same_shape(f_s, f_t)
        return F.l1_loss(f_s, f_t)


@register_distance("cosine")
class Cosine(Distance):
    """1 - cos(vec(f_s[b]), vec(f_t[b])), averaged over the batch (each sample flattened to C*L).

    Shapes: f_s, f_t (B, C, L), equal. Range [0, 2].
    """

    needs_matched_channels = True

    def compute(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        self._check_same_shape(f_s, f_t)
        return 1.0 - F.cosine_similarity(f_s.flatten(1), f_t.flatten(1), dim=1).mean()


@register_distance("ab")
class ActivationBoundary(Distance):
    """Activation-boundary transfer (Heo et al., AAAI 2019), on pre-activation responses.

    loss = mean( 1[t > 0] relu(margin - s)^2 + 1[t <= 0] relu(margin + s)^2 ) over all elements:
    the student is pushed to the teacher's side of zero by at least ``margin`` (default 1.0).
    Shapes: f_s, f_t (B, C, L), equal.
    """

    needs_matched_channels = True
    defaults = {"margin": 1.0}

    def __init__(self, s_channels: Channels, t_channels: Channels,
                 teacher_bn: nn.BatchNorm1d | None = None, **params: Any) -> None:
        super().__init__(s_channels, t_channels, teacher_bn, **params)
        self._check_param("margin", lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0")

    def compute(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        self._check_same_shape(f_s, f_t)
        m = self.hparams["margin"]
        return torch.where(f_t > 0, F.relu(m - f_s).pow(2), F.relu(m + f_s).pow(2)).mean()


# ------------------------------------------------------------------------------------------------
# Heo et al. 2019: margin ReLU + partial L2
# ------------------------------------------------------------------------------------------------
def bn_margin(gamma: Tensor, beta: Tensor) -> Tensor:
    """Per-channel margin of Heo et al. (ICCV 2019) from the BN before the ReLU: E[x | x < 0].

    With x ~ N(m0, s^2), s = |gamma|, m0 = beta (shapes (C,)):
    m = m0 - s * pdf(m0 / s) / cdf(-m0 / s) if cdf(-m0 / s) > `BN_MARGIN_TAIL`, else -3 s.
    Returns a detached (C,) tensor.
    """
    s = gamma.detach().abs().clamp_min(1e-12)  # a zero scale would make m0 / s undefined
    m0 = beta.detach()
    z = m0 / s
    lower_tail = torch.special.ndtr(-z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return torch.where(lower_tail > BN_MARGIN_TAIL, m0 - s * pdf / lower_tail, -3.0 * s)


@register_distance("partial_l2")
class PartialL2(Distance):
    """Margin-ReLU target + partial L2 (Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019).

    Target: T = max(f_t, m) with a per-channel margin m (C,). With ``teacher_bn`` given,
    m = `bn_margin`(gamma, beta) of that BN (build the distance after the teacher's weights are
    loaded). Without it, m is the mean of the teacher's negative responses per channel, fitted by
    `prepare` (0 for a channel that never goes negative); forward before that is a RuntimeError.

    loss = sum over elements where NOT (f_s <= T and T <= 0) of (f_s - T)^2, / (B * `HEO_LOSS_SCALE`).
    Heo's per-layer weights 2^-(N-i-1) belong to the caller. Shapes: f_s, f_t (B, C, L), equal.
    """

    needs_matched_channels = True
    fitted_on_teacher = True

    def __init__(self, s_channels: Channels, t_channels: Channels,
                 teacher_bn: nn.BatchNorm1d | None = None, **params: Any) -> None:
        super().__init__(s_channels, t_channels, teacher_bn, **params)
        if not isinstance(t_channels, int):
            raise ValueError(f"distance 'partial_l2' needs an int channel count, got {t_channels!r}")
        self.fit_from_data = teacher_bn is None
        if teacher_bn is None:
            margin = torch.full((t_channels,), math.nan)
        elif teacher_bn.num_features != t_channels:
            raise ValueError(f"distance 'partial_l2': teacher_bn has {teacher_bn.num_features} channels, "
                             f"the teacher feature {t_channels}")
        elif teacher_bn.affine:
            margin = bn_margin(teacher_bn.weight, teacher_bn.bias)
        else:
            margin = bn_margin(torch.ones(t_channels), torch.zeros(t_channels))
        self.register_buffer("margin", margin)
        self._fitted = False

    def prepare(self, teacher_batches: Iterable[Tensor]) -> None:
        """Without a teacher BN: fit the margin as the per-channel mean of negative responses."""
        if not self.fit_from_data:
            return
        total = torch.zeros(self.t_channels, dtype=torch.float64, device=self.margin.device)
        count = torch.zeros_like(total)
        batches = 0
        for f_t in teacher_batches:
            t = f_t.detach().to(self.margin.device, torch.float64)
            if t.dim() != 3 or t.shape[1] != self.t_channels:
                raise ValueError(f"distance 'partial_l2': teacher batch of shape {tuple(t.shape)}, "
                                 f"expected (B, {self.t_channels}, L)")
            negative = t < 0
            total += torch.where(negative, t, 0.0).sum(dim=(0, 2))
            count += negative.sum(dim=(0, 2))
            batches += 1
        if batches == 0:
            raise ValueError("distance 'partial_l2': prepare() got no teacher batches")
        self.margin.copy_(torch.where(count > 0, total / count.clamp_min(1), 0.0))
        self._fitted = True

    def compute(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        if not self._fitted:
            if torch.isnan(self.margin).any():
                raise RuntimeError("distance 'partial_l2' has no teacher BN: call prepare(teacher_batches) "
                                   "to fit the margin before the first forward")
            self._fitted = True
        self._check_same_shape(f_s, f_t)
        target = torch.maximum(f_t, self.margin.to(f_t.dtype).view(1, -1, 1))
        keep = (f_s > target) | (target > 0)
        return ((f_s - target).pow(2) * keep).sum() / (f_s.shape[0] * HEO_LOSS_SCALE)


# ------------------------------------------------------------------------------------------------
# Distances between summaries of the features (channels may differ)
# ------------------------------------------------------------------------------------------------
@register_distance("at")
class AttentionTransfer(Distance):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    a(f) = normalize_L2(mean over channels of |f|^p), shape (B, L); loss = mean((a_s - a_t)^2)
    over B x L. Param ``p`` (default 2). Shapes: f_s (B, C_s, L), f_t (B, C_t, L); C_s, C_t may differ.
    At L = 1 both maps are 1 after normalising and the loss is identically zero (``min_length``).
    """

    defaults = {"p": 2.0}
    min_length = 2

    def __init__(self, s_channels: Channels, t_channels: Channels,
                 teacher_bn: nn.BatchNorm1d | None = None, **params: Any) -> None:
        super().__init__(s_channels, t_channels, teacher_bn, **params)
        self._check_param("p", _positive_number, "a number > 0")

    def _attention(self, f: Tensor) -> Tensor:
        return F.normalize(f.abs().pow(self.hparams["p"]).mean(dim=1), dim=1)

    def compute(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        self._check_dims(f_s, f_t, (0, 2))
        return (self._attention(f_s) - self._attention(f_t)).pow(2).mean()


@register_distance("sp")
class SimilarityPreserving(Distance):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019).

    G(f) = row-L2-normalised (F F^T), F = f flattened to (B, C*L), so G is (B, B);
    loss = ||G_s - G_t||_F^2 / B^2. Shapes: f_s (B, C_s, L_s), f_t (B, C_t, L_t); only B must match.
    """

    @staticmethod
    def _similarity(f: Tensor) -> Tensor:
        flat = f.flatten(1)
        return F.normalize(flat @ flat.T, dim=1)

    def compute(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        self._check_dims(f_s, f_t, (0,))
        batch = f_s.shape[0]
        return (self._similarity(f_s) - self._similarity(f_t)).pow(2).sum() / batch**2


@register_distance("fsp")
class FlowOfSolutionProcedure(Distance):
    """FSP matrices (Yim et al., "A Gift from Knowledge Distillation", CVPR 2017).

    Inputs are pairs (f1, f2) per network, f1 (B, C1, L1), f2 (B, C2, L2). The longer of the two is
    adaptive-average-pooled to the shorter length L; G = f1 f2^T / L, shape (B, C1, C2).
    loss = mean((G_s - G_t)^2) over B x C1 x C2. Student and teacher channel counts must match per
    position (the caller adds connectors); lengths may differ between the networks.
    """

    n_positions = 2
    needs_matched_channels = True

    @staticmethod
    def _fsp(f1: Tensor, f2: Tensor) -> Tensor:
        length = min(f1.shape[2], f2.shape[2])
        f1, f2 = F.adaptive_avg_pool1d(f1, length), F.adaptive_avg_pool1d(f2, length)
        return torch.bmm(f1, f2.transpose(1, 2)) / length

    def compute(self, f_s: tuple[Tensor, Tensor], f_t: tuple[Tensor, Tensor]) -> Tensor:
        for s, t in zip(f_s, f_t):
            self._check_dims(s, t, (0, 1))
        return (self._fsp(*f_s) - self._fsp(*f_t)).pow(2).mean()


# ------------------------------------------------------------------------------------------------
# Factor transfer
# ------------------------------------------------------------------------------------------------
def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Conv1d(k=3, same length) + BN + LeakyReLU(0.1)."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm1d(c_out),
                         nn.LeakyReLU(0.1))


class Paraphraser(nn.Module):
    """Kim et al.'s paraphraser, 1-D: autoencoder (B, C, L) -> factors (B, k, L) -> (B, C, L)."""

    def __init__(self, channels: int, factors: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_conv_block(channels, channels), _conv_block(channels, factors))
        self.decoder = nn.Sequential(_conv_block(factors, channels), nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


@register_distance("ft")
class FactorTransfer(Distance):
    """Factor transfer (Kim et al., "Paraphrasing Complex Network", NeurIPS 2018).

    A paraphraser (C_t -> k = round(C_t * factor_rate) factors -> C_t) is trained by `prepare` on
    teacher batches with the reconstruction loss mean((x - P(x))^2) (Adam, ``paraphraser_lr``)
    until an epoch improves the mean loss by less than ``paraphraser_tol`` (relative) or after
    ``paraphraser_epochs`` epochs, then frozen (no grad, kept in eval mode); `fit_report` gives
    the epochs run and the frozen paraphraser's MSE, absolute and relative to the features'
    variance. A translator (C_s -> k, two conv blocks) is a module parameter, trained with the student.
    With F = factors flattened to (B, k*L):
    loss = mean over b of || F_s[b] / ||F_s[b]||_2 - F_t[b] / ||F_t[b]||_2 ||_p.
    Params: factor_rate (0.5), p (1), paraphraser_epochs (100, a cap), paraphraser_tol (0.01),
    paraphraser_lr (1e-3). Shapes: f_s (B, C_s, L), f_t (B, C_t, L). Forward before `prepare` is a
    RuntimeError.
    """

    defaults = {"factor_rate": 0.5, "p": 1.0, "paraphraser_epochs": 100, "paraphraser_tol": 0.01,
                "paraphraser_lr": 1e-3}
    fitted_on_teacher = True

    def __init__(self, s_channels: Channels, t_channels: Channels,
                 teacher_bn: nn.BatchNorm1d | None = None, **params: Any) -> None:
        super().__init__(s_channels, t_channels, teacher_bn, **params)
        self._check_param("factor_rate", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "in (0, 1]")
        self._check_param("p", _positive_number, "a number > 0")
        self._check_param("paraphraser_epochs", lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
        self._check_param("paraphraser_tol", lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0")
        self._check_param("paraphraser_lr", _positive_number, "a number > 0")
        if not (isinstance(s_channels, int) and isinstance(t_channels, int)):
            raise ValueError(f"distance 'ft' needs int channel counts, got {s_channels!r}, {t_channels!r}")
        self.factors = max(1, round(t_channels * self.hparams["factor_rate"]))
        self.paraphraser = Paraphraser(t_channels, self.factors)
        self.paraphraser.requires_grad_(False).eval()
        self.translator = nn.Sequential(_conv_block(s_channels, s_channels), _conv_block(s_channels, self.factors))
        self.register_buffer("paraphraser_fitted", torch.tensor(False))
        self._fitted = False
        self.fit_report: dict[str, float] = {}

    def train(self, mode: bool = True) -> FactorTransfer:
        """Switch the translator's mode; the frozen paraphraser stays in eval mode."""
        super().train(mode)
        self.paraphraser.eval()
        return self

    def prepare(self, teacher_batches: Iterable[Tensor]) -> None:
        """Train the paraphraser on teacher features (reconstruction loss) to a plateau, then freeze it."""
        batches = [f_t.detach().to(self.paraphraser_fitted.device) for f_t in teacher_batches]
        if not batches:
            raise ValueError("distance 'ft': prepare() got no teacher batches")
        para = self.paraphraser.requires_grad_(True)
        para.train()
        optimiser = torch.optim.Adam(para.parameters(), lr=self.hparams["paraphraser_lr"])
        previous, epochs = math.inf, 0
        with torch.enable_grad():
            while epochs < self.hparams["paraphraser_epochs"]:
                total = 0.0
                for x in batches:
                    loss = F.mse_loss(para(x), x)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    total += loss.item()
                epochs += 1
                mean = total / len(batches)
                if previous - mean < self.hparams["paraphraser_tol"] * previous:
                    break
                previous = mean
        para.requires_grad_(False).eval()
        with torch.no_grad():
            mse = sum(F.mse_loss(para(x), x).item() for x in batches) / len(batches)
            var = sum(x.var(dim=(0, 2)).mean().item() for x in batches) / len(batches)
        self.fit_report = {"paraphraser_epochs": epochs, "paraphraser_mse": mse,
                           "paraphraser_rel_mse": mse / max(var, 1e-12)}
        self.paraphraser_fitted.fill_(True)
        self._fitted = True

    def compute(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        if not self._fitted:
            if not bool(self.paraphraser_fitted):
                raise RuntimeError("distance 'ft': the paraphraser is untrained; call "
                                   "prepare(teacher_batches) before the first forward")
            self._fitted = True
        self._check_dims(f_s, f_t, (0, 2))
        with torch.no_grad():
            factor_t = F.normalize(self.paraphraser.encoder(f_t).flatten(1), dim=1)
        factor_s = F.normalize(self.translator(f_s).flatten(1), dim=1)
        return torch.linalg.vector_norm(factor_s - factor_t, ord=self.hparams["p"], dim=1).mean()
