"""Training options: Polyak/EMA averaging of G (train.ema), the wall-clock budget (train.max_minutes),
validation within epochs (train.val_per_epoch), precision, compilation, time warp, D's learning rate."""
import math

import pytest
import torch

from ablation.config import from_dict, RunConfig
from ablation.data.dataset import load_data
from ablation.models.beatgan import BeatGAN
from ablation.train.loop import Averaged, pick_device, train
from support.tiny import TINY_MODEL


def _generator():
    return BeatGAN.build(from_dict(RunConfig, {"model": TINY_MODEL}).model, 1).G


def test_average_follows_the_rule_and_leaves_the_live_generator_alone():
    G = _generator()
    avg = Averaged(G, 0.75)
    before = [p.clone() for p in avg.model.parameters()]
    with torch.no_grad():  # move the live G, as an optimiser step would
        for p in G.parameters():
            p.add_(1.0)
    live = [p.clone() for p in G.parameters()]
    avg.update()
    for a, b, g in zip(avg.model.parameters(), before, G.parameters()):
        torch.testing.assert_close(a, 0.75 * b + 0.25 * g)
    assert all(torch.equal(a, b) for a, b in zip(G.parameters(), live))
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_refresh_bn_sets_the_batch_statistics_of_the_averaged_weights():
    G = _generator()
    avg = Averaged(G, 0.5, bn_beats=256)
    x = torch.randn(300, 1, 320) * 3 + 2
    avg.refresh_bn(x[:256], 64)
    first_bn = next(m for m in avg.model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    # the first BN's running mean is the mean of its input over the first 256 beats
    conv_out = {}
    h = first_bn.register_forward_hook(lambda m, i, o: conv_out.setdefault("x", i[0].detach()))
    avg.model.train()
    with torch.no_grad():
        avg.model(x[:256])
    h.remove()
    torch.testing.assert_close(first_bn.running_mean, conv_out["x"].mean(dim=(0, 2)), rtol=1e-4, atol=1e-5)


def test_training_with_ema_selects_and_returns_the_average(synthetic, single_thread):
    cfg = from_dict(RunConfig, {"model": TINY_MODEL,
                                "train": {"epochs": 2, "ema": 0.9, "device": "cpu"},
                                "data": {"train_subset": 512}})
    data = load_data(cfg.data, beats=synthetic, progress=False)
    res = train(cfg, data, pick_device("cpu"), progress=False)
    assert all("val_auc_live" in row and 0 <= row["val_auc_live"] <= 1 for row in res.history)
    # the returned checkpoint is the average, which differs from a plain run's live weights
    plain = train(from_dict(RunConfig, {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "ema": 0.0}}),
                  data, pick_device("cpu"), progress=False)
    g_ema, g_plain = res.state["G"], plain.state["G"]
    assert any(not torch.equal(g_ema[k], g_plain[k]) for k in g_ema if g_ema[k].is_floating_point())
    assert res.val["auc"] == pytest.approx(max(r["val_auc"] for r in res.history))


def test_max_minutes_ends_training_after_the_epoch_past_the_budget(synthetic, single_thread):
    cfg = from_dict(RunConfig, {"model": TINY_MODEL,
                                "train": {"epochs": 5, "max_minutes": 1e-9, "device": "cpu"},
                                "data": {"train_subset": 256}})
    res = train(cfg, load_data(cfg.data, beats=synthetic, progress=False), pick_device("cpu"), progress=False)
    assert len(res.history) == 1 and res.best_epoch == 0 and "auc" in res.test


