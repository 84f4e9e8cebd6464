"""A run stopped after an epoch and resumed from its saved state ends with the same bits as a run
never stopped (`ablation.train.resume`). Synthetic beats, tiny models."""
import hashlib

import pytest
import torch

from ablation.config import RunConfig, from_dict
from ablation.data.dataset import load_data
from ablation.errors import BadInput
from ablation.distill.distiller import Distiller
from ablation.models.beatgan import BeatGAN
from ablation.train.loop import pick_device, train
from ablation.train.resume import Resume
from support.tiny import TINY_MODEL

TEACHER = {"ndf": 8, "ngf": 8, "nz": 16}
# every stateful part of the loop in use: the averaged G, snapshots, checks within epochs, D's
# re-initialisation (torch's global stream), time warp (the loop's stream), a cosine schedule
TRAIN = {"epochs": 3, "device": "cpu", "val_per_epoch": 2, "snapshots": 2, "ema": 0.9, "time_warp": 0.5,
         "d_reinit_below": 2.0}  # D re-initialised at (nearly) every batch
STUDENT_DISTILL = {"teacher": TEACHER, "normalize": True, "kd": {"kind": "recon", "weight": 1.0},
                   "features": [{"position": "enc.2.pre", "distance": "l2", "weight": 1.0}]}


class Stop(KeyboardInterrupt):
    """Stands for the kill: raised after the first epoch's state is saved."""


def _setup(role: str, synthetic):
    cfg = from_dict(RunConfig, {"role": role, "model": TINY_MODEL, "train": TRAIN, "data": {"train_subset": 256},
                                **({"distill": STUDENT_DISTILL} if role == "student" else {})})
    data = load_data(cfg.data, beats=synthetic, progress=False)
    torch.manual_seed(7)
    model, terms = BeatGAN.build(cfg.model, 1), None
    if role == "student":
        teacher = BeatGAN.build(from_dict(RunConfig, {"model": TEACHER}).model, 1)
        terms = Distiller(cfg.distill, teacher, model, data.train, seed=0)
    return cfg, data, model, terms


def _train(role, synthetic, resume=None, on_epoch=None):
    cfg, data, model, terms = _setup(role, synthetic)
    return train(cfg, data, pick_device("cpu"), terms, progress=False, model=model, resume=resume, on_epoch=on_epoch)


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for net in ("G", "D"):
        for k, v in state[net].items():
            h.update(k.encode() + v.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_a_run_killed_after_an_epoch_resumes_to_the_same_bits(role, synthetic, single_thread, tmp_path):
    whole = _train(role, synthetic)

    def kill(epoch, row):
        if epoch == 0:
            raise Stop

    resume = Resume(tmp_path / "state.pt", "key-1")
    with pytest.raises(Stop):
        _train(role, synthetic, resume, kill)
    assert resume.path.exists()
    replayed = []
    again = _train(role, synthetic, Resume(tmp_path / "state.pt", "key-1"), lambda e, r: replayed.append(e))
    assert again.resumed_at == 1 and whole.resumed_at == 0
    assert replayed == [0, 1, 2]  # the restored epoch first, then the two trained
    assert _digest(again.state) == _digest(whole.state)
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]  # noqa: E731
    assert timeless(again.history) == timeless(whole.history)  # losses, re-inits, every check's metrics
    assert again.test["auc"] == whole.test["auc"] and again.best_at == whole.best_at
    assert [s.auc for s in again.snapshots] == [s.auc for s in whole.snapshots]


def test_a_state_of_another_run_is_not_read(synthetic, single_thread, tmp_path):
    def kill(epoch, row):
        raise Stop

    with pytest.raises(Stop):
        _train("teacher", synthetic, Resume(tmp_path / "state.pt", "key-1"), kill)
    other = _train("teacher", synthetic, Resume(tmp_path / "state.pt", "key-2"))
    assert other.resumed_at == 0 and len(other.history) == TRAIN["epochs"]


def test_a_state_saved_by_other_modules_is_discarded_and_the_run_starts_over(synthetic, single_thread, tmp_path,
                                                                             capsys):
    def kill(epoch, row):
        raise Stop

    with pytest.raises(Stop):
        _train("teacher", synthetic, Resume(tmp_path / "state.pt", "key-1"), kill)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    state["parts"]["G"] = {k: v[..., :1] if v.dim() else v for k, v in state["parts"]["G"].items()}  # other widths
    torch.save(state, tmp_path / "state.pt")
    again = _train("teacher", synthetic, Resume(tmp_path / "state.pt", "key-1"))
    assert again.resumed_at == 0 and len(again.history) == TRAIN["epochs"]
    assert "modules differ" in capsys.readouterr().err


def test_an_unreadable_state_is_discarded(synthetic, single_thread, tmp_path, capsys):
    (tmp_path / "state.pt").write_bytes(b"not a torch file")  # say, a copy cut short
    again = _train("teacher", synthetic, Resume(tmp_path / "state.pt", "key-1"))
    assert again.resumed_at == 0 and len(again.history) == TRAIN["epochs"]
    assert "unreadable" in capsys.readouterr().err


def test_a_state_that_fails_to_load_ends_in_one_line_and_is_removed(synthetic, single_thread, tmp_path):
    def kill(epoch, row):
        raise Stop

    with pytest.raises(Stop):
        _train("teacher", synthetic, Resume(tmp_path / "state.pt", "key-1"), kill)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    group = state["parts"]["opt_g"]["param_groups"][0]
    group["params"] = group["params"][:-1]  # an optimiser over other parameters
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(BadInput, match="does not fit this run"):
        _train("teacher", synthetic, Resume(tmp_path / "state.pt", "key-1"))
    assert not (tmp_path / "state.pt").exists()  # the next attempt starts over
