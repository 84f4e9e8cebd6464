"""Run a study: one MLflow experiment, a parent run, one child run per trial, workers on a queue.

The coordinator (`run_study`) trains the teachers the trials need, reconciles the queue with MLflow
(finished trials are skipped, failed or interrupted ones queued again) and starts the workers;
`run_worker` is also what a worker on another machine runs against the same stores.
A staged study runs its screen, then its confirmation (`ablation.study.stages`), each on its own queue.
A trial is done when MLflow has a FINISHED child run tagged with its key: killing any process at
any moment loses no finished trial, and a rerun completes the rest.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
import yaml
from optuna.trial import TrialState

from ablation import teachers, tracking
from ablation.config import ConfigError, RunConfig
from ablation.data.dataset import load_data
from ablation.data.mitdb import Beats, Protocol, load_beats
from ablation.errors import NotFound, UserError
from ablation.paths import RUNS
from ablation.run import TEACHER_EXPERIMENT, ensure_teacher, execute, run_key
from ablation.study import queue, results
from ablation.study.spec import StudySpec, Trial
from ablation.study.stages import confirmation
from ablation.train.loop import pick_device

RUNNING_ELSEWHERE = "RUNNING elsewhere"  # a summary status: a trial another live process is training
SUMMARY_COLUMNS = ["trial", "status", "best_epoch", "best_val_auc", "test_auc", "test_ap", "test_f1", "minutes"]


def study_tag(spec: StudySpec) -> str:
    """Names the study's parent run and its lock: one per (study, scale)."""
    return f"{spec.name}@{spec.scale}"


def queue_name(spec: StudySpec) -> str:
    """The trial queue: one per (study, scale) and stage, one more per part (folds, variants) run on its own."""
    return study_tag(spec) + (f"-{spec.stage}" if spec.stage else "") + spec.part


def finished_keys(spec: StudySpec) -> set[str]:
    """Trial keys with a FINISHED run in MLflow or a row in the committed results table."""
    mlflow_keys = {r.data.tags["trial_key"]
                   for r in tracking.trial_runs(spec.name, "FINISHED")}
    return mlflow_keys | results.finished_keys(spec.name, spec.scale)


def export_results(spec: StudySpec) -> None:
    """Rewrite ``results/<study>.csv`` from MLflow's finished runs of the study (rows of other
    machines kept): the per-run table that is committed."""
    from ablation.report.aggregate import attach_teachers, fetch_teachers, keep_latest, runs_frame
    found = tracking.trial_runs(spec.name, "FINISHED")
    if not found:
        return
    runs, _ = keep_latest(runs_frame(found))
    results.write(spec.name, attach_teachers(runs, fetch_teachers(runs)))


def confirmation_stage(spec: StudySpec) -> StudySpec:
    """The confirmation of staged study `spec` (its screen): the table exported from MLflow first,
    then the rule applied to its screening rows (`stages.confirmation`)."""
    export_results(spec)
    return confirmation(spec, results.load(spec.name))


def find_parent(spec: StudySpec) -> str | None:
    """The study's parent run, None when the study was never started."""
    found = tracking.parent_runs(spec.name, study_tag(spec))
    return found[0].info.run_id if found else None


def joined_parent(spec: StudySpec) -> str:
    """The parent run a `worker` joins; `NotFound` when no `study` run started the study."""
    parent = find_parent(spec)
    if parent is None:
        raise NotFound(f"study {spec.name} (scale {spec.scale}) has not been started in {tracking.current_uri()}: "
                       f"a worker joins a running study; start it with `python -m ablation study {spec.path}`")
    return parent


def parent_run(spec: StudySpec) -> str:
    """The study's parent run, created on the first run and reused on every rerun."""
    tag = study_tag(spec)
    found = find_parent(spec)
    if found:
        return found
    return tracking.create_run(spec.name, f"study {tag}",
                               {"study_parent": tag, "study": spec.name, "scale": spec.scale,
                                "mlflow.note.content": f"{spec.description}\n{spec.scale_summary}"})