def test_options_left_off_keep_stored_run_keys_and_change_them_when_on():
    from ablation.run import run_key
    base = from_dict(RunConfig, {})
    d = base.to_dict()
    for k in ("ema", "max_minutes", "precision", "compile", "time_warp", "lr_d", "val_per_epoch", "d_real_label",
              "patience", "snapshots", "snapshot_gap", "score_feat_weight", "w_latent"):
        d["train"].pop(k)
    d["model"].pop("family")  # off at beatgan, as w_latent (Anobeat's own key) is off a BeatGAN's key
    import hashlib, json  # the key as computed before these options existed (numerics revision 1)
    old = hashlib.sha256(json.dumps({"config": {**d, "numerics": "avx2-r1",
                                                "train": {k: v for k, v in d["train"].items()
                                                          if k not in ("device", "eval_batch_size", "test_every_epoch")}},
                                     "data": "fp"}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert run_key(base, "fp") == old
    assert run_key(from_dict(RunConfig, {"train": {"ema": 0.999}}), "fp") != old
    assert run_key(from_dict(RunConfig, {"train": {"max_minutes": 30}}), "fp") != old
    assert run_key(from_dict(RunConfig, {"train": {"precision": "bf16"}}), "fp") != old
    assert run_key(from_dict(RunConfig, {"train": {"time_warp": 0.75}}), "fp") != old
    assert run_key(from_dict(RunConfig, {"train": {"lr_d": 5e-5}}), "fp") != old
    assert run_key(from_dict(RunConfig, {"train": {"val_per_epoch": 4}}), "fp") != old
    assert run_key(from_dict(RunConfig, {"train": {"d_real_label": 0.9}}), "fp") != old
    assert run_key(from_dict(RunConfig, {"train": {"patience": 8}}), "fp") != old
    assert run_key(from_dict(RunConfig, {"train": {"compile": True}}), "fp") == old  # same result, faster
    assert run_key(from_dict(RunConfig, {"train": {"snapshots": 5}}), "fp") == old  # same training, more kept


def _tiny(**train):
    return from_dict(RunConfig, {"model": TINY_MODEL,
                                 "train": {"epochs": 1, "device": "cpu", "lr_schedule": "constant", **train},
                                 "data": {"train_subset": 256}})


def test_bf16_autocast_trains_close_to_fp32(synthetic, single_thread):
    data = load_data(_tiny().data, beats=synthetic, progress=False)
    fp32 = train(_tiny(), data, pick_device("cpu"), progress=False).history[0]
    bf16 = train(_tiny(precision="bf16"), data, pick_device("cpu"), progress=False).history[0]
    assert bf16["loss_g_rec"] != fp32["loss_g_rec"]  # autocast really ran
    assert bf16["loss_g_rec"] == pytest.approx(fp32["loss_g_rec"], rel=0.05)


@pytest.mark.subprocess  # torch.compile runs a C++ compiler in worker processes
def test_compiled_training_matches_eager(synthetic, single_thread):
    data = load_data(_tiny().data, beats=synthetic, progress=False)
    eager = train(_tiny(), data, pick_device("cpu"), progress=False).history[0]
    compiled = train(_tiny(compile=True), data, pick_device("cpu"), progress=False).history[0]
    for k in ("loss_d", "loss_g_rec", "loss_g_adv", "val_auc"):
        assert compiled[k] == pytest.approx(eager[k], rel=1e-3, abs=1e-5), k


def test_time_warp_follows_beatgans_rule():
    """7 + 7 ticks stretched (a midpoint after each), 7 + 7 others deleted, split at tick 140."""
    from ablation.data.augment import SPLIT, source_positions, time_warp, warp_fraction
    gen = torch.Generator().manual_seed(0)
    pos = source_positions(50, 320, gen)
    assert pos.shape == (50, 320) and bool((pos.diff(dim=1) > 0).all())  # order kept, nothing repeated
    for row in pos:
        half = row[row.frac() != 0] - 0.5  # stretched ticks: their midpoint follows them
        kept = set(row[row.frac() == 0].long().tolist())
        deleted = sorted(set(range(320)) - kept)
        assert len(half) == 14 and set(half.long().tolist()) <= kept
        assert sum(t < SPLIT for t in deleted) == 7 and len(deleted) == 14 and max(deleted) < 319
        assert int((half < SPLIT).sum()) == 7 and float(half.max()) < 319
    ramp = torch.arange(320.0).expand(3, 2, 320)  # a ramp reads back its own source positions
    warped = time_warp(ramp, torch.Generator().manual_seed(1))
    torch.testing.assert_close(warped[:, 0], source_positions(3, 320, torch.Generator().manual_seed(1)))
    torch.testing.assert_close(warped[:, 0], warped[:, 1])  # both leads warped alike
    x = torch.randn(400, 1, 320)
    some, mask = warp_fraction(x, 0.75, torch.Generator().manual_seed(2))
    changed = (some != x).flatten(1).any(1)
    assert 0.65 < float(changed.float().mean()) < 0.85 and torch.equal(changed, mask)
    same, none = warp_fraction(x, 0.0, gen)
    assert same is x and none is None


def test_time_warp_training_runs_and_changes_the_result(synthetic, single_thread):
    data = load_data(_tiny().data, beats=synthetic, progress=False, with_test=False)
    plain = train(_tiny(), data, pick_device("cpu"), progress=False)
    warped = train(_tiny(time_warp=0.75), data, pick_device("cpu"), progress=False)
    assert warped.history[0]["loss_g_rec"] != plain.history[0]["loss_g_rec"]


def test_lr_d_sets_the_discriminators_own_learning_rate(synthetic, single_thread):
    data = load_data(_tiny().data, beats=synthetic, progress=False)

    def shift(net, before):  # the largest change of any weight
        return max((p - q).abs().max().item() for p, q in zip(net.parameters(), before))

    moved = {}
    for lr_d in (None, 1e-7):
        cfg = _tiny(lr_d=lr_d)
        model = BeatGAN.build(cfg.model, cfg.data.nc)
        d0, g0 = ([p.detach().clone() for p in net.parameters()] for net in (model.D, model.G))
        train(cfg, data, pick_device("cpu"), progress=False, model=model)
        moved[lr_d] = (shift(model.D, d0), shift(model.G, g0))
    assert moved[None][0] > 1e-4 and moved[1e-7][0] < 1e-5  # 4 Adam steps move a weight by <= 4 lr
    assert moved[1e-7][1] > 1e-4  # G still learns at train.lr


def test_validation_within_epochs_picks_among_more_checkpoints_without_changing_training(synthetic, single_thread):
    cfg = from_dict(RunConfig, {"model": TINY_MODEL,
                                "train": {"epochs": 2, "ema": 0.9, "device": "cpu", "val_per_epoch": 4},
                                "data": {"train_subset": 512}})  # 8 batches per epoch: checks after 2, 4, 6, 8
    data = load_data(cfg.data, beats=synthetic, progress=False)
    fine = train(cfg, data, pick_device("cpu"), progress=False)
    once = train(from_dict(RunConfig, {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "val_per_epoch": 1}}),
                 data, pick_device("cpu"), progress=False)
    # the checks in between read the model only: the epoch-end curve is the same run's
    for a, b in zip(fine.history, once.history):
        assert a["val_auc"] == b["val_auc"] and a["loss_g_rec"] == b["loss_g_rec"]
    assert once.best_at == once.best_epoch + 1 and "val_auc_max_in_epoch" not in once.history[0]
    assert fine.best_at in {e + q / 4 for e in range(2) for q in range(1, 5)}
    assert fine.best_epoch == math.ceil(fine.best_at) - 1
    best_fine = max(r["val_auc_max_in_epoch"] for r in fine.history)
    assert fine.val["auc"] == best_fine >= once.val["auc"]
    assert all(r["val_auc_max_in_epoch"] >= r["val_auc"] for r in fine.history)


def test_one_sided_label_smoothing_keeps_the_discriminators_loss_above_its_entropy_floor(synthetic, single_thread):
    """BCE(p, 0.9) >= H(0.9) = 0.325 for any p: with the smoothed target D's loss cannot reach the
    values BeatGAN's re-init rule looks for, while the same run with target 1 goes well below it."""
    floor = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    loss_d = {}
    for r in (1.0, 0.9):
        cfg = _tiny(epochs=3, lr=2e-3, d_real_label=r)
        data = load_data(cfg.data, beats=synthetic, progress=False)
        loss_d[r] = [h["loss_d"] for h in train(cfg, data, pick_device("cpu"), progress=False).history]
    assert loss_d[1.0][-1] < floor / 2
    assert min(loss_d[0.9]) >= floor


def test_label_smoothing_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="d_real_label"):
        from_dict(RunConfig, {"train": {"d_real_label": 0.3}})


