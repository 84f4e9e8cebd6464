"""The Distiller in the training loop: every KD kind and every distance has a gradient into the
student network it is meant to train, the teacher never changes and runs once per network and
input, positions are validated, and ``normalize`` scales first-batch terms to their weight.

The earlier project's KD term had no gradient at all (see NOTES.md section 2): these tests run the
terms the way `ablation.train.loop.train` does and look at the student's ``.grad``.
"""
from __future__ import annotations


import pytest
import torch
from torch import nn

from ablation.config import ConfigError, DistillConfig, RunConfig, from_dict
from ablation.data.dataset import load_data
from ablation.data.synthetic import synthetic_beats
from ablation.distill.distances import DISTANCES
from ablation.distill.distiller import Distiller, FeatureTerm, freeze
from ablation.distill.kd import KD_KINDS
from ablation.distill.positions import Position
from ablation.models.beatgan import TAP_NAMES, BeatGAN
from ablation.train.loop import train
from ablation.train.step import tap_dict
from support.distill_pair import STUDENT, TEACHER, beats, build, d_step, distill_cfg, g_step, models

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def zero_grads(*nets: nn.Module) -> None:
    for net in nets:
        for p in net.parameters():
            p.grad = None


def grads(net: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in net.parameters()]


def assert_trains(net: nn.Module, what: str) -> None:
    g = [x for x in grads(net) if x is not None]
    assert g, f"{what}: no parameter received a gradient"
    assert all(torch.isfinite(x).all() for x in g), f"{what}: non-finite gradient"
    assert any(x.abs().sum() > 0 for x in g), f"{what}: all gradients are zero"


def assert_untouched(net: nn.Module, what: str) -> None:
    assert all(x is None or x.abs().sum() == 0 for x in grads(net)), f"{what}: got a gradient"


def assert_teacher_frozen(teacher: BeatGAN) -> None:
    for net in (teacher.G, teacher.D):
        for name, p in net.named_parameters():
            assert not p.requires_grad, f"teacher parameter {name} requires grad"
            assert p.grad is None, f"teacher parameter {name} has a .grad"


def check_term_trains_its_network(cfg: DistillConfig, step: str) -> None:
    """Run one loop step, backward the step's distillation terms alone and inspect the gradients."""
    distiller, teacher, student, x = build(cfg)
    other = {"G": "D", "D": "G"}[step]
    zero_grads(student.G, student.D, distiller)
    terms = (g_step if step == "G" else d_step)(distiller, student, x)
    assert len(terms) == 1, terms
    (value,) = terms.values()
    assert value.dim() == 0 and torch.isfinite(value)
    assert value.requires_grad, "the term has no autograd graph"
    # nothing belongs to the other step
    assert (d_step if step == "G" else g_step)(distiller, student, x) == {}
    zero_grads(student.G, student.D, distiller)
    terms = (g_step if step == "G" else d_step)(distiller, student, x)
    sum(terms.values()).backward()
    net = student.G if step == "G" else student.D
    assert_trains(net, f"student {step}")
    assert_untouched(student.G if other == "G" else student.D, f"student {other} (the other step)")
    assert_teacher_frozen(teacher)
    # the term's own parameters (connectors, translators, projections) join the right optimiser
    own = distiller.g_parameters() if step == "G" else distiller.d_parameters()
    assert not (distiller.d_parameters() if step == "G" else distiller.g_parameters())
    for p in own:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    trainable = [p for p in distiller.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in own}, "a trainable distiller parameter has no optimiser"


# ------------------------------------------------------------------------------------------------
# Every KD kind has a gradient into the network it trains
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(k for k in KD_KINDS if k != "none"))
def test_kd_term_has_gradient(kind):
    check_term_trains_its_network(distill_cfg(kind), KD_KINDS[kind].step)


def test_latent_kd_projection_is_trained_with_g():
    distiller, _, student, x = build(distill_cfg("latent"))
    proj = distiller.kd.proj
    assert isinstance(proj, nn.Linear) and (proj.in_features, proj.out_features) == (8, 16)
    assert any(p is proj.weight for p in distiller.g_parameters())
    sum(g_step(distiller, student, x).values()).backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_kd_none_adds_nothing():
    distiller, teacher, student, x = build(distill_cfg("none"))
    assert g_step(distiller, student, x) == {}
    assert d_step(distiller, student, x) == {}
    assert distiller.g_parameters() == [] and distiller.d_parameters() == []