@contextmanager
def study_lock(spec: StudySpec):
    """Yield True when this process is the only runner of the study on this machine."""
    path = RUNS / "optuna" / f"{study_tag(spec)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            owner = True
        except OSError:
            owner = False
        yield owner


def study_beats(spec: StudySpec, mitdb: str | None, beats: Beats | None) -> Beats:
    """The beats every trial of `spec` draws its split from (`beats` when given: tests)."""
    if beats is not None:
        return beats
    protocols = {Protocol(t.config.data.rpeak_check, t.config.data.rpeak_detector) for t in spec.trials}
    if len(protocols) > 1:
        raise ConfigError(f"{spec.path}: all trials of a study must share the data protocol (rpeak settings)")
    return load_beats(protocols.pop(), mitdb)


def ensure_teachers(configs: list[RunConfig], beats: Beats, device: torch.device, progress: bool = True,
                    workers: int = 1, mitdb: str | None = None, device_name: str | None = None) -> None:
    """Train the distinct teachers of these student configs that MLflow lacks before any worker
    starts (no trial's time includes one): one after another, or with `workers` > 1 up to that many
    at once in their own processes, the cores shared among those running (each trains on its
    `train.threads`; the rest, data and evaluation, on its share)."""
    teachers = {t.key(): t for c in configs if c.reads_teacher() for t in c.teacher_configs()}.values()
    missing = ((t, d) for t in teachers for d in [load_data(t.data, beats=beats, progress=False)]
               if not tracking.find_finished(TEACHER_EXPERIMENT, run_key(t, d.fingerprint)))  # one split at a time
    if workers <= 1:
        for tcfg, tdata in missing:
            ensure_teacher(tcfg, tdata, device, progress)
        return
    missing = [t for t, _ in missing]
    if not missing:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // min(workers, len(missing)))  # one teacher: every core
    with tempfile.TemporaryDirectory() as tmp:
        cmds = []
        for i, tcfg in enumerate(missing):
            path = Path(tmp) / f"teacher{i}.yaml"
            path.write_text(yaml.safe_dump(tcfg.to_dict(), sort_keys=False))
            cmd = [sys.executable, "-m", "ablation", "teacher", "--config", str(path), "--threads", str(threads),
                   "--tracking-uri", tracking.current_uri()]
            cmds.append(cmd + (["--mitdb", mitdb] if mitdb else []) + (["--device", device_name] if device_name else []))
        _run_at_most(cmds, workers)


def _run_at_most(cmds: list[list[str]], slots: int) -> None:
    """Run the commands, at most `slots` at a time; a failed one fails the whole after the others end."""
    pending, running, failed = list(cmds), [], []
    while pending or running:
        while pending and len(running) < slots:
            running.append(subprocess.Popen(pending.pop(0)))
        time.sleep(1)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            failed += [p] if p.returncode else []
    if failed:
        raise StudyIncomplete(f"{len(failed)} of {len(cmds)} teacher runs failed (exit {failed[0].returncode}: "
                           f"{' '.join(failed[0].args[:6])} ...); their errors are printed above")


