"""Each distillation term means what its config says (the audit's defects, one test or more each).

- a term's weight scales it, with and without ``normalize``;
- a temperature changes the KD term and its gradient (scores are put on a scale where T matters);
- the factor-transfer paraphraser is trained to a plateau, and its loss is reported;
- what a distance fits before training is a seeded sample of the whole training set;
- combinations that would fit on, or compare, the wrong thing are rejected at config load;
- a student's initial weights are its own, not its teacher's at the same seed;
- one function says which config fields make a run's identity.

Synthetic beats (not ECG) unless the test takes the ``mitdb`` fixture.
"""
from __future__ import annotations

import pytest
import torch

from ablation.config import ConfigError, RunConfig, from_dict
from ablation.data.dataset import load_data
from ablation.distill.distiller import Distiller
from ablation.distill.kd import KD_KINDS, Outputs
from ablation.models.beatgan import BeatGAN
from ablation.run import run_key
from ablation.train.loop import pick_device, train
from support.distill_pair import beats, build, d_step, distill_cfg, g_step, models
from support.tiny import TINY_MODEL

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------------
# 1. normalize keeps the weight
# ------------------------------------------------------------------------------------------------
def _weighted_cfg(w: float, normalize: bool = True):
    return from_dict(RunConfig, {"role": "student", "model": TINY_MODEL, "distill": {
        "teacher": {"ndf": 8, "ngf": 8, "nz": 16}, "normalize": normalize,
        "kd": {"kind": "recon", "weight": w},
        "features": [{"position": "enc.2.pre", "distance": "partial_l2", "weight": w},
                     {"position": "disc.1.pre", "input": "real", "distance": "l2", "weight": w}]}}).distill


@pytest.mark.parametrize("w", [0.01, 10.0])
def test_normalize_divides_the_raw_term_then_applies_the_weight(w):
    distiller, teacher, student, x = build(_weighted_cfg(w))
    terms = {**g_step(distiller, student, x), **d_step(distiller, student, x)}
    assert len(terms) == 3
    for k, v in terms.items():
        assert abs(v.item()) == pytest.approx(w, rel=1e-5), k
    # on another batch the term is w times the raw term over its first-batch magnitude
    raw, _, raw_student, _ = build(_weighted_cfg(1.0, normalize=False))
    first = g_step(raw, raw_student, x)
    other = beats(8, seed=11)
    ratio = {k: (g_step(raw, raw_student, other)[k] / first[k]).item() for k in first}
    later = g_step(distiller, student, other)
    for k, v in later.items():
        assert v.item() == pytest.approx(w * ratio[k], rel=1e-4), k


def _tiny_student(w: float) -> RunConfig:
    return from_dict(RunConfig, {"role": "student", "model": TINY_MODEL,
                                 "train": {"epochs": 1, "device": "cpu", "lr_schedule": "constant"},
                                 "data": {"train_subset": 256},
                                 "distill": {"teacher": {"ndf": 8, "ngf": 8, "nz": 16}, "normalize": True,
                                             "kd": {"kind": "recon", "weight": w}}})


def test_two_weights_give_different_training_under_normalize(synthetic):
    data = load_data(_tiny_student(1.0).data, beats=synthetic, progress=False)
    histories = []
    for w in (0.01, 10.0):
        cfg = _tiny_student(w)
        teacher, student = models(0)
        student = BeatGAN.build(cfg.model, 1)
        terms = Distiller(cfg.distill, teacher, student, data.train)
        torch.manual_seed(0)
        histories.append(train(cfg, data, pick_device("cpu"), terms, progress=False, model=student).history[0])
    a, b = histories
    assert b["loss_kd_recon"] > 100 * a["loss_kd_recon"]
    assert a["loss_g_rec"] != b["loss_g_rec"]