# ------------------------------------------------------------------------------------------------
# Every distance has a gradient into the network it trains, at positions that suit it
# ------------------------------------------------------------------------------------------------
# name -> (position, pair, input, step)
SLOTS = {
    "enc": ("enc.2.{p}", "enc.3.{p}", "real", "G"),
    "dec": ("dec.2.{p}", "dec.3.{p}", "real", "G"),
    "disc_fake": ("disc.3.{p}", "disc.4.{p}", "fake", "G"),
    "disc_real": ("disc.0.{p}", "disc.2.{p}", "real", "D"),  # block 0 has no BN: partial_l2 fits its margin
}
POINT = {"ft": "post"}  # ft on a post position; the others (ab, partial_l2 included) at pre


@pytest.mark.parametrize("slot", sorted(SLOTS))
@pytest.mark.parametrize("distance", sorted(DISTANCES))
def test_feature_term_has_gradient(distance, slot):
    position, pair, inp, step = SLOTS[slot]
    point = POINT.get(distance, "pre")
    feature = {"position": position.format(p=point), "input": inp, "distance": distance}
    if DISTANCES[distance].n_positions == 2:
        feature["pair"] = pair.format(p=point)
    check_term_trains_its_network(distill_cfg(features=[feature]), step)


@pytest.mark.parametrize("distance", ["at", "l2", "cosine", "sp"])
def test_self_real_term_has_gradient_into_g(distance):
    """The earlier project's set-up: student D on its reconstruction vs student D on the real beat."""
    cfg = distill_cfg(features=[{"position": "disc.3.pre", "input": "fake", "target": "self_real",
                                 "distance": distance}])
    check_term_trains_its_network(cfg, "G")


def test_weight_zero_gives_zero_gradient():
    cfg = from_dict(RunConfig, {"role": "student", "model": STUDENT, "distill": {
        "teacher": TEACHER, "kd": {"kind": "recon", "weight": 0.0},
        "features": [{"position": "enc.2.pre", "distance": "l2", "weight": 0.0},
                     {"position": "disc.1.pre", "input": "real", "distance": "at", "weight": 0.0}]}}).distill
    distiller, teacher, student, x = build(cfg)
    g = g_step(distiller, student, x)
    d = d_step(distiller, student, x)
    assert len(g) == 2 and len(d) == 1
    assert all(v.item() == 0 for v in [*g.values(), *d.values()])
    (sum(g.values()) + sum(d.values())).backward()
    assert_untouched(student.G, "student G")
    assert_untouched(student.D, "student D")


# ------------------------------------------------------------------------------------------------
# The teacher never changes: one epoch of the real loop, parameters and buffers compared
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_beats():
    return synthetic_beats({"N": 400, "S": 20, "V": 20, "F": 10, "Q": 10}, seed=0)


def student_run(bn: str, kd: str) -> RunConfig:
    return from_dict(RunConfig, {
        "role": "student",
        "data": {"train_subset": 64, "val_subset": 64},
        "model": STUDENT,
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "seed": 3},
        "distill": {"teacher": TEACHER, "teacher_bn": bn, "kd": {"kind": kd},
                    "features": [{"position": "disc.3.pre", "input": "fake", "distance": "at"},
                                 {"position": "disc.1.pre", "input": "real", "distance": "l2"},
                                 {"position": "enc.2.pre", "distance": "partial_l2"},
                                 {"position": "dec.1.post", "distance": "ft"}]}})


def snapshot(teacher: BeatGAN) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, net in (("G", teacher.G), ("D", teacher.D))
            for k, v in net.state_dict().items()}


def run_one_epoch(bn: str, kd: str, tiny_beats, refreeze: bool = False):
    cfg = student_run(bn, kd)
    data = load_data(cfg.data, beats=tiny_beats, progress=False)
    teacher, student = models()
    before = snapshot(teacher)
    assert any(k.endswith("num_batches_tracked") for k in before)
    distiller = Distiller(cfg.distill, teacher, student, data.train)
    if refreeze:
        freeze(teacher, bn)  # what `teacher_bn: train` asks for (see the _tap_shapes bug below)
    result = train(cfg, data, torch.device("cpu"), distiller, progress=False, model=student)
    assert [k for k in result.history[0] if k.startswith("loss_fd") or k.startswith("loss_kd")]
    return teacher, before


@pytest.mark.parametrize("kd", ["score_kl", "disc"])
@pytest.mark.parametrize("bn", ["eval", "train"])
def test_teacher_unchanged_by_training(bn, kd, tiny_beats):
    teacher, before = run_one_epoch(bn, kd, tiny_beats)
    after = snapshot(teacher)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"teacher state changed: {changed}"
    assert_teacher_frozen(teacher)


