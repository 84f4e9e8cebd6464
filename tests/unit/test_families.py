"""Detector families: the registry, Anobeat's networks, taps and step, family keys and config errors,
and output KD across families (a BeatGAN student from an Anobeat teacher and the reverse)."""
from __future__ import annotations

import pytest
import torch

from ablation.config import ConfigError, ModelConfig, RunConfig, from_dict
from ablation.data.dataset import load_data
from ablation.data.synthetic import synthetic_beats
from ablation.distill.distiller import Distiller
from ablation.models import FAMILIES, family
from ablation.models.anobeat import Anobeat
from ablation.models.beatgan import TAP_NAMES, BeatGAN
from ablation.train.loop import train
from support.distill_pair import beats, g_step

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = {"ndf": 4, "ngf": 4, "nz": 8}
WIDE = {"ndf": 8, "ngf": 8, "nz": 16}  # the teacher: other widths, so the latent projection is used


# ------------------------------------------------------------------------------------------------
# the registry and Anobeat's networks
# ------------------------------------------------------------------------------------------------
def test_registry_names_both_families_and_refuses_others():
    assert family("beatgan") is BeatGAN and family("anobeat") is Anobeat
    with pytest.raises(ValueError, match="unknown model family 'vae'; registered: anobeat, beatgan"):
        family("vae")


def test_anobeat_is_beatgans_networks_plus_a_latent_discriminator():
    a, b = Anobeat.build(ModelConfig(), 1), BeatGAN.build(ModelConfig(), 1)
    n_a, n_b = a.n_params(), b.n_params()
    latent = sum(p.numel() for p in a.D.latent.parameters())
    assert n_a["G"] == n_b["G"] == 1_908_800 and n_a["D"] == n_b["D"] + latent and latent == 23_169
    student = Anobeat.build(ModelConfig(ndf=8, ngf=8, nz=50), 1)
    assert sum(student.n_params().values()) / sum(n_a.values()) == pytest.approx(0.10, abs=0.005)
    x = torch.randn(3, 1, 320)
    taps: dict = {}
    recon, z = a.G(x, taps)
    logit, feat = a.D(x, taps)
    assert recon.shape == x.shape and z.shape == (3, 50, 1) and logit.shape == (3,) and feat.shape == (3, 512, 10)
    assert a.D.latent(z).shape == (3,)
    assert sorted(taps) == sorted(Anobeat.taps) == sorted(TAP_NAMES)


def anobeat_step(w_latent: float, seed: int = 0):
    """One Anobeat training update on synthetic beats from seeded weights: (model, losses)."""
    cfg = from_dict(RunConfig, {"model": {"family": "anobeat", **SMALL}, "train": {"w_latent": w_latent}})
    torch.manual_seed(seed)
    model = Anobeat.build(cfg.model, 1)
    opt_g = torch.optim.Adam(model.G.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(model.D.parameters(), lr=1e-3)
    no_amp = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    step = Anobeat.step(model.G, model.D, model.D, opt_g, opt_d, None, cfg.train, torch.ones(8), no_amp)
    latent_before = [p.detach().clone() for p in model.D.latent.parameters()]
    losses = step(beats(8), torch.arange(8))
    moved = any(not torch.equal(b, p) for b, p in zip(latent_before, model.D.latent.parameters()))
    return model, losses, moved


def test_anobeat_step_trains_the_latent_discriminator_and_logs_its_terms():
    _, losses, moved = anobeat_step(1.0)
    assert set(losses) == {"loss_d", "loss_dz", "loss_g_rec", "loss_g_adv", "loss_g_latent"}
    assert all(torch.isfinite(v) for v in losses.values()) and moved


def test_w_latent_changes_the_encoders_update_only_through_its_term():
    on, _, _ = anobeat_step(1.0)
    off, _, _ = anobeat_step(0.0)
    w = "encoder.blocks.0.conv.weight"
    assert not torch.equal(on.G.state_dict()[w], off.G.state_dict()[w])
    # the D step precedes G's and does not read w_latent: both discriminators moved alike
    for k, v in on.D.state_dict().items():
        assert torch.equal(v, off.D.state_dict()[k]), k


# ------------------------------------------------------------------------------------------------
# configs: the family key, its own fields, errors naming key and allowed values
# ------------------------------------------------------------------------------------------------
def test_family_is_part_of_the_key_and_w_latent_only_of_anobeats():
    from ablation.config import run_identity
    bg, ano = RunConfig(), from_dict(RunConfig, {"model": {"family": "anobeat"}})
    assert "family" not in run_identity(bg)["model"] and "w_latent" not in run_identity(bg)["train"]
    assert run_identity(ano)["model"]["family"] == "anobeat" and run_identity(ano)["train"]["w_latent"] == 1.0
    assert ano.key() != bg.key()
    assert from_dict(RunConfig, {"model": {"family": "anobeat"}, "train": {"w_latent": 0.5}}).key() != ano.key()


def test_bad_family_and_a_foreign_field_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"`model.family` is 'vae'; allowed values: beatgan, anobeat$") as e:
        from_dict(RunConfig, {"model": {"family": "vae"}})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"`distill.teacher.family` is 'x'"):
        from_dict(RunConfig, {"role": "student", "distill": {"teacher": {"family": "x"}}})
    with pytest.raises(ConfigError, match=r"`train.w_latent` is read by model family anobeat only, and this "
                                          r"one is 'beatgan'"):
        from_dict(RunConfig, {"train": {"w_latent": 0.5}})
    with pytest.raises(ConfigError, match=r"`distill.teacher_train.w_latent`"):
        from_dict(RunConfig, {"role": "student", "distill": {"teacher_train": {"w_latent": 0.5}}})