def run_study(spec: StudySpec, workers: int = 1, storage_url: str | None = None, mitdb: str | None = None,
              device: str | None = None, beats: Beats | None = None, progress: bool = True,
              then_confirm: bool = True) -> pd.DataFrame:
    """Run every unfinished trial of `spec` and return the summary table; a whole screen of a staged
    study goes on to its confirmation unless `then_confirm` is False (the rows of both, with a
    `stage` column)."""
    storage = queue.open_storage(storage_url)  # an unusable queue fails before any teacher trains
    own_beats = beats is None  # beats handed in (tests) cannot reach a teacher process
    beats = study_beats(spec, mitdb, beats)
    dev = pick_device(device or spec.trials[0].config.train.device)
    done = finished_keys(spec)
    ensure_teachers([t.config for t in spec.trials if t.key not in done], beats, dev, progress,
                    workers=workers if own_beats else 1, mitdb=mitdb, device_name=device)
    parent = parent_run(spec)
    study = queue.open_study(queue_name(spec), storage)
    try:
        with study_lock(spec) as owner:
            state = queue.reconcile(study, storage, [t.key for t in spec.trials], finished_keys(spec), owner)
            print(f"study {spec.name}: {spec.scale_summary}; {state['finished']} finished, {state['interrupted']} "
                  f"interrupted (re-queued), {state['to_run']} to run", flush=True)
            # no idle or oversubscribed workers here; the confirmation gets its own count from `workers`
            n_workers = min(workers, state["to_run"], len(os.sched_getaffinity(0)))
            if n_workers <= 1:
                run_worker(spec, storage_url, parent, beats=beats, device=device, progress=progress)
            else:
                spawn_workers(spec, n_workers, storage_url, parent, mitdb, device)
    except BaseException:
        tracking.set_status(parent, "KILLED")
        raise
    elsewhere = queue.running_elsewhere(study, storage)
    missing = {t.key for t in spec.trials} - finished_keys(spec)
    if not close_parent(spec, parent) and not missing <= set(elsewhere):
        tracking.set_status(parent, "FAILED")  # else the process of the last trial closes it
    table = summary(spec, elsewhere)
    if table["status"].str.startswith("FINISHED").any():
        try:
            attach_report(spec, parent)
        except Exception as e:  # the trials are done and kept: a report that cannot be drawn says why
            print(f"warning: study {spec.name}: its report was not attached to the parent run "
                  f"({type(e).__name__}: {e})", file=sys.stderr)
    print(table.to_string(index=False), flush=True)
    for line in teacher_lines(spec, beats.fingerprint):
        print(line, flush=True)
    print(f"MLflow: {tracking.ui_link(spec.name)} (make ui)", flush=True)
    _say_running_elsewhere(spec, {k: w for k, w in elsewhere.items() if k in missing})
    unfinished = table[~table["status"].str.startswith("FINISHED") & (table["status"] != RUNNING_ELSEWHERE)]
    if len(unfinished):
        counts = ", ".join(f"{s}: {n}" for s, n in unfinished["status"].value_counts().items())
        raise StudyIncomplete(f"study {spec.name}: {len(unfinished)} of {len(table)} trials did not finish ({counts}; "
                              f"first: {unfinished['trial'].iloc[0]}); the reasons are the runs' failure_reason "
                              f"tags in MLflow; a rerun retries them and keeps the finished ones")
    if spec.stage == "screen" and not spec.part and then_confirm:
        confirm = run_study(confirmation_stage(spec), workers, storage_url, mitdb, device,
                            None if own_beats else beats, progress)
        return pd.concat([table.assign(stage="screen"), confirm.assign(stage="confirm")], ignore_index=True)
    return table


def attach_report(spec: StudySpec, parent: str) -> None:
    """The study's report page (`make report`'s HTML, CSV and Markdown of its finished runs at
    this scale) under ``report/`` of its parent run, replacing the previous one."""
    from ablation.report.aggregate import collect
    from ablation.report.page import write_report
    with tempfile.TemporaryDirectory() as tmp:
        write_report(collect(spec.name, scale=spec.scale), Path(tmp))
        tracking.log_report(parent, Path(tmp))


def close_parent(spec: StudySpec, parent: str) -> bool:
    """End the parent run FINISHED when every trial of `spec` is finished (SCHEDULED for a part of a
    study run in parts or a screen: more may follow); True then."""
    if not finished_keys(spec) >= {t.key for t in spec.trials}:
        return False
    # a finished part of a study run in parts, or a screen, leaves its parent SCHEDULED: more may follow
    tracking.set_status(parent, "SCHEDULED" if spec.part or spec.stage == "screen" else "FINISHED")
    return True