def test_patience_stops_after_the_first_epoch_without_a_new_best(synthetic, single_thread):
    """patience 1, one check per epoch: training ends with the first epoch whose validation AUC is no
    new best; the best epoch among those run is kept."""
    cfg = _tiny(patience=1)
    cfg = from_dict(RunConfig, {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 12}})
    data = load_data(cfg.data, beats=synthetic, progress=False)
    res = train(cfg, data, pick_device("cpu"), progress=False)
    aucs = [row["val_auc"] for row in res.history]
    stop = next((e for e in range(1, len(aucs)) if aucs[e] <= max(aucs[:e])), None)
    assert stop is not None and len(aucs) == stop + 1 < 12
    assert res.val["auc"] == max(aucs)
    off = from_dict(RunConfig, {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": stop + 2,
                                                             "patience": None}})
    assert len(train(off, data, pick_device("cpu"), progress=False).history) == stop + 2


def test_snapshots_keep_the_best_checks_apart_and_the_best_first(synthetic, single_thread):
    """train.snapshots k keeps the k best checks >= snapshot_gap epochs apart; training and the
    chosen checkpoint are those of a run that keeps one."""
    one = train(_tiny(epochs=3, val_per_epoch=4), load_data(_tiny().data, beats=synthetic, progress=False), pick_device("cpu"), progress=False)
    res = train(_tiny(epochs=3, val_per_epoch=4, snapshots=3, snapshot_gap=0.5), load_data(_tiny().data, beats=synthetic, progress=False),
                pick_device("cpu"), progress=False)
    assert res.test == one.test and res.best_at == one.best_at
    ats = [s.at for s in res.snapshots]
    aucs = [s.auc for s in res.snapshots]
    assert len(res.snapshots) == 3 and aucs == sorted(aucs, reverse=True) and aucs[0] == res.val["auc"]
    assert min(abs(a - b) for i, a in enumerate(ats) for b in ats[i + 1:]) >= 0.5
    assert all(torch.equal(res.snapshots[0].state["G"][k], res.state["G"][k]) for k in res.state["G"])
    assert one.snapshots == []


