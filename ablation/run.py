"""One training run end to end: data, teacher (found again or trained), distillation, MLflow."""
from __future__ import annotations

import dataclasses
import sys
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ablation import numerics, teachers, tracking
from ablation.config import RunConfig, config_hash, run_identity
from ablation.data.dataset import DataBundle, EvalSet, load_data
from ablation.data.mitdb import Beats
from ablation.errors import BadInput, NotFound, StoreError
from ablation.models import family
from ablation.models.beatgan import BeatGAN
from ablation.models.ensemble import ensemble
from ablation.study.queue import worker_alive, worker_id
from ablation.train.loop import Result, pick_device, train
from ablation.train.resume import Resume

TEACHER_EXPERIMENT = "teachers"


@dataclass
class Outcome:
    run_id: str
    result: Result | None  # None when the run was found finished and skipped


def run_key(cfg: RunConfig, data_fingerprint: str) -> str:
    """What identifies a run's result: its identity (`run_identity`) and the exact beats it saw."""
    return config_hash({"config": run_identity(cfg), "data": data_fingerprint})


def init_seed(role: str, seed: int) -> int:
    """The seed of a run's initial weights: the run's own seed for a teacher (as every stored
    teacher was trained), another stream for a student, so that a student of its teacher's width
    at seed s does not start from the teacher's initial weights at seed s."""
    return seed if role == "teacher" else zlib.crc32(f"student:{seed}".encode())


def load_model(cfg: RunConfig, state: dict, device: torch.device) -> BeatGAN:
    """The model of a checkpoint: its config's family (``model.family``) built, the weights loaded."""
    model = family(cfg.model.family).build(cfg.model, cfg.data.nc)
    model.G.load_state_dict(state["G"])
    model.D.load_state_dict(state["D"])
    return model.to(device)


def ensure_teacher(cfg: RunConfig, data: DataBundle, device: torch.device, progress: bool = True) -> tuple[str, BeatGAN]:
    """The teacher of `cfg` from MLflow by its key, else from the exported teachers on this
    machine (`ablation.teachers`), else trained (and logged) first.

    Under a lock per key (runners started at once train one teacher, the others wait and find it).
    A finished teacher whose checkpoint does not load is tagged ``checkpoint_unreadable`` and
    marked FAILED, and the teacher is trained again."""
    key = run_key(cfg, data.fingerprint)
    with tracking.key_lock(f"teacher-{key}"):
        close_stale_teachers(key)
        run_id = tracking.find_finished(TEACHER_EXPERIMENT, key) or teachers.import_teacher(key, TEACHER_EXPERIMENT)
        if run_id is not None:
            try:
                tcfg, state = tracking.load_checkpoint(run_id, device)
                return run_id, load_model(tcfg, state, device)
            except (StoreError, NotFound) as e:
                print(f"warning: {e}; training the teacher again", file=sys.stderr)
                tracking.retire(run_id, str(e))
        run_id = execute(cfg, data=data, device=device, experiment=TEACHER_EXPERIMENT, progress=progress).run_id
        tcfg, state = tracking.load_checkpoint(run_id, device)
        return run_id, load_model(tcfg, state, device)


def close_stale_teachers(key: str) -> None:
    """Close KILLED, with the reason, the RUNNING teacher runs of `key` whose process is gone
    (killed by SIGKILL, its machine rebooted): a teacher trained elsewhere (its process tag on
    another host), or by a live process, is left alone."""
    for r in tracking.keyed_runs(TEACHER_EXPERIMENT, key, "RUNNING"):
        process = r.data.tags.get("process")
        if process and not worker_alive(process):
            tracking.set_tag(r.info.run_id, "failure_reason", f"its process {process} ended without closing it")
            tracking.set_status(r.info.run_id, "KILLED")