def _say_running_elsewhere(spec: StudySpec, elsewhere: dict[str, str]) -> None:
    """Say which trials other live processes are training (not a failure: they finish there)."""
    if elsewhere:
        n = len(elsewhere)
        print(f"study {spec.name}: {n} trial{'s are' if n > 1 else ' is'} still running in another process "
              f"({', '.join(sorted(set(elsewhere.values())))}): {'they finish' if n > 1 else 'it finishes'} "
              f"there, and the last to finish closes the parent run", flush=True)


class StudyIncomplete(UserError):
    """Some trials of a study, or teacher runs it needs, failed (each with its reason, in MLflow or
    printed by its process); the others finished. The CLI says so in one line and exits 2."""


def spawn_workers(spec: StudySpec, workers: int, storage_url: str | None, parent: str,
                  mitdb: str | None, device: str | None) -> None:
    """Start `workers` worker processes on this machine, each with its share of the cores."""
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    cmd = [sys.executable, "-m", "ablation", "worker", str(spec.path), "--scale", spec.scale,
           "--parent-run-id", parent, "--threads", str(threads), "--tracking-uri", tracking.current_uri(),
           "--storage", storage_url or queue.default_storage_url()]
    cmd += ["--mitdb", mitdb] if mitdb else []
    cmd += ["--device", device] if device else []
    cmd += ["--folds", *map(str, spec.folds_only)] if spec.folds_only else []
    cmd += ["--variants", *spec.variants_only] if spec.variants_only else []
    cmd += ["--stage", spec.stage] if spec.stage else []
    procs = [subprocess.Popen(cmd) for _ in range(workers)]
    for p in procs:  # a worker's failed trials show in the study's summary, and make run_study fail
        p.wait()


def _claim(study) -> tuple[object, str] | None:
    """Pop one WAITING trial of the queue; None when the queue is empty."""
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return None
    t = study.ask()
    t.set_user_attr("worker", queue.worker_id())
    key = t.user_attrs.get("trial_key")
    if key is None:  # another worker took the last waiting trial first; ask() made a blank one
        t.set_user_attr("blank", True)
        study.tell(t, state=TrialState.FAIL)
        return None
    return t, key


def _kill_stale_runs(spec: StudySpec, key: str) -> None:
    """A RUNNING MLflow run of a trial we now hold belonged to a worker that died."""
    for r in tracking.trial_runs(spec.name, "RUNNING", key):
        tracking.set_status(r.info.run_id, "KILLED")


def run_worker(spec: StudySpec, storage_url: str | None, parent_run_id: str, beats: Beats | None = None,
               mitdb: str | None = None, device: str | None = None, progress: bool = False) -> int:
    """Train queued trials of `spec` until the queue is empty; returns how many this worker ran."""
    beats = study_beats(spec, mitdb, beats)
    storage = queue.open_storage(storage_url)
    study = queue.open_study(queue_name(spec), storage)
    by_key: dict[str, Trial] = {t.key: t for t in spec.trials}
    position = {t.key: i + 1 for i, t in enumerate(spec.trials)}  # within a part run with --folds too
    n = len(spec.trials)
    done = 0
    while (claimed := _claim(study)) is not None:
        ot, key = claimed
        trial = by_key.get(key)
        if trial is None:  # queued by another version of the study file
            study.tell(ot, state=TrialState.FAIL)
            continue
        label = f"[{position[key]}/{n}] {trial.name} fold={trial.axes['fold']} seed={trial.axes['seed']}"
        print(f"{label}: start (pid {os.getpid()})", flush=True)
        _kill_stale_runs(spec, key)
        tags = {"trial_key": key, "study": spec.name, "scale": spec.scale, "trial_name": trial.name,
                "optuna_trial": str(ot.number), **{f"axis.{k}": str(v) for k, v in trial.axes.items()},
                **({"stage": trial.stage} if trial.stage else {})}
        t0 = time.perf_counter()
        try:
            with queue.heartbeat(storage, ot):
                out = execute(trial.config, data=load_data(trial.config.data, beats=beats, progress=False),
                              device=device, experiment=spec.name, parent_run_id=parent_run_id, extra_tags=tags,
                              run_name=f"{trial.name} f{trial.axes['fold']} s{trial.axes['seed']}",
                              progress=progress,
                              on_epoch=lambda e, row: print(f"{label}: epoch {e} val_auc {row['val_auc']:.4f}",
                                                            flush=True))
        except Exception as e:  # one failed trial never stops the others
            study.tell(ot, state=TrialState.FAIL)
            print(f"{label}: FAILED ({type(e).__name__}: {e})", flush=True)
            continue
        except BaseException:
            study.tell(ot, state=TrialState.FAIL)
            raise
        value = tracking.get_run(out.run_id).data.metrics.get("best_val_auc")
        study.tell(ot, value)
        export_results(spec)
        done += 1
        print(f"{label}: done, best val AUC {value:.4f}, {time.perf_counter() - t0:.0f} s", flush=True)
    close_parent(spec, parent_run_id)  # this worker may have run the study's last trial
    return done