def test_teacher_bn_train_mode_survives_distiller_init():
    teacher, student = models()
    Distiller(distill_cfg("recon", teacher_bn="train"), teacher, student, beats())
    bns = [m for net in (teacher.G, teacher.D) for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns
    assert not any(m.track_running_stats for m in bns)
    assert all(m.training for m in bns), "teacher BN is in eval mode although teacher_bn is 'train'"


def test_teacher_bn_eval_mode_after_distiller_init():
    teacher, student = models()
    Distiller(distill_cfg("recon", teacher_bn="eval"), teacher, student, beats())
    assert not any(m.training for net in (teacher.G, teacher.D) for m in net.modules())


def test_freeze_train_mode_keeps_every_buffer():
    teacher, _ = models()
    freeze(teacher, "train")
    before = snapshot(teacher)
    with torch.no_grad():
        teacher.G(beats())
        teacher.D(beats())
    after = snapshot(teacher)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def test_teacher_unchanged_with_bn_really_in_train_mode(tiny_beats):
    teacher, before = run_one_epoch("train", "disc", tiny_beats, refreeze=True)
    after = snapshot(teacher)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


# ------------------------------------------------------------------------------------------------
# Positions are validated with the valid names listed
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["position", "pair"])
def test_config_unknown_position_lists_valid_ones(key):
    feature = {"position": "disc.1.pre", "distance": "fsp", "pair": "disc.2.pre", key: "disc.9.pre"}
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"role": "student", "distill": {"features": [{}, feature]}}, src="s.yaml")
    msg = str(e.value)
    assert f"distill.features[1].{key}" in msg and "'disc.9.pre'" in msg
    assert all(name in msg for name in TAP_NAMES)


def test_config_unknown_distance_lists_registered_ones():
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"role": "student", "distill": {"features": [{"distance": "mmd"}]}})
    assert "distill.features[0].distance" in str(e.value)
    assert all(name in str(e.value) for name in DISTANCES)


def test_config_two_position_distance_needs_pair():
    with pytest.raises(ConfigError, match=r"distill\.features\[0\]\.pair"):
        from_dict(RunConfig, {"role": "student", "distill": {"features": [{"distance": "fsp"}]}})


def test_position_parse():
    p = Position.parse("disc.3.pre", "fake")
    assert (p.net, p.block, p.point, p.input) == ("disc", 3, "pre", "fake")
    assert p.tap == "disc.3.pre" and p.key == "fake:disc.3.pre" and p.step == "G"
    assert Position.parse("disc.3.pre", "real").step == "D"
    assert Position.parse("enc.0.post", "real").step == "G"
    assert Position.parse("dec.5.pre", "real").key == "real:dec.5.pre"


@pytest.mark.parametrize("bad", ["disc.9.pre", "enc.1.mid", "gen.1.pre", "disc.1", ""])
def test_position_parse_unknown_lists_valid(bad):
    with pytest.raises(ValueError) as e:
        Position.parse(bad, "real")
    assert repr(bad) in str(e.value)
    assert all(name in str(e.value) for name in TAP_NAMES)


@pytest.mark.parametrize("tap", ["enc.1.pre", "dec.4.post"])
def test_generator_position_on_fake_raises(tap):
    with pytest.raises(ValueError, match="generator only sees real beats"):
        Position.parse(tap, "fake")
    with pytest.raises(ConfigError, match=r"distill.features\[0\].*generator only sees real beats"):
        distill_cfg(features=[{"position": tap, "input": "fake", "distance": "at"}])


@pytest.mark.parametrize("position,inp", [("enc.2.pre", "real"), ("dec.1.post", "real"), ("disc.2.pre", "real")])
def test_self_real_needs_disc_on_fake(position, inp):
    cfg = distill_cfg(features=[{"position": position, "input": inp, "target": "self_real", "distance": "at"}])
    teacher, student = models()
    with pytest.raises(ValueError, match="self_real"):
        Distiller(cfg, teacher, student, beats())


def test_position_and_pair_in_different_networks_raise():
    cfg = distill_cfg(features=[{"position": "enc.1.pre", "pair": "dec.1.pre", "distance": "fsp"}])
    teacher, student = models()
    with pytest.raises(ValueError, match="same network"):
        Distiller(cfg, teacher, student, beats())


def test_feature_term_steps_follow_positions():
    cfg = distill_cfg(features=[{"position": "enc.1.pre"}, {"position": "dec.1.pre"},
                                {"position": "disc.1.pre", "input": "fake"},
                                {"position": "disc.1.pre", "input": "real"}])
    distiller, *_ = build(cfg)
    assert [t.step for t in distiller.features] == ["G", "G", "G", "D"]
    assert all(isinstance(t, FeatureTerm) for t in distiller.features)


