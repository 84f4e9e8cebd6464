"""Output KD kinds: hand-computed values, temperatures, constant teacher side, registry, config errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ablation.config import ConfigError, RunConfig, from_dict
from ablation.distill.distiller import STUDENT_OUTPUTS
from ablation.distill.kd import (
    KD,
    KD_KINDS,
    Disc,
    Latent,
    Outputs,
    Recon,
    ScoreKL,
    ScoreNCE,
    binary_kl,
    power_log_normalise,
    register_kd,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def t(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


# ------------------------------------------------------------------------------------------------
# Independent numpy derivations
# ------------------------------------------------------------------------------------------------
def np_softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def np_score_kl(s: np.ndarray, tt: np.ndarray, T: float) -> float:
    sd = tt.std()  # both sides on the teacher's scale (population sd)
    p, q = np_softmax(tt / (sd * T)), np_softmax(s / (sd * T))
    return float(np.sum(p * np.log(p / q)) * T**2)


def np_power(y: np.ndarray, T: float) -> np.ndarray:
    w = y ** (1.0 / T)
    return w / w.sum()


def np_score_nce(s: np.ndarray, tt: np.ndarray, T: float) -> float:
    return float(-np.sum(np_power(tt, T) * np.log(np_power(s, T))))


def np_binary_kl(s: np.ndarray, tt: np.ndarray, T: float) -> float:
    p = 1 / (1 + np.exp(-tt / T))
    q = 1 / (1 + np.exp(-s / T))
    return float(np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))) * T**2)


# ------------------------------------------------------------------------------------------------
# score_kl
# ------------------------------------------------------------------------------------------------
def test_score_kl_by_hand_two_beats():
    # teacher scores (0, 2a) have population sd a, so z_t = (0, 2) and z_t / T = (0, 1) at T = 2;
    # the student's (0, 0) gives the uniform distribution
    a = 0.013
    kd = ScoreKL(T=2.0, s_nz=1, t_nz=1)
    value = kd(Outputs(score=t([0.0, 0.0])), Outputs(score=t([0.0, 2 * a])))
    # p_t = (1, e) / (1 + e), p_s = (1/2, 1/2), times T^2 = 4
    p = np.array([1.0, math.e]) / (1 + math.e)
    assert value.item() == pytest.approx(4 * float(np.sum(p * np.log(p / 0.5))))


def test_score_kl_is_invariant_to_the_scale_of_the_scores():
    # the point of dividing by the teacher's sd: scores of 1e-2 and of 1 give the same term
    rng = np.random.default_rng(0)
    s, tt = rng.uniform(0, 1, 9), rng.uniform(0, 1, 9)
    kd = ScoreKL(T=4.0, s_nz=1, t_nz=1)
    big = kd(Outputs(score=t(s)), Outputs(score=t(tt))).item()
    small = kd(Outputs(score=t(s * 1e-2)), Outputs(score=t(tt * 1e-2))).item()
    assert small == pytest.approx(big, rel=1e-9) and big > 0


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("kind,reference,n", [(ScoreKL, np_score_kl, 7), (ScoreNCE, np_score_nce, 6)])
def test_score_kinds_match_numpy(kind, reference, n, T):
    rng = np.random.default_rng(n)
    s, tt = rng.uniform(0.01, 0.3, n), rng.uniform(0.01, 0.3, n)
    value = kind(T, 1, 1)(Outputs(score=t(s)), Outputs(score=t(tt))).item()
    assert value == pytest.approx(reference(s, tt, T), rel=1e-9)


def test_score_kl_zero_when_equal_positive_otherwise():
    kd = ScoreKL(T=4.0, s_nz=1, t_nz=1)
    y = t([0.1, 0.5, 0.2, 0.05])
    assert kd(Outputs(score=y.clone()), Outputs(score=y)).item() == pytest.approx(0.0, abs=1e-12)
    # softmax is shift-invariant: a constant offset is no disagreement
    assert kd(Outputs(score=y + 3.0), Outputs(score=y)).item() == pytest.approx(0.0, abs=1e-12)
    assert kd(Outputs(score=t([0.5, 0.1, 0.2, 0.05])), Outputs(score=y)).item() > 0


# ------------------------------------------------------------------------------------------------
# score_nce
# ------------------------------------------------------------------------------------------------
def test_power_log_normalise_by_hand():
    # y = (1, 4), T = 2: y^(1/2) = (1, 2) -> (1/3, 2/3)
    out = power_log_normalise(t([1.0, 4.0]), 2.0)
    np.testing.assert_allclose(out.exp().numpy(), [1 / 3, 2 / 3], rtol=1e-12)


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
def test_power_log_normalise_sums_to_one(T):
    y = torch.rand(9, dtype=torch.float64) + 1e-3
    out = power_log_normalise(y, T)
    assert out.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(out.exp().numpy(), np_power(y.numpy(), T), rtol=1e-10)


def test_score_nce_by_hand():
    # T = 1: y'_t = (1/4, 3/4), y'_s = (1/2, 1/2) -> -(1/4 + 3/4) ln(1/2) = ln 2 (no T^2 factor, as in LwF)
    kd = ScoreNCE(T=1.0, s_nz=1, t_nz=1)
    assert kd(Outputs(score=t([2.0, 2.0])), Outputs(score=t([1.0, 3.0]))).item() == pytest.approx(math.log(2))
    # T = 2 on squared scores gives the same distributions and the same value: no T^2
    kd2 = ScoreNCE(T=2.0, s_nz=1, t_nz=1)
    assert kd2(Outputs(score=t([4.0, 4.0])), Outputs(score=t([1.0, 9.0]))).item() == pytest.approx(math.log(2))


def test_score_nce_minimised_at_teacher_distribution():
    """Cross-entropy: the value at student == teacher is the teacher's entropy, the minimum."""
    kd = ScoreNCE(T=2.0, s_nz=1, t_nz=1)
    y = t([0.1, 0.4, 0.2])
    at_teacher = kd(Outputs(score=y.clone()), Outputs(score=y)).item()
    p = np_power(y.numpy(), 2.0)
    assert at_teacher == pytest.approx(float(-(p * np.log(p)).sum()))
    assert kd(Outputs(score=t([0.4, 0.1, 0.2])), Outputs(score=y)).item() > at_teacher