def execute(cfg: RunConfig, *, data: DataBundle | None = None, mitdb: str | None = None,
            beats: Beats | None = None, device: torch.device | str | None = None,
            experiment: str | None = None, parent_run_id: str | None = None,
            extra_tags: dict[str, str] | None = None, progress: bool = True, skip_finished: bool = True,
            run_name: str | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> Outcome:
    """Train `cfg` as an MLflow run (a child of `parent_run_id` when given) and log everything."""
    device = pick_device(device or cfg.train.device) if not isinstance(device, torch.device) else device
    data = data or load_data(cfg.data, mitdb, beats, progress)
    experiment = experiment or (TEACHER_EXPERIMENT if cfg.role == "teacher" else "students")
    key = run_key(cfg, data.fingerprint)
    if skip_finished and (done := tracking.find_finished(experiment, key)):
        return Outcome(done, None)

    numerics.check()
    numerics.deterministic(cfg.train.threads)
    tags = {"role": cfg.role, "run_key": key, "data_fingerprint": data.fingerprint, "device": str(device),
            "git_commit": tracking.git_commit(), "process": worker_id(), **numerics.record(cfg.train.threads), **(extra_tags or {})}
    teacher_id, teacher = None, None
    if cfg.reads_teacher():  # the undistilled baseline needs none
        members = [ensure_teacher(t, data if t.data == cfg.data else data.for_config(t.data), device, progress)
                   for t in cfg.teacher_configs()]  # a teacher trains on its own split, not the student's
        teacher_id, teacher = members[0][0], ensemble([m for _, m in members])
        if len(members) > 1:
            tags["teacher_run_ids"] = ",".join(i for i, _ in members)  # teacher_run_id: the first member
    torch.manual_seed(init_seed(cfg.role, cfg.train.seed))  # the initial weights (G, D, connectors)
    terms, student = None, family(cfg.model.family).build(cfg.model, cfg.data.nc)
    if teacher is not None:
        from ablation.distill.distiller import Distiller
        data = dataclasses.replace(data, train=data.train.to(device))  # one copy on the device, shared with the loop
        terms = Distiller(cfg.distill, teacher, student.to(device), data.train, seed=cfg.train.seed)
        n_t, n_s = sum(teacher.n_params().values()), sum(student.n_params().values())
        tags.update({"teacher_run_id": teacher_id, "teacher_params": str(n_t), "student_params": str(n_s),
                     "compression_ratio": f"{n_t / n_s:.3f}"})
    tags["params_G"], tags["params_D"] = (str(v) for v in student.n_params().values())

    with tracking.training_run(experiment, cfg, tags, parent_run_id, run_name or f"{cfg.role}-{key[:8]}") as run_id:
        tracking.log_split(cfg.data, data.fingerprint, data.sizes, data.test is not None)
        if terms is not None and (fitted := terms.prepare_report()):
            tracking.log_metrics({f"prepare.{k}": v for k, v in fitted.items()})

        def log_epoch(epoch: int, row: dict[str, float]) -> None:
            tracking.log_metrics(row, step=epoch)
            if on_epoch:
                on_epoch(epoch, row)

        resume = Resume(tracking.resume_dir() / f"{key}.pt", key)
        try:
            result = train(cfg, data, device, terms, progress=progress, model=student, on_epoch=log_epoch, resume=resume)
        except Exception:  # a failure (divergence, a pruned trial) would fail again: not continued
            resume.clear()
            raise
        tracking.set_tags({"weights_sha256": numerics.weights_hash(result.state),  # what `reproduce` compares
                           **({"resumed_at_epoch": str(result.resumed_at)} if result.resumed_at else {})})
        tracking.log_metrics({"best_epoch": result.best_epoch, "best_val_at": result.best_at,
                              "epochs_run": len(result.history), "train_wall_seconds": result.seconds,
                              **{f"test_{k}": v for k, v in result.test.items()},
                              **{f"best_val_{k}": v for k, v in result.val.items() if k in ("auc", "ap", "f1")}})
        tracking.log_outputs(cfg, result.state, result.test_scores, data.test, result.snapshots)
        if data.test is not None:
            tracking.log_figures(run_figures(result, data.test, student, teacher))
        resume.clear()
        return Outcome(run_id, result)


def run_figures(result: Result, test: EvalSet, model: BeatGAN, teacher: BeatGAN | None) -> dict:
    """The run page's figures (`ablation.report.run_page`): ROC, PR and per-class scores of the
    test scores at the run's F1-best threshold, and the fixed test beats through `model` (and `teacher`)."""
    from ablation.report import run_page
    from ablation.train.evaluate import reconstruct
    threshold = result.test["f1_threshold"]
    idx = run_page.pick_beats(test.cls)
    x = test.x[idx].to(next(model.G.parameters()).device)
    recon, score = reconstruct(model.G, x)
    views = run_page.BeatViews(idx, test.cls[idx], x[:, 0].cpu().numpy(), recon[:, 0], score)
    if teacher is not None:
        t_recon, views.teacher_score = reconstruct(teacher.G, x)
        views.teacher_recon = t_recon[:, 0]
    return {"roc": run_page.roc_figure(test.y, result.test_scores, threshold),
            "pr": run_page.pr_figure(test.y, result.test_scores, threshold),
            "scores_per_class": run_page.score_distribution(result.test_scores, test.cls, threshold),
            "beats": run_page.beat_grid(views)}


def score_file(model_ref: str, path: str, device: torch.device, batch_size: int = 4096,
               leads: int | None = None) -> np.ndarray:
    """Anomaly scores (n,) of the raw beats (n, channels, 320) in the .npy file `path`, min-max
    normalised per beat as in training, with the model of `model_ref` (run id or checkpoint). The
    beats hold exactly the model's leads, or more when `leads` (the model's count) says to take the first."""
    from ablation.data.mitdb import minmax
    from ablation.train.evaluate import scores
    cfg, state = tracking.load_checkpoint(model_ref, device)
    if cfg.train.score_feat_weight is not None:
        raise BadInput(f"{model_ref}: its score is standardised on its validation set "
                         f"(train.score_feat_weight); `score` serves reconstruction-scored models")
    try:
        beats = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadInput(f"{path}: not a numpy .npy array of beats ({' '.join(str(e).split())[:120]})") from e
    nc = cfg.data.nc
    _check_beats(path, beats, nc, leads)
    bad = ~np.isfinite(beats[:, :nc]).all(axis=(1, 2))
    if bad.any():
        raise BadInput(f"{path}: {int(bad.sum())} of {len(beats)} beats hold NaN or inf "
                         f"(first: beat {int(np.flatnonzero(bad)[0])}); remove or repair them")
    x = torch.from_numpy(minmax(beats[:, :nc].astype(np.float64))).to(device)
    return scores(load_model(cfg, state, device).G, x, batch_size)


def _check_beats(path: str, beats, nc: int, leads: int | None) -> None:
    """Refuse input `score` would misread: not (n, channels, 320), not real numbers, or another lead
    count than the model's `nc` (more leads only with `leads` == `nc`: the first ones are scored)."""
    if not isinstance(beats, np.ndarray) or beats.ndim != 3 or beats.shape[2] != 320:
        raise BadInput(f"{path}: expected raw beats shaped (n, {nc}, 320), "
                       f"got {getattr(beats, 'shape', type(beats).__name__)}")
    if not (np.issubdtype(beats.dtype, np.integer) or np.issubdtype(beats.dtype, np.floating)):
        raise BadInput(f"{path}: beats must be real numbers, got dtype {beats.dtype}")
    if leads is not None and leads != nc:
        raise BadInput(f"--leads {leads}: the model reads {nc} lead(s); pass --leads {nc} or leave it out")
    if beats.shape[1] < nc or (beats.shape[1] > nc and leads is None):
        hint = f"; pass --leads {nc} to score the first {nc}" if beats.shape[1] > nc else ""
        raise BadInput(f"{path}: {beats.shape[1]} leads per beat, and the model reads {nc}{hint}")