def test_checkpoints_replace_a_near_check_only_when_better():
    from ablation.train.checkpoints import Checkpoints
    G, D = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    kept = Checkpoints(keep=2, gap=1.0)
    for auc, at in [(0.80, 0.5), (0.85, 0.75), (0.70, 2.0), (0.82, 1.5), (0.90, 3.5), (0.60, 3.6)]:
        kept.offer({"auc": auc}, int(at), at, G, D)
    # 0.85 replaced 0.80 (0.25 apart); 0.82 at 1.5 is 0.75 from 0.85: not better, dropped;
    # 0.70 kept until 0.90 came; 0.60 near 0.90 and worse: dropped
    assert [(s.auc, s.at) for s in kept.snapshots] == [(0.90, 3.5), (0.85, 0.75)]
    assert kept.best.auc == 0.90 and kept.stale == 1


def test_score_feat_weight_selects_and_reports_the_combined_score(synthetic, single_thread):
    """train.score_feat_weight w: validation checks and the test set are scored z_rec + w z_feat
    (standardised on the validation normals), the f-AnoGAN-style score; off, BeatGAN's MSE."""
    import numpy as np
    from ablation.models.beatgan import BeatGAN
    from ablation.train.evaluate import metrics, scores
    from ablation.train.scores import combine, components
    data = load_data(_tiny().data, beats=synthetic, progress=False)
    res = train(_tiny(epochs=2, score_feat_weight=2.0), data, pick_device("cpu"), progress=False)
    model = BeatGAN.build(_tiny().model, 1)
    model.G.load_state_dict(res.state["G"])
    model.D.load_state_dict(res.state["D"])
    val = components(model.G, model.D, data.val.x)
    ref = val[data.val.y == 0]
    assert res.val["auc"] == pytest.approx(metrics(data.val.y, combine(val, ref, 2.0))["auc"])
    expected = combine(components(model.G, model.D, data.test.x), ref, 2.0)
    np.testing.assert_allclose(res.test_scores, expected, rtol=1e-6)
    assert res.test["auc"] != pytest.approx(metrics(data.test.y, scores(model.G, data.test.x))["auc"], abs=1e-4)
    from ablation.run import run_key
    assert run_key(_tiny(score_feat_weight=2.0), "fp") != run_key(_tiny(), "fp")


def test_extra_residuals_are_the_latent_consistency_and_the_largest_local_error(single_thread):
    """components(..., extras): column 0 is BeatGAN's MSE; `latent` is mean((E(x) - E(G(x)))^2)
    (GANomaly), `window` the largest 32-sample mean of the squared error (random beats, hand-computed)."""
    import numpy as np
    from ablation.train.scores import WINDOW, combine, components
    model = BeatGAN.build(from_dict(RunConfig, {"model": TINY_MODEL}).model, 1)
    model.G.eval()
    x = torch.randn(5, 1, 320)
    c = components(model.G, model.D, x, ("latent", "window", "feat"))
    assert c.shape == (5, 4)
    with torch.no_grad():
        recon, z = model.G(x)
        latent = (z - model.G.encoder(recon)).pow(2).flatten(1).mean(1).numpy()
        err = (x - recon).pow(2)[:, 0].numpy()
    windowed = np.stack([[e[t:t + WINDOW].mean() for t in range(320 - WINDOW + 1)] for e in err]).max(1)
    np.testing.assert_allclose(c[:, 0], err.mean(1), rtol=1e-5)
    np.testing.assert_allclose(c[:, 1], latent, rtol=1e-5)
    np.testing.assert_allclose(c[:, 2], windowed, rtol=1e-5)
    assert (c[:, 2] > c[:, 0]).all()  # a local maximum of the error exceeds its mean
    z = (c - c.mean(0)) / c.std(0)  # standardised on these five: combine adds each weighted column to z_rec
    np.testing.assert_allclose(combine(c, c, [0.0, 2.0, 0.5]), z[:, 0] + 2 * z[:, 2] + 0.5 * z[:, 3])
    np.testing.assert_allclose(combine(c[:, :2], c[:, :2], 3.0), z[:, 0] + 3 * z[:, 1])