# ------------------------------------------------------------------------------------------------
# recon, latent
# ------------------------------------------------------------------------------------------------
def test_recon_by_hand():
    s = t([[[1.0, 2.0, 3.0]], [[0.0, 0.0, 0.0]]])  # (B=2, C=1, L=3)
    tt = t([[[1.0, 0.0, 3.0]], [[1.0, 1.0, -1.0]]])  # squared diffs 0, 4, 0, 1, 1, 1 -> 7 / 6
    assert Recon(4.0, 1, 1)(Outputs(recon=s), Outputs(recon=tt)).item() == pytest.approx(7 / 6)


def test_latent_identity_when_sizes_match():
    kd = Latent(4.0, s_nz=3, t_nz=3)
    assert isinstance(kd.proj, nn.Identity)
    assert list(kd.parameters()) == []
    s = t([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    tt = t([[1.0, 0.0, 3.0], [1.0, 1.0, -1.0]])
    assert kd(Outputs(latent=s), Outputs(latent=tt)).item() == pytest.approx(7 / 6)


def test_latent_linear_projection_when_sizes_differ():
    kd = Latent(4.0, s_nz=2, t_nz=3).double()
    assert isinstance(kd.proj, nn.Linear)
    assert (kd.proj.in_features, kd.proj.out_features) == (2, 3)
    assert kd.proj.bias is None
    with torch.no_grad():
        kd.proj.weight.copy_(t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    s = t([[1.0, 2.0]])  # projected: (1, 2, 3)
    tt = t([[0.0, 2.0, 5.0]])  # squared diffs 1, 0, 4 -> 5 / 3
    value = kd(Outputs(latent=s), Outputs(latent=tt))
    assert value.item() == pytest.approx(5 / 3)
    value.backward()
    assert kd.proj.weight.grad is not None and kd.proj.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# disc (binary KD of the logits)
# ------------------------------------------------------------------------------------------------
def test_binary_kl_by_hand():
    # T = 1: p = sigmoid(0) = 1/2, q = sigmoid(ln 3) = 3/4
    # KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    value = binary_kl(t([math.log(3)]), t([0.0]), 1.0)
    assert value.item() == pytest.approx(0.5 * math.log(4 / 3))
    # T = 2 on doubled logits: the same distributions, times T^2 = 4
    value2 = binary_kl(t([2 * math.log(3)]), t([0.0]), 2.0)
    assert value2.item() == pytest.approx(4 * 0.5 * math.log(4 / 3))


def test_binary_kl_zero_at_equal_logits():
    y = t([-3.0, 0.0, 0.7, 12.0])
    assert binary_kl(y.clone(), y, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    assert binary_kl(y + 0.5, y, 4.0).item() > 0


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
def test_disc_matches_numpy(T):
    rng = np.random.default_rng(3)
    sr, tr, sf, tf = (rng.normal(0, 3, 5) for _ in range(4))
    kd = Disc(T, 1, 1)
    value = kd(Outputs(logit_real=t(sr), logit_fake=t(sf)), Outputs(logit_real=t(tr), logit_fake=t(tf))).item()
    assert value == pytest.approx(np_binary_kl(sr, tr, T) + np_binary_kl(sf, tf, T), rel=1e-9)


@pytest.mark.parametrize("kind", list(KD_KINDS))
def test_every_kind_declares_a_step_and_student_outputs_the_step_builds(kind):
    cls = KD_KINDS[kind]
    assert cls.step in STUDENT_OUTPUTS
    assert set(cls.student_reads) <= set(STUDENT_OUTPUTS[cls.step]) <= set(Outputs.__dataclass_fields__), kind
    assert bool(cls.student_reads) == bool(cls.reads), kind  # a term reads both sides or neither


@pytest.mark.parametrize("kind", list(KD_KINDS))
def test_config_refuses_an_ensemble_teacher_where_the_kind_says_so(kind):
    d = {"role": "student", "distill": {"kd": {"kind": kind}, "teacher_seeds": [0, 1]}}
    if KD_KINDS[kind].ensemble_ok:
        assert from_dict(RunConfig, d).distill.teacher_seeds == [0, 1]
        return
    with pytest.raises(ConfigError, match="do not correspond") as e:
        from_dict(RunConfig, d, src="run.yaml")
    assert "\n" not in str(e.value) and "run.yaml" in str(e.value) and repr(kind) in str(e.value)


# ------------------------------------------------------------------------------------------------
# Gradients: into the student side, never into the teacher side
# ------------------------------------------------------------------------------------------------
def _pair(kind: str):
    torch.manual_seed(0)
    B = 6
    mk = lambda *shape, pos=False: (torch.rand(*shape, dtype=torch.float64) + 0.01 if pos  # noqa: E731
                                    else torch.randn(*shape, dtype=torch.float64)).requires_grad_(True)
    s = Outputs(score=mk(B, pos=True), recon=mk(B, 1, 10), latent=mk(B, 3),
                logit_real=mk(B), logit_fake=mk(B))
    tt = Outputs(score=mk(B, pos=True), recon=mk(B, 1, 10), latent=mk(B, 3),
                 logit_real=mk(B), logit_fake=mk(B))
    return s, tt


@pytest.mark.parametrize("kind", [k for k, c in KD_KINDS.items() if c.student_reads])
def test_gradient_into_student_only(kind):
    s, tt = _pair(kind)
    kd = KD_KINDS[kind](2.0, 3, 3).double()
    value = kd(s, tt)
    assert value.requires_grad and torch.isfinite(value)
    value.backward()
    for f in KD_KINDS[kind].student_reads:
        g = getattr(s, f).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, f
    for f in ("score", "recon", "latent", "logit_real", "logit_fake"):
        assert getattr(tt, f).grad is None, f"teacher {f} received a gradient"


def test_none_kind_has_no_forward():
    with pytest.raises(NotImplementedError):
        KD_KINDS["none"](4.0, 3, 3)(Outputs(), Outputs())


# ------------------------------------------------------------------------------------------------
# Registry and config
# ------------------------------------------------------------------------------------------------
def test_registry_has_every_kind():
    assert {"none", "score_kl", "score_nce", "recon", "latent", "disc"} <= set(KD_KINDS)
    for name, cls in KD_KINDS.items():
        assert issubclass(cls, KD)
        assert cls.name == name
        assert cls.step in ("G", "D")


def test_register_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_kd("recon")(type("Again", (KD,), {}))


@pytest.mark.parametrize("kind", list(KD_KINDS))
def test_config_accepts_registered_kinds(kind):
    cfg = from_dict(RunConfig, {"role": "student", "distill": {"kd": {"kind": kind, "T": 2}}})
    assert cfg.distill.kd.kind == kind and cfg.distill.kd.T == 2.0


def test_config_unknown_kind_names_key_path_and_allowed_kinds():
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"role": "student", "distill": {"kd": {"kind": "hinton"}}}, src="run.yaml")
    msg = str(e.value)
    assert "run.yaml" in msg
    assert "distill.kd.kind" in msg
    assert "'hinton'" in msg
    for name in KD_KINDS:
        assert name in msg


def test_every_kind_declares_the_teacher_outputs_it_reads():
    """The Distiller plans its teacher passes from these declarations (no per-kind checks)."""
    fields = set(Outputs.__dataclass_fields__)
    for name, cls in KD_KINDS.items():
        if name == "none":
            assert cls.reads == {}
            continue
        assert cls.reads, name
        for npass, keys in cls.reads.items():
            assert npass in ({"G:real"} if cls.step == "G" else {"D:real", "D:fake"}), (name, npass)
            assert all(k.startswith("out:") and k[4:] in fields for k in keys), (name, keys)