class _EncoderOnly(BeatGAN):
    """A family whose model declares only its encoder's taps (to see the position checks refuse)."""

    taps = tuple(t for t in TAP_NAMES if t.startswith("enc."))


@pytest.mark.parametrize("whose", ["student", "teacher"])
def test_a_position_the_family_does_not_tap_is_refused_at_load(monkeypatch, whose):
    monkeypatch.setitem(FAMILIES._classes, "enc_only", _EncoderOnly)
    families = {"model": {"family": "enc_only"}} if whose == "student" else {}
    teacher = {"family": "enc_only"} if whose == "teacher" else {}
    d = {"role": "student", **families, "distill": {"teacher": teacher, "features": [
        {"position": "enc.3.pre", "distance": "l2"}, {"position": "disc.3.pre", "input": "fake", "distance": "l2"}]}}
    with pytest.raises(ConfigError, match=rf"`distill.features\[1\].position` 'disc.3.pre' is not a tap of the "
                                          rf"{whose}'s family 'enc_only'; its taps: enc.0.pre") as e:
        from_dict(RunConfig, d)
    assert "\n" not in str(e.value)
    d["distill"]["features"].pop()  # enc.3.pre exists in every family: accepted
    from_dict(RunConfig, d)


# ------------------------------------------------------------------------------------------------
# output KD and feature distillation across families, both directions
# ------------------------------------------------------------------------------------------------
DIRECTIONS = [("beatgan", "anobeat"), ("anobeat", "beatgan")]  # (student, teacher)


def cross_cfg(student: str, teacher: str, kd: str, features: list | None = None) -> RunConfig:
    return from_dict(RunConfig, {
        "role": "student", "data": {"train_subset": 64, "val_subset": 64},
        "model": {"family": student, **SMALL}, "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "distill": {"teacher": {"family": teacher, **WIDE}, "kd": {"kind": kd, "T": 2.0}, "features": features or []}})


def pair(cfg: RunConfig):
    torch.manual_seed(0)
    teacher = family(cfg.distill.teacher.family).build(cfg.distill.teacher, 1)
    with torch.no_grad():  # BatchNorm running statistics that are not the defaults
        teacher.G(beats(16, seed=7))
        teacher.D(beats(16, seed=7))
    return teacher, family(cfg.model.family).build(cfg.model, 1)


def state(model) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, net in (("G", model.G), ("D", model.D))
            for k, v in net.state_dict().items()}


@pytest.mark.parametrize("kd", ["recon", "score_kl", "score_nce", "latent"])
@pytest.mark.parametrize("student,teacher", DIRECTIONS)
def test_output_kd_gradient_reaches_the_student_only(student, teacher, kd):
    cfg = cross_cfg(student, teacher, kd)
    t, s = pair(cfg)
    x = beats()
    distiller = Distiller(cfg.distill, t, s, x)
    term = g_step(distiller, s, x)[f"kd_{kd}"]
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.G.parameters())
    assert all(p.grad is None for net in (t.G, t.D) for p in net.parameters())


@pytest.fixture(scope="module")
def tiny_beats():
    return synthetic_beats({"N": 400, "S": 20, "V": 20, "F": 10, "Q": 10}, seed=0)


@pytest.mark.parametrize("student,teacher", DIRECTIONS)
def test_an_epoch_of_cross_family_distillation_leaves_the_teacher_unchanged(student, teacher, tiny_beats):
    cfg = cross_cfg(student, teacher, "recon", [{"position": "enc.3.pre", "distance": "l2"},
                                                {"position": "disc.3.pre", "input": "fake", "distance": "at"}])
    data = load_data(cfg.data, beats=tiny_beats, progress=False)
    t, s = pair(cfg)
    before = state(t)
    result = train(cfg, data, torch.device("cpu"), Distiller(cfg.distill, t, s, data.train), progress=False, model=s)
    row = result.history[0]
    assert row["loss_kd_recon"] > 0 and row["loss_fd0_l2_enc.3.pre_real"] > 0
    assert ("loss_dz" in row) == (student == "anobeat")  # the student trains by its own family's step
    after = state(t)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
