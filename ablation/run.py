"""One training run end to end: data, teacher (found again or trained), distillation, MLflow."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import mlflow
import torch

from ablation import tracking
from ablation.config import RunConfig, config_hash
from ablation.data.dataset import DataBundle, load_data
from ablation.data.mitdb import Beats
from ablation.models.beatgan import BeatGAN
from ablation.train.loop import Diverged, Result, pick_device, train

TEACHER_EXPERIMENT = "teachers"


@dataclass
class Outcome:
    run_id: str
    result: Result | None  # None when the run was found finished and skipped


RESULT_NEUTRAL = ("device", "eval_batch_size", "test_every_epoch", "compile")  # train keys that leave the result unchanged
# train keys added after runs were stored: at these values they change nothing, so they stay out of
# the key and the stored runs (teachers above all) are still found
OFF_VALUES = {"ema": 0.0, "max_minutes": None, "precision": "fp32", "time_warp": 0.0, "lr_d": None, "val_per_epoch": 1,
              "d_real_label": 1.0}


def run_key(cfg: RunConfig, data_fingerprint: str) -> str:
    """What identifies a run's result: its resolved config and the exact beats it saw."""
    d = cfg.to_dict()
    for train in [d["train"]] + ([d["distill"]["teacher_train"]] if d["distill"] else []):
        for k in RESULT_NEUTRAL:
            train.pop(k)
        for k, off in OFF_VALUES.items():
            if train[k] == off:
                train.pop(k)
    return config_hash({"config": d, "data": data_fingerprint})


def load_model(cfg: RunConfig, state: dict, device: torch.device) -> BeatGAN:
    model = BeatGAN.build(cfg.model, cfg.data.nc)
    model.G.load_state_dict(state["G"])
    model.D.load_state_dict(state["D"])
    return model.to(device)


def ensure_teacher(cfg: RunConfig, data: DataBundle, device: torch.device, progress: bool = True) -> tuple[str, BeatGAN]:
    """The teacher of `cfg` from MLflow by its key, trained (and logged) first when missing."""
    key = run_key(cfg, data.fingerprint)
    run_id = tracking.find_finished(TEACHER_EXPERIMENT, key)
    if run_id is None:
        run_id = execute(cfg, data=data, device=device, experiment=TEACHER_EXPERIMENT, progress=progress).run_id
    tcfg, state = tracking.load_checkpoint(run_id, device)
    return run_id, load_model(tcfg, state, device)


def execute(cfg: RunConfig, *, data: DataBundle | None = None, mitdb: str | None = None,
            beats: Beats | None = None, device: torch.device | str | None = None,
            experiment: str | None = None, parent_run_id: str | None = None,
            extra_tags: dict[str, str] | None = None, progress: bool = True, skip_finished: bool = True,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> Outcome:
    """Train `cfg` as an MLflow run (a child of `parent_run_id` when given) and log everything."""
    device = pick_device(device or cfg.train.device) if not isinstance(device, torch.device) else device
    data = data or load_data(cfg.data, mitdb, beats, progress)
    experiment = experiment or (TEACHER_EXPERIMENT if cfg.role == "teacher" else "students")
    key = run_key(cfg, data.fingerprint)
    if skip_finished and (done := tracking.find_finished(experiment, key)):
        return Outcome(done, None)

    tags = {"role": cfg.role, "run_key": key, "data_fingerprint": data.fingerprint, "device": str(device),
            "git_commit": tracking.git_commit(), **(extra_tags or {})}
    teacher_id, teacher = None, None
    if cfg.role == "student":
        teacher_id, teacher = ensure_teacher(cfg.teacher_config(), data, device, progress)
    torch.manual_seed(cfg.train.seed)  # the initial weights (G, D, connectors) follow the run's seed
    terms, student = None, BeatGAN.build(cfg.model, cfg.data.nc)
    if teacher is not None:
        from ablation.distill.distiller import Distiller
        data = dataclasses.replace(data, train=data.train.to(device))  # one copy on the device, shared with the loop
        terms = Distiller(cfg.distill, teacher, student.to(device), data.train)
        n_t, n_s = sum(teacher.n_params().values()), sum(student.n_params().values())
        tags.update({"teacher_run_id": teacher_id, "teacher_params": str(n_t), "student_params": str(n_s),
                     "compression_ratio": f"{n_t / n_s:.3f}"})
    tags["params_G"], tags["params_D"] = (str(v) for v in student.n_params().values())

    with mlflow.start_run(experiment_id=tracking.experiment_id(experiment), parent_run_id=parent_run_id,
                          run_name=f"{cfg.role}-{key[:8]}") as run:
        tracking.log_run_inputs(cfg, tags)
        try:
            def log_epoch(epoch: int, row: dict[str, float]) -> None:
                mlflow.log_metrics(row, step=epoch)
                if on_epoch:
                    on_epoch(epoch, row)

            result = train(cfg, data, device, terms, progress=progress, model=student, on_epoch=log_epoch)
        except Diverged as e:  # leaving the `with` block marks the run FAILED
            mlflow.set_tag("failure_reason", str(e))
            raise
        mlflow.log_metrics({"best_epoch": result.best_epoch, "best_val_at": result.best_at,
                            "epochs_run": len(result.history),
                            "train_wall_seconds": result.seconds,
                            **{f"test_{k}": v for k, v in result.test.items()},
                            **{f"best_val_{k}": v for k, v in result.val.items() if k in ("auc", "ap", "f1")}})
        tracking.log_outputs(cfg, result.state, result.test_scores, data.test)
        return Outcome(run.info.run_id, result)
