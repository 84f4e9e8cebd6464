"""Training options: Polyak/EMA averaging of G (train.ema) and the wall-clock budget (train.max_minutes)."""
import copy

import pytest
import torch

from ablation.config import from_dict, RunConfig
from ablation.data.dataset import load_data
from ablation.models.beatgan import BeatGAN
from ablation.train.loop import ema_tracker, pick_device, train


def test_ema_off_is_the_live_generator():
    G = BeatGAN.build(from_dict(RunConfig, {"model": {"ndf": 4, "ngf": 4, "nz": 8}}).model, 1).G
    avg, step = ema_tracker(G, 0.0)
    assert avg is G
    step()


def test_ema_follows_the_rule_for_weights_and_bn_buffers():
    G = BeatGAN.build(from_dict(RunConfig, {"model": {"ndf": 4, "ngf": 4, "nz": 8}}).model, 1).G
    avg, step = ema_tracker(G, 0.75)
    before = copy.deepcopy(avg.state_dict())
    with torch.no_grad():  # move every parameter and float buffer of the live G, as a step would
        for t in G.state_dict().values():
            if t.is_floating_point():
                t.add_(1.0)
            else:
                t.add_(3)
    step()
    after, live = avg.state_dict(), G.state_dict()
    for k, v in after.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * live[k])
        else:
            assert torch.equal(v, live[k])  # num_batches_tracked: copied
    assert not any(p.requires_grad for p in avg.parameters())
    assert any("running_mean" in k for k in after)  # BN buffers are averaged too


def test_training_with_ema_selects_and_returns_the_average(synthetic, single_thread):
    cfg = from_dict(RunConfig, {"model": {"ndf": 4, "ngf": 4, "nz": 8},
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
    cfg = from_dict(RunConfig, {"model": {"ndf": 4, "ngf": 4, "nz": 8},
                                "train": {"epochs": 5, "max_minutes": 1e-9, "device": "cpu"},
                                "data": {"train_subset": 256}})
    res = train(cfg, load_data(cfg.data, beats=synthetic, progress=False), pick_device("cpu"), progress=False)
    assert len(res.history) == 1 and res.best_epoch == 0 and "auc" in res.test
