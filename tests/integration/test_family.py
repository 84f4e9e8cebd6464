"""The Anobeat family end to end on synthetic beats (fast; not ECG), as test_run.py does BeatGAN's:
a teacher in MLflow with its own losses, a checkpoint that builds its family, `score` on raw beats,
students across families, and `python -m ablation train` / `score` on configs/anobeat/tiny.yaml."""
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from ablation import teachers, tracking
from ablation.__main__ import main
from ablation.config import RunConfig, from_dict, load_run_config
from ablation.models.anobeat import Anobeat, AnobeatD
from ablation.models.beatgan import BeatGAN
from ablation.paths import PROJECT_ROOT
from ablation.run import execute, load_model
from ablation.train.evaluate import scores
from support.tiny import TINY_MODEL, tiny_dict

ANOBEAT = {"family": "anobeat", **TINY_MODEL}
CONFIGS = PROJECT_ROOT / "configs" / "anobeat"


def student(model: dict, teacher: dict, kd: str) -> RunConfig:
    return from_dict(RunConfig, tiny_dict("student", model=model, distill={"teacher": teacher, "kd": {"kind": kd}}))


@pytest.fixture(scope="module")
def anobeat_teacher(tracking_store, synthetic):
    """The tiny Anobeat teacher that `student(..., ANOBEAT, ...)` distils from (the same key)."""
    cfg = student(TINY_MODEL, ANOBEAT, "recon").teacher_config()
    return cfg, execute(cfg, beats=synthetic, progress=False)


def test_an_anobeat_teacher_logs_its_losses_and_its_checkpoint_builds_anobeat(anobeat_teacher, synthetic, tmp_path):
    cfg, out = anobeat_teacher
    client = MlflowClient()
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.family"] == "anobeat"
    for loss in ("loss_d", "loss_dz", "loss_g_rec", "loss_g_adv", "loss_g_latent"):
        assert len(client.get_metric_history(out.run_id, loss)) == cfg.train.epochs
    assert {"test_auc", "best_val_auc", "best_epoch"} <= set(run.data.metrics)
    cfg2, state = tracking.load_checkpoint(out.run_id)
    assert cfg2 == cfg and any(k.startswith("latent.") for k in state["D"])
    path = teachers.export(out.run_id)  # committed like a BeatGAN teacher: its row names the family
    row = pd.read_csv(path.parents[1] / teachers.TABLE).set_index("run_key").loc[run.data.tags["run_key"]]
    assert row["family"] == "anobeat" and row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    model = load_model(cfg2, state, torch.device("cpu"))
    assert isinstance(model, Anobeat) and isinstance(model.D, AnobeatD)
    raw = (synthetic.x[:40, :1] * 2.5 - 4.0).astype(np.float32)  # un-normalised beats
    np.save(tmp_path / "beats.npy", raw)
    assert main(["score", "--model", out.run_id, "--input", str(tmp_path / "beats.npy"),
                 "--output", str(tmp_path / "s.npy"), "--device", "cpu", "--threads", "1"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), scores(model.G, torch.from_numpy(synthetic.x[:40, :1])),
                               rtol=1e-4, atol=1e-6)


def test_a_beatgan_student_distils_from_the_anobeat_teacher(anobeat_teacher, synthetic):
    cfg = student(TINY_MODEL, ANOBEAT, "recon")
    out = execute(cfg, beats=synthetic, progress=False)
    tags = MlflowClient().get_run(out.run_id).data.tags
    assert tags["teacher_run_id"] == anobeat_teacher[1].run_id  # found by key, not trained again
    assert out.result.history[0]["loss_kd_recon"] > 0 and "loss_dz" not in out.result.history[0]
    cfg2, state = tracking.load_checkpoint(out.run_id)
    assert type(load_model(cfg2, state, torch.device("cpu"))) is BeatGAN


def test_an_anobeat_student_distils_from_a_beatgan_teacher(tracking_store, synthetic):
    out = execute(student(ANOBEAT, TINY_MODEL, "score_kl"), beats=synthetic, progress=False)
    row = out.result.history[0]
    assert row["loss_kd_score_kl"] > 0 and "loss_g_latent" in row
    teacher = MlflowClient().get_run(MlflowClient().get_run(out.run_id).data.tags["teacher_run_id"])
    assert teacher.data.params["model.family"] == "beatgan"
    cfg2, state = tracking.load_checkpoint(out.run_id)
    assert type(load_model(cfg2, state, torch.device("cpu"))) is Anobeat


def test_the_cli_trains_distils_and_scores_the_tiny_config(tracking_store, synthetic, monkeypatch, tmp_path):
    from ablation.data import dataset
    monkeypatch.setattr(dataset, "load_beats", lambda *a, **k: synthetic)  # the records' stand-in
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--experiment", "anobeat_cli",
                 "--device", "cpu", "--threads", "1"]) == 0
    (run,) = tracking.runs_of("anobeat_cli")
    assert run.info.status == "FINISHED" and run.data.params["model.family"] == "anobeat"
    teacher = MlflowClient().get_run(run.data.tags["teacher_run_id"])
    assert teacher.data.params["model.family"] == "anobeat" and "loss_kd_recon" in run.data.metrics
    np.save(tmp_path / "beats.npy", synthetic.x[:20, :1].astype(np.float32))
    assert main(["score", "--model", run.info.run_id, "--input", str(tmp_path / "beats.npy"),
                 "--output", str(tmp_path / "s.npy"), "--device", "cpu", "--threads", "1"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (20,)


def test_the_student_config_distils_from_the_teacher_config_at_a_tenth_of_its_parameters():
    from ablation.models import family
    teacher, pupil = load_run_config(CONFIGS / "teacher.yaml"), load_run_config(CONFIGS / "student.yaml")
    assert pupil.teacher_config().key() == teacher.key()  # `teacher --config` trains the student's teacher
    n = {name: sum(family(c.model.family).build(c.model, 1).n_params().values())
         for name, c in (("teacher", teacher), ("student", pupil))}
    assert n == {"teacher": 2_635_457, "student": 264_113}


def test_the_anobeat_study_distils_from_the_teacher_config_and_its_beatgan_alone_is_the_headlines():
    """studies/anobeat.yaml: each distilled student reads configs/anobeat/teacher.yaml's teacher of its
    fold (what `make teachers ARGS="--config ..."` commits), each family's student is paired with its
    own family alone, and its BeatGAN student alone has the headline's student_alone trial keys."""
    from ablation.study.spec import load_study
    study = load_study("anobeat")
    for trial in study.trials:
        cfg = trial.config
        assert cfg.model.family == ("anobeat" if trial.name.startswith("anobeat") else "beatgan")
        assert cfg.reads_teacher() == trial.name.endswith("kd_recon")
        if cfg.reads_teacher():
            teacher = load_run_config(CONFIGS / "teacher.yaml", {"data": {"fold": cfg.data.fold}})
            assert cfg.teacher_config().key() == teacher.key()
    alone = {t.key for t in study.trials if t.name == "beatgan_alone"}
    assert len(alone) == 10 and alone == {t.key for t in load_study("headline").trials if t.name == "student_alone"}