# ------------------------------------------------------------------------------------------------
# One teacher pass per network per input, however many positions are tapped
# ------------------------------------------------------------------------------------------------
class CallCounter:
    def __init__(self, teacher: BeatGAN, x: torch.Tensor):
        self.calls: list[tuple[str, str]] = []
        self.x = x
        self.fake: torch.Tensor | None = None
        self.handles = [net.register_forward_pre_hook(self._hook(name))
                        for name, net in (("G", teacher.G), ("D", teacher.D))]

    def _hook(self, name: str):
        def hook(module, args):
            inp = args[0]
            if torch.equal(inp, self.x):
                which = "real"
            elif self.fake is not None and torch.equal(inp, self.fake):
                which = "fake"
            else:
                which = "other"
            self.calls.append((name, which))
        return hook

    def take(self) -> list[tuple[str, str]]:
        calls, self.calls = self.calls, []
        return sorted(calls)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def counted_steps(cfg: DistillConfig):
    distiller, teacher, student, x = build(cfg)
    counter = CallCounter(teacher, x)
    with torch.no_grad():
        counter.fake = student.G(x)[0]  # the student's reconstruction (deterministic: no dropout)
    g = g_step(distiller, student, x)
    g_calls = counter.take()
    d = d_step(distiller, student, x)
    d_calls = counter.take()
    counter.close()
    return g, g_calls, d, d_calls


def six_disc(inp: str) -> list[dict]:
    """Every block of D: attention transfer on blocks 0-4, l2 on the length-1 logit (block 5)."""
    return [{"position": f"disc.{b}.pre", "input": inp, "distance": "at" if b < 5 else "l2"} for b in range(6)]


def test_one_teacher_pass_six_real_disc_positions_and_disc_kd():
    g, g_calls, d, d_calls = counted_steps(distill_cfg("disc", six_disc("real")))
    assert g == {} and g_calls == []
    assert len(d) == 7
    assert d_calls == [("D", "fake"), ("D", "real")]  # not six passes on the real beats


def test_one_teacher_pass_per_network_and_input_with_g_kd():
    g, g_calls, d, d_calls = counted_steps(distill_cfg("score_kl", six_disc("real") + six_disc("fake")
                                                       + [{"position": f"enc.{b}.pre", "distance": "at"}
                                                          for b in range(5)]))
    assert len(g) == 6 + 5 + 1 and len(d) == 6
    assert g_calls == [("D", "fake"), ("G", "real")]
    assert d_calls == [("D", "real")]


def test_no_teacher_pass_without_terms():
    g, g_calls, d, d_calls = counted_steps(distill_cfg("none"))
    assert g_calls == [] and d_calls == []


# ------------------------------------------------------------------------------------------------
# normalize: each term divided by its first-batch magnitude
# ------------------------------------------------------------------------------------------------
def test_normalize_first_batch_terms_have_the_magnitude_of_their_weight():
    cfg = distill_cfg("score_kl", [{"position": "enc.2.pre", "distance": "partial_l2", "weight": 3.0},
                                   {"position": "disc.3.pre", "input": "fake", "distance": "l2"},
                                   {"position": "disc.1.pre", "input": "real", "distance": "sp"}],
                      normalize=True)
    weights = {"fd0": 3.0, "fd1": 1.0, "fd2": 1.0, "kd_score_kl": 1.0}
    distiller, teacher, student, x = build(cfg)
    g = g_step(distiller, student, x)
    d = d_step(distiller, student, x)
    assert len(g) == 3 and len(d) == 1
    for k, v in {**g, **d}.items():
        w = next(w for prefix, w in weights.items() if k.startswith(prefix))
        assert abs(v.item()) == pytest.approx(w, rel=1e-5), k
        assert v.requires_grad, k
    # the scale is fixed at the first batch: another batch is not rescaled, the first one still is
    other = beats(8, seed=11)
    g2 = g_step(distiller, student, other)
    assert any(abs(abs(v.item()) - 1.0) > 1e-3 for k, v in g2.items() if not k.startswith("fd0"))
    g3 = g_step(distiller, student, x)
    for k, v in g3.items():
        w = next(w for prefix, w in weights.items() if k.startswith(prefix))
        assert abs(v.item()) == pytest.approx(w, rel=1e-4), k