# ------------------------------------------------------------------------------------------------
# 2. the temperature matters
# ------------------------------------------------------------------------------------------------
def _realistic_scores(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-beat MSE scores of the size BeatGAN produces (~1e-2, skewed), student near teacher."""
    g = torch.Generator().manual_seed(seed)
    t = 0.01 * torch.distributions.Gamma(2.0, 1.0).sample((64,)) + 1e-4 * torch.rand(64, generator=g)
    s = (t * (1 + 0.3 * torch.randn(64, generator=g))).abs()
    return s.double().requires_grad_(True), t.double()


def _kd_value_and_grad(kind: str, T: float, seed: int = 0):
    """The term's excess over its value at the teacher's own outputs (the divergence part: LwF's
    cross-entropy includes the teacher's entropy), and its gradient w.r.t. the student's outputs."""
    s, t = _realistic_scores(seed)
    torch.manual_seed(seed)
    logit_s, logit_t = (3 * torch.randn(64, dtype=torch.float64)).requires_grad_(True), 3 * torch.randn(64).double()
    kd = KD_KINDS[kind](T, 8, 8).double()
    teacher = Outputs(score=t, logit_real=logit_t, logit_fake=logit_t)
    out = kd(Outputs(score=s, logit_real=logit_s, logit_fake=logit_s), teacher)
    out.backward()
    grad = s.grad if kind != "disc" else logit_s.grad
    return out.item() - kd(teacher, teacher).item(), grad.clone()


@pytest.mark.parametrize("kind", ["score_kl", "score_nce", "disc"])
def test_temperature_changes_the_term_and_its_gradient(kind):
    values, grads = zip(*(_kd_value_and_grad(kind, T) for T in (1.0, 4.0, 10.0)))
    for i in range(2):
        assert abs(values[i] - values[i + 1]) > 0.05 * abs(values[i]), values
        rel = ((grads[i] - grads[i + 1]).norm() / grads[i].norm()).item()
        assert rel > 0.05, (kind, i, rel)


# ------------------------------------------------------------------------------------------------
# 3. the ft paraphraser is trained to a plateau, and its loss is reported
# ------------------------------------------------------------------------------------------------
def test_ft_paraphraser_converges_on_real_beats(mitdb):
    """On real beats, through a teacher whose BN statistics were measured on them (as a trained
    teacher's are), the paraphraser trains to a plateau well past one epoch."""
    from ablation.config import DataConfig, ModelConfig
    from support.distill_pair import STUDENT, TEACHER
    data = load_data(DataConfig(train_subset=4096), str(mitdb), progress=False)
    torch.manual_seed(0)
    teacher, student = BeatGAN.build(ModelConfig(**TEACHER), 1), BeatGAN.build(ModelConfig(**STUDENT), 1)
    for net in (teacher.G, teacher.D):
        torch.optim.swa_utils.update_bn(list(data.train.split(256)), net)
    cfg = distill_cfg("none", [{"position": "disc.3.pre", "input": "real", "distance": "ft"}])
    report = Distiller(cfg, teacher, student, data.train).prepare_report()
    key = "fd0_ft_disc.3.pre_real"
    assert 5 < report[f"{key}.paraphraser_epochs"] < 100  # stopped on the plateau rule, not the cap
    # the frozen paraphraser reconstructs the teacher's features to a tenth of their variance or better
    assert report[f"{key}.paraphraser_rel_mse"] < 0.1


# ------------------------------------------------------------------------------------------------
# 4. what distances fit before training spans the training set
# ------------------------------------------------------------------------------------------------
def test_prepare_sample_is_seeded_and_spans_the_records(mitdb):
    from ablation.config import DataConfig
    from ablation.data.mitdb import Protocol, load_beats
    from ablation.data.splits import make_split
    beats_ = load_beats(Protocol(True, "hamilton"), str(mitdb), progress=False)
    split = make_split(beats_, DataConfig(train_subset=8192))  # sorted by record: the first 4096 are 100-114
    from ablation.distill.distiller import prepare_sample
    idx = prepare_sample(len(split.train), 4096, seed=0)
    assert torch.equal(idx, prepare_sample(len(split.train), 4096, seed=0))
    records = set(beats_.record[split.train[idx.numpy()]])
    first = set(beats_.record[split.train[:4096]])
    assert len(first) <= 25 and len(records) >= 40


# ------------------------------------------------------------------------------------------------
# 5-6. combinations rejected at config load
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("distance", ["partial_l2", "ft"])
def test_self_real_with_a_distance_fitted_on_the_teacher_is_rejected(distance):
    feat = {"position": "disc.3.pre", "input": "fake", "target": "self_real", "distance": distance}
    with pytest.raises(ConfigError, match=r"study\.yaml.*distill\.features\[0\].*self_real"):
        from_dict(RunConfig, {"role": "student", "distill": {"features": [feat]}}, src="study.yaml")


@pytest.mark.parametrize("position", ["enc.5.pre", "enc.5.post", "disc.5.pre", "disc.5.post"])
def test_attention_transfer_on_a_length_one_tap_is_rejected(position):
    feat = {"position": position, "input": "real", "distance": "at"}
    with pytest.raises(ConfigError, match=r"run\.yaml.*distill\.features\[0\].*length 1"):
        from_dict(RunConfig, {"role": "student", "distill": {"features": [feat]}}, src="run.yaml")


# ------------------------------------------------------------------------------------------------
# 7. a same-width student's initial weights are not its teacher's
# ------------------------------------------------------------------------------------------------
def test_same_width_student_does_not_start_from_its_teachers_init(tracking_store, synthetic, monkeypatch):
    from ablation import run as run_module
    cfg = from_dict(RunConfig, {"role": "student", "model": TINY_MODEL,
                                "train": {"epochs": 1, "device": "cpu", "seed": 3}, "data": {"train_subset": 256},
                                "distill": {"teacher": TINY_MODEL, "kd": {"kind": "recon"},
                                            "teacher_train": {"epochs": 1, "seed": 3}}})
    initial = {}
    real_train = run_module.train

    def spy(cfg_, data, device, terms=None, model=None, **kw):
        initial[cfg_.role] = {k: v.clone() for k, v in model.G.state_dict().items()}
        return real_train(cfg_, data, device, terms, model=model, **kw)

    monkeypatch.setattr(run_module, "train", spy)
    run_module.execute(cfg, beats=synthetic, progress=False, experiment="init_seed_test")
    assert set(initial) == {"teacher", "student"}
    w = "encoder.blocks.0.conv.weight"
    assert not torch.equal(initial["teacher"][w], initial["student"][w])


# ------------------------------------------------------------------------------------------------
# 8. one identity of a run
# ------------------------------------------------------------------------------------------------
def test_fields_at_their_off_value_and_neutral_fields_are_not_part_of_the_identity():
    from ablation.config import run_identity
    base = RunConfig()
    ident = run_identity(base)
    assert "device" not in ident["train"] and "ema" not in ident["train"]
    changed = from_dict(RunConfig, {"train": {"device": "cpu", "compile": True, "eval_batch_size": 7}})
    assert run_identity(changed) == ident and changed.key() == base.key()
    on = from_dict(RunConfig, {"train": {"ema": 0.99}})
    assert run_identity(on)["train"]["ema"] == 0.99 and on.key() != base.key()


def test_trial_key_and_run_key_come_from_the_same_identity():
    cfg = from_dict(RunConfig, {"train": {"device": "cpu", "test_every_epoch": True}})
    assert cfg.key() == RunConfig().key()
    assert run_key(cfg, "fp") == run_key(RunConfig(), "fp")


def test_stored_keys_do_not_move():
    """Golden keys: a new config option must be declared off (``off=`` in its field) or neutral, so
    that the runs and trials already stored are still found. If this fails, a change moved every key."""
    assert RunConfig().key() == GOLDEN_TEACHER_KEY
    student = from_dict(RunConfig, {"role": "student", "model": {"ndf": 8, "ngf": 8}, "distill": {}})
    assert student.key() == GOLDEN_STUDENT_KEY


GOLDEN_TEACHER_KEY = "6c5431fe2688ab42"  # numerics revision 1: the pinned path and train.threads
GOLDEN_STUDENT_KEY = "d236cff954da6822"


def test_run_key_of_a_teacher_is_its_config_data_and_numeric_path():
    """The teacher's run key is what committed teachers are found by: the config's fields that
    change training, the beats, and the numeric path (pinned kernels, thread count)."""
    from ablation.config import config_hash
    d = RunConfig().to_dict()
    for k in ("device", "eval_batch_size", "test_every_epoch", "compile", "ema", "max_minutes", "precision",
              "time_warp", "lr_d", "val_per_epoch", "d_real_label", "patience", "snapshots", "snapshot_gap",
              "score_feat_weight", "w_latent"):  # w_latent: Anobeat's own, unread by a BeatGAN
        d["train"].pop(k)
    d["model"].pop("family")  # off at beatgan
    assert d["train"]["threads"] == 1
    assert run_key(RunConfig(), "fp") == config_hash({"config": {**d, "numerics": "avx2-r1"}, "data": "fp"})
    assert from_dict(RunConfig, {"train": {"threads": 2}}).key() != RunConfig().key()


def _student(distill: dict) -> RunConfig:
    return from_dict(RunConfig, {"role": "student", "model": {"ndf": 8, "ngf": 8}, "distill": distill})


def test_a_student_without_terms_has_no_teacher_weight_or_temperature_in_its_key():
    """Fields nothing reads leave the key: changing them must not retrain the same student."""
    from ablation.config import run_identity
    alone = _student({})
    assert run_identity(alone)["distill"] == {}
    for other in ({"kd": {"kind": "none", "T": 9.0, "weight": 3.0}}, {"normalize": True},
                  {"teacher": {"ndf": 16}}, {"teacher_bn": "train"}, {"teacher_train": {"epochs": 2}}):
        assert _student(other).key() == alone.key(), other
    assert _student({"kd": {"kind": "recon"}}).key() != alone.key()


def test_a_temperature_is_in_the_key_only_for_the_kinds_that_read_it():
    for kind, reads_t in (("recon", False), ("latent", False), ("score_kl", True), ("score_nce", True),
                          ("disc", True)):
        one, two = (_student({"kd": {"kind": kind, "T": t}}) for t in (2.0, 8.0))
        assert (one.key() != two.key()) == reads_t, kind
        assert _student({"kd": {"kind": kind, "weight": 0.5}}).key() != one.key(), kind
    feat = [{"position": "enc.3.pre", "distance": "l2"}]
    assert _student({"features": feat, "kd": {"T": 2.0}}).key() == _student({"features": feat}).key()
    assert _student({"features": feat, "teacher": {"ndf": 16}}).key() != _student({"features": feat}).key()


# ------------------------------------------------------------------------------------------------
# time warp: the unwarped beats of a batch still use the teacher cache
# ------------------------------------------------------------------------------------------------
def test_teacher_cache_serves_the_unwarped_beats_of_a_warped_batch():
    teacher, student = models()
    train_x = beats(40, seed=3)
    d = Distiller(distill_cfg("recon"), teacher, student, train_x)
    calls = []
    live = d._teacher_pass
    d._teacher_pass = lambda npass, batch: calls.append(len(batch)) or live(npass, batch)
    idx = torch.tensor([3, 17, 5, 30, 8, 21, 0, 39])
    x = train_x[idx].clone()
    warped = torch.tensor([True, False, False, True, False, False, False, False])
    x[warped] = torch.flip(x[warped], dims=[2])  # stands in for a warp
    mixed = torch.where(warped, -1, idx)
    g = {}
    fake, latent = student.G(x, g)
    t_taps, t_out = d._teacher("G", x, fake, mixed)
    assert calls == [2]  # a live pass on the two warped beats only
    with torch.no_grad():
        recon = teacher.G(x)[0]
    torch.testing.assert_close(t_out.recon, recon, rtol=1e-4, atol=1e-6)


def test_tap_lengths_match_the_model():
    from ablation.models.beatgan import TAP_NAMES, tap_length
    from support.distill_pair import models as pair
    teacher, _ = pair()
    taps: dict = {}
    teacher.G.eval()
    teacher.D.eval()
    with torch.no_grad():
        teacher.G(beats(2), taps)
        teacher.D(beats(2), taps)
    assert {t: tap_length(t) for t in TAP_NAMES} == {t: v.shape[-1] for t, v in taps.items() if t in TAP_NAMES}


def test_distance_params_are_checked_at_config_load():
    bad = {"position": "enc.1.pre", "distance": "at", "params": {"pp": 3}}
    with pytest.raises(ConfigError, match=r"s\.yaml.*distill\.features\[0\]\.params.*'pp'.*allowed parameters: p"):
        from_dict(RunConfig, {"role": "student", "distill": {"features": [bad]}}, src="s.yaml")
    with pytest.raises(ConfigError, match=r"margin"):
        from_dict(RunConfig, {"role": "student", "distill": {"features": [
            {"position": "enc.1.pre", "distance": "ab", "params": {"margin": -1}}]}})


# ------------------------------------------------------------------------------------------------
# the teacher of every study is the best recipe, the same one `make teacher` trains
# ------------------------------------------------------------------------------------------------
def test_studies_and_make_teacher_share_the_teacher_recipe():
    from ablation.__main__ import _run_config, build_parser
    from ablation.config import TEACHER_RECIPE
    args = build_parser().parse_args(["teacher", "--set", "data.fold=3"])
    cli = _run_config(args, {"train": TEACHER_RECIPE})
    student = from_dict(RunConfig, {"role": "student", "data": {"fold": 3}, "model": {"ndf": 8, "ngf": 8},
                                    "distill": {}})
    assert student.teacher_config().key() == cli.key()
    assert cli.train.val_per_epoch == 8 and cli.train.patience == 24 and cli.train.d_reinit_below == 1e-3
    # a study that sets one teacher_train key keeps the rest of the recipe
    short = from_dict(RunConfig, {"role": "student", "distill": {"teacher_train": {"epochs": 2}}})
    assert short.distill.teacher_train.epochs == 2 and short.distill.teacher_train.val_per_epoch == 8