def teacher_lines(spec: StudySpec, data_fingerprint: str) -> list[str]:
    """One line per teacher the study's students read, beside their table: where it came from
    (imported from ``results/teachers/`` or trained) and its validation and test AUC."""
    configs = {t.key(): t for trial in spec.trials if trial.config.reads_teacher()
               for t in trial.config.teacher_configs()}
    lines = []
    for cfg in configs.values():
        key = run_key(cfg, data_fingerprint)
        run_id = tracking.find_finished(TEACHER_EXPERIMENT, key)
        label = f"teacher f{cfg.data.fold} s{cfg.train.seed} ({key[:8]}"
        if run_id is None:  # every trial reading it was already done (MLflow or results/)
            where = "committed in results/teachers/" if teachers.checkpoint_path(key).is_file() else "not trained"
            lines.append(f"{label}): {where}, not read by this run")
            continue
        run = tracking.get_run(run_id)
        m = run.data.metrics
        origin = "imported from results/teachers/" if run.data.tags.get("imported_from") else "trained here"
        lines.append(f"{label}, {origin}): best val AUC {m.get('best_val_auc', float('nan')):.4f}, "
                     f"test AUC {m.get('test_auc', float('nan')):.4f}")
    return lines


def summary(spec: StudySpec, elsewhere: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per trial of the study file: its latest run's status and metrics (RUNNING_ELSEWHERE
    for an unfinished trial of `elsewhere`: keys another live process is training)."""
    latest: dict[str, object] = {}
    for r in sorted(tracking.trial_runs(spec.name), key=lambda r: r.info.start_time):
        k = r.data.tags["trial_key"]
        if k not in latest or latest[k].info.status != "FINISHED":
            latest[k] = r
    committed = results.load(spec.name).drop_duplicates("trial_key", keep="last").set_index("trial_key")
    rows = []
    for t in spec.trials:
        r = latest.get(t.key)
        m = r.data.metrics if r else {}
        minutes = (r.info.end_time - r.info.start_time) / 60_000 if r and r.info.end_time else float("nan")
        status = r.info.status if r else "PENDING"
        if status != "FINISHED" and t.key in committed.index:  # trained on another machine
            m, status = committed.loc[t.key].to_dict(), "FINISHED (results/)"
            minutes = m.get("train_wall_seconds", float("nan")) / 60
        elif status != "FINISHED" and t.key in (elsewhere or {}):
            status = RUNNING_ELSEWHERE
        rows.append({"trial": f"{t.name} f{t.axes['fold']} s{t.axes['seed']}",
                     "status": status, "best_epoch": m.get("best_epoch"),
                     "best_val_auc": m.get("best_val_auc"), "test_auc": m.get("test_auc"),
                     "test_ap": m.get("test_ap"), "test_f1": m.get("test_f1"), "minutes": minutes})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS).round(4)