def test_without_normalize_terms_are_raw():
    cfg = distill_cfg("recon")
    distiller, teacher, student, x = build(cfg)
    (v,) = g_step(distiller, student, x).values()
    fake = student.G(x)[0]
    with torch.no_grad():
        t_recon = teacher.G(x)[0]
    assert v.item() == pytest.approx(torch.nn.functional.mse_loss(fake, t_recon).item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Teacher outputs on the real training beats are cached (eval BN) and equal to live passes
# ------------------------------------------------------------------------------------------------
def _loop_taps(student: BeatGAN, x: torch.Tensor):
    g: dict = {}
    fake, latent = student.G(x, g)
    df: dict = {}
    dr: dict = {}
    student.D(fake, df)
    student.D(x, dr)
    return fake, latent, tap_dict(real={**g, **dr}, fake=df)


@pytest.mark.parametrize("kd", ["recon", "disc"])
def test_cached_teacher_outputs_equal_live_passes(kd):
    teacher, student = models()
    train_x = beats(40, seed=3)
    feats = [{"position": "enc.1.pre", "distance": "l2"}, {"position": "disc.2.pre", "input": "real", "distance": "at"}]
    d = Distiller(distill_cfg(kd, features=feats), teacher, student, train_x)
    assert set(d.cache) == {"G:real", "D:real"}
    idx = torch.tensor([3, 17, 5, 30, 8, 21, 0, 39])
    x = train_x[idx]
    fake, latent, taps = _loop_taps(student, x)
    for step_terms in (lambda i: d.g_terms(x, fake, latent, taps, i), lambda i: d.d_terms(x, fake.detach(), taps, i)):
        cached, live = step_terms(idx), step_terms(None)
        assert cached.keys() == live.keys() and cached
        for k in cached:
            torch.testing.assert_close(cached[k], live[k], rtol=1e-4, atol=1e-6)


def test_no_cache_when_teacher_bn_uses_batch_statistics():
    teacher, student = models()
    d = Distiller(distill_cfg("recon", teacher_bn="train"), teacher, student, beats(16))
    assert d.cache == {}


# ------------------------------------------------------------------------------------------------
# distillation from an ensemble of teachers
# ------------------------------------------------------------------------------------------------
def test_ensemble_teacher_outputs_the_members_mean_and_recon_kd_trains_the_student():
    from ablation.models.ensemble import ensemble
    (t1, student), (t2, _) = models(0), models(1)
    teacher = ensemble([t1, t2])
    x = beats()
    freeze(teacher, "eval")
    with torch.no_grad():
        r1, r2 = t1.G(x)[0], t2.G(x)[0]
        torch.testing.assert_close(teacher.G(x)[0], (r1 + r2) / 2)
        torch.testing.assert_close(teacher.D(x)[0], (t1.D(x)[0] + t2.D(x)[0]) / 2)
    before = [p.clone() for p in teacher.G.parameters()]
    d = Distiller(distill_cfg("recon"), teacher, student, x)
    terms = g_step(d, student, x)
    terms["kd_recon"].backward()
    assert_trains(student.G, "recon KD from an ensemble")
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.G.parameters()))
    assert sum(teacher.n_params().values()) == sum(t1.n_params().values()) * 2


@pytest.mark.parametrize("extra,message", [
    ({"teacher_seeds": [0]}, "two or more distinct seeds"),
    ({"teacher_seeds": [0, 0]}, "two or more distinct seeds"),
    ({"teacher_seeds": [0, 1], "features": [{"position": "enc.3.pre", "distance": "l2"}]}, "do not correspond"),
])
def test_ensemble_teacher_config_refuses_what_does_not_align(extra, message):
    with pytest.raises(ConfigError, match=message):
        distill_cfg("recon", **{k: v for k, v in extra.items() if k != "features"},
                    features=extra.get("features"))
    with pytest.raises(ConfigError, match="do not correspond"):
        distill_cfg("latent", teacher_seeds=[0, 1])


def test_teacher_seeds_give_one_teacher_config_per_seed_and_a_new_key():
    base = from_dict(RunConfig, {"role": "student", "model": STUDENT,
                                 "distill": {"teacher": TEACHER, "kd": {"kind": "recon"}}})
    ens = from_dict(RunConfig, {"role": "student", "model": STUDENT,
                                "distill": {"teacher": TEACHER, "kd": {"kind": "recon"}, "teacher_seeds": [0, 1, 2]}})
    assert [t.train.seed for t in ens.teacher_configs()] == [0, 1, 2]
    assert ens.teacher_configs()[0] == base.teacher_config() and base.teacher_configs() == [base.teacher_config()]
    assert ens.key() != base.key()
