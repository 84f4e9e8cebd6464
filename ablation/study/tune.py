"""Tuning: Optuna searches a study's ``search`` space on validation AUC; test data stay out.

    search:
      params:                      # dotted config keys -> distributions
        distill.kd.T: {type: float, low: 1.0, high: 20.0, log: true}
        distill.kd.weight: {type: float, low: 0.01, high: 10.0, log: true}
        distill.kd.kind: {type: categorical, choices: [score_kl, recon]}
        train.epochs: {type: int, low: 2, high: 8}
      sampler: {name: tpe, seed: 0}            # tpe | random
      pruner: {name: median, n_startup_trials: 5, n_warmup_steps: 2}   # median | hyperband | none
      n_trials: 30                             # finished (complete or pruned) trials over all workers
      timeout_minutes: null                    # per worker
      target: 0.95                             # stop every worker once the best validation AUC reaches it
      baselines: [{name: untuned, set: {}}]    # enqueued first (skipped if already there)

Each trial trains the study's base config (at the chosen scale) with the sampled values, reports the
validation AUC of every epoch to Optuna (pruning), and is an MLflow child run. The data bundle of a
search trial has no test set at all, so no test beat can reach the search.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import optuna
from optuna.trial import TrialState

from ablation import tracking
from ablation.config import ConfigError, Range, RunConfig, from_dict, set_dotted
from ablation.data.dataset import load_data
from ablation.data.mitdb import Beats
from ablation.errors import NotFound
from ablation.paths import DASHBOARDS
from ablation.run import execute
from ablation.study import queue, search_table
from ablation.study.runner import ensure_teachers, parent_run, run_study, study_beats
from ablation.study.spec import StudySpec, Trial
from ablation.train.loop import Diverged, pick_device


@dataclass
class ParamSpec:
    type: Literal["float", "int", "categorical"] = "float"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list] = None


@dataclass
class SamplerSpec:
    name: Literal["tpe", "random"] = "tpe"
    seed: int = 0


@dataclass
class PrunerSpec:
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Range(0, None, default=5)
    n_warmup_steps: int = Range(0, None, default=2)
    min_resource: int = Range(1, None, default=1)


@dataclass
class Baseline:
    name: str = "untuned"
    set: dict = field(default_factory=dict)


@dataclass
class SearchSpec:
    params: dict[str, ParamSpec] = field(default_factory=dict)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    n_trials: int = Range(1, None, default=30)
    timeout_minutes: Optional[float] = Range(0.0, None, default=None)
    target: float = Range(0.0, 1.0, default=0.95)
    baselines: list[Baseline] = field(default_factory=lambda: [Baseline()])


def parse_search(spec: StudySpec) -> SearchSpec:
    """The study's ``search`` section, validated: every parameter must be a known config key whose
    sampled values make a valid config."""
    src = f"{spec.path}: search"
    if not spec.search:
        raise ConfigError(f"{spec.path}: no search section: a study needs `search.params` to be tuned")
    raw = dict(spec.search)
    params = raw.pop("params", None)
    if not params or not isinstance(params, dict):
        raise ConfigError(f"{src}: `params` must map dotted config keys to distributions")
    search = from_dict(SearchSpec, raw, src=str(spec.path), prefix="search")
    search.params = {k: from_dict(ParamSpec, v, src=str(spec.path), prefix=f"search.params.{k}")
                     for k, v in params.items()}
    base = spec.trials[0].config.to_dict()
    for key, p in search.params.items():
        where = f"{src}.params.{key}"
        if p.type == "categorical":
            if not p.choices:
                raise ConfigError(f"{where}: a categorical parameter needs a non-empty `choices` list")
            probes = p.choices
        else:
            if p.low is None or p.high is None or p.low >= p.high:
                raise ConfigError(f"{where}: needs numbers low < high, got low={p.low}, high={p.high}")
            if p.log and p.low <= 0:
                raise ConfigError(f"{where}: log scale needs low > 0, got {p.low}")
            probes = [int(p.low), int(p.high)] if p.type == "int" else [p.low, p.high]
        for value in probes:  # the range's ends must give valid configs (unknown keys, bounds)
            from_dict(RunConfig, set_dotted(base, key, value), src=f"{where} = {value!r}")
    for b in search.baselines:
        _with(base, b.set, f"{src}.baselines[{b.name}]")
    return search


def _with(base: dict, values: dict[str, Any], src: str) -> RunConfig:
    d = base
    for key, value in values.items():
        d = set_dotted(d, key, value)
    return from_dict(RunConfig, d, src=src)


def _suggest(trial: optuna.Trial, key: str, p: ParamSpec) -> Any:
    if p.type == "categorical":
        return trial.suggest_categorical(key, p.choices)
    if p.type == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)


class _TrialSeeded:
    """Reseeds the sampler before each trial from (seed, trial number). Every worker builds its own
    sampler from the file's seed; seeded once per process, the workers' k-th draws would coincide
    and they would train the same trials. Seeded per trial, a search stays reproducible."""

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        seed = (self._seed_base * 1_000_003 + trial.number) % 2**32
        for rng in self._rngs():
            rng.rng.seed(seed)


class _TPE(_TrialSeeded, optuna.samplers.TPESampler):
    def __init__(self, seed: int):
        super().__init__(seed=seed, constant_liar=True)  # running trials count as bad: workers spread out
        self._seed_base = seed

    def _rngs(self):
        return self._rng, self._random_sampler._rng


class _Random(_TrialSeeded, optuna.samplers.RandomSampler):
    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self._seed_base = seed

    def _rngs(self):
        return (self._rng,)


def make_sampler(s: SamplerSpec) -> optuna.samplers.BaseSampler:
    """The search's sampler (TPE or random), its draws seeded per trial from `s.seed`."""
    return _TPE(s.seed) if s.name == "tpe" else _Random(s.seed)


def make_pruner(p: PrunerSpec, max_epochs: int) -> optuna.pruners.BasePruner:
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=max_epochs)
    return optuna.pruners.NopPruner()


def tune_name(spec: StudySpec) -> str:
    return f"{spec.name}@{spec.scale}/search"


class TargetReached:
    """Optuna callback: stop this worker once the study's best value reaches the target (every
    worker runs it, since `study.stop()` only ends the calling process's loop)."""

    def __init__(self, target: float):
        self.target = target

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if done and max(t.value for t in done) >= self.target:
            study.stop()


def open_search(spec: StudySpec, search: SearchSpec, storage_url: str | None) -> optuna.Study:
    """The search's Optuna study; where the storage lacks it, rebuilt from the committed table of
    its finished trials (`search_table`), so a fresh machine resumes the search."""
    study = optuna.create_study(study_name=tune_name(spec), storage=queue.open_storage(storage_url),
                                direction="maximize", sampler=make_sampler(search.sampler), load_if_exists=True,
                                pruner=make_pruner(search.pruner, spec.trials[0].config.train.epochs))
    if n := search_table.replay(spec.name, spec.scale, study, search.params):
        print(f"search {tune_name(spec)}: {n} finished trials replayed from {search_table.table_path(spec.name)}",
              flush=True)
    return study


COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials `n_trials` counts


def _retry(study: optuna.Study, params: dict[str, Any], attrs: dict[str, Any]) -> None:
    keep = {k: v for k, v in attrs.items() if k == "baseline"}
    study.enqueue_trial(params, user_attrs=keep)


def requeue_dead(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose worker process on this host is gone (SIGKILL, a lost machine:
    a journal has no heartbeat) and queue their parameters again; returns how many. A trial with
    no recorded worker, or one on another host, is left alone."""
    dead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") and not queue.worker_alive(t.user_attrs["worker"])]
    for t in dead:
        study.tell(t.number, state=TrialState.FAIL)
        _retry(study, t.params, t.user_attrs)
    return len(dead)


def run_search(spec: StudySpec, storage_url: str | None = None, mitdb: str | None = None,
               beats: Beats | None = None, device: str | None = None, progress: bool = False) -> optuna.Study:
    """One worker's share of the search (start several for parallel search on a shared storage)."""
    search = parse_search(spec)
    base = spec.trials[0].config.to_dict()
    beats = study_beats(spec, mitdb, beats)
    ensure_teachers([spec.trials[0].config], beats, pick_device(device or spec.trials[0].config.train.device), progress)
    study = open_search(spec, search, storage_url)
    requeue_dead(study)
    for b in search.baselines:  # known settings first: the search starts from them
        values = {k: v for k, v in b.set.items() if k in search.params}
        defaults = {k: _dotted_get(base, k) for k in search.params if k not in values}
        study.enqueue_trial({**defaults, **values}, user_attrs={"baseline": b.name}, skip_if_exists=True)
    parent = parent_run(spec)

    def objective(trial: optuna.Trial) -> float:
        values = {k: _suggest(trial, k, p) for k, p in search.params.items()}
        cfg = _with(base, values, f"{spec.path}: trial {trial.number}")
        data = load_data(cfg.data, beats=beats, progress=False, with_test=False)
        tags = {"study": spec.name, "scale": spec.scale, "optuna_trial": str(trial.number), "search": "1",
                **{f"axis.{k}": str(v) for k, v in values.items()}}

        def report(epoch: int, row: dict[str, float]) -> None:
            trial.report(row["val_auc"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val AUC {row['val_auc']:.4f})")

        trial.set_user_attr("worker", queue.worker_id())
        try:
            out = execute(cfg, data=data, device=device, experiment=spec.name, parent_run_id=parent,
                          extra_tags=tags, progress=progress, skip_finished=False, on_epoch=report)
        except SystemExit as e:  # SIGTERM: Optuna fails the trial on KeyboardInterrupt, then re-raises it
            _retry(trial.study, trial.params, trial.user_attrs)
            raise KeyboardInterrupt(f"worker stopped (exit {e.code})") from e
        except optuna.TrialPruned:
            _mark_last(spec.name, trial.number, "PRUNED")
            raise
        except Diverged:
            _mark_last(spec.name, trial.number, "FAIL")
            raise
        tracking.set_tag(out.run_id, "optuna_state", "COMPLETE")
        return out.result.val["auc"]

    timeout = search.timeout_minutes * 60 if search.timeout_minutes else None
    if len(study.get_trials(states=COUNTED)) < search.n_trials or study.get_trials(states=(TrialState.WAITING,)):
        try:
            study.optimize(objective, timeout=timeout, catch=(Diverged,),
                           callbacks=[lambda st, _: search_table.write(spec.name, spec.scale, st),
                                      optuna.study.MaxTrialsCallback(search.n_trials, states=COUNTED),
                                      TargetReached(search.target)])
        except BaseException as e:
            tracking.set_status(parent, "KILLED")  # interrupted: a rerun resumes the same search
            if isinstance(e.__cause__, SystemExit):
                raise e.__cause__ from None
            raise
    tag_best(study, spec)
    tracking.set_status(parent, "FINISHED")
    return study


def search_summary(study: optuna.Study) -> dict[str, float]:
    """Trial counts by state, the best value, and what pruning saved: each pruned trial would have
    run as long as the median complete trial, so saved = n_pruned x median(complete) - sum(pruned)."""
    def seconds(states) -> list[float]:
        return [(t.datetime_complete - t.datetime_start).total_seconds()
                for t in study.get_trials(deepcopy=False, states=states) if t.datetime_complete and t.datetime_start]

    complete, pruned = seconds((TrialState.COMPLETE,)), seconds((TrialState.PRUNED,))
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    median = statistics.median(complete) if complete else float("nan")
    spent = sum(complete) + sum(pruned)
    saved = len(pruned) * median - sum(pruned)
    return {**counts, "best_value": study.best_value if complete else float("nan"),
            "best_trial": study.best_trial.number if complete else -1,
            "median_complete_s": median, "pruned_s": sum(pruned), "saved_s": saved, "total_s": spent,
            "saved_fraction": saved / (spent + saved) if complete else float("nan")}


def format_summary(s: dict[str, float]) -> str:
    return (f"{s['complete'] + s['pruned'] + s['fail']} trials: {s['complete']} complete, {s['pruned']} pruned, "
            f"{s['fail']} failed; best validation AUC {s['best_value']:.4f} (trial {s['best_trial']}); "
            f"pruning saved ~{s['saved_s'] / 60:.1f} min ({s['saved_fraction']:.0%} of the search without "
            f"pruning; median complete trial {s['median_complete_s']:.0f} s)")


def _dotted_get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[int(part)] if isinstance(d, list) else d[part]
    return d


def _mark_last(experiment: str, number: int, state: str) -> None:
    """Tag the MLflow run of Optuna trial `number` with its final Optuna state."""
    runs = tracking.search_runs(experiment, number)
    if runs:
        tracking.set_tag(runs[0].info.run_id, "optuna_state", state)


def tag_best(study: optuna.Study, spec: StudySpec) -> None:
    """Tag the MLflow run of the study's best trial (and untag the others)."""
    if tracking.experiment(spec.name) is None or not study.get_trials(states=(TrialState.COMPLETE,)):
        return
    best = str(study.best_trial.number)
    for r in tracking.search_runs(spec.name):
        tracking.set_tag(r.info.run_id, "best_trial", str(r.data.tags.get("optuna_trial") == best).lower())



ALL_FOLDS = (0, 1, 2, 3, 4)


def confirm_spec(spec: StudySpec, study: optuna.Study, folds: list[int], seeds: list[int]) -> StudySpec:
    """The confirmation study: the best searched config (``tuned``) and the study's first baseline
    (``untuned``), each retrained on every fold and seed and scored on test data. A subset of the
    five folds is a part of it with its own queue: two runners on disjoint folds run side by side."""
    search = parse_search(spec)
    base = spec.trials[0].config.to_dict()
    variants = {"tuned": study.best_trial.params, "untuned": search.baselines[0].set}
    trials = []
    for name, values in variants.items():
        for fold in folds:
            for seed in seeds:
                cfg = _with(base, {**values, "data.fold": fold, "train.seed": seed}, f"{spec.path}: confirm {name}")
                trials.append(Trial(len(trials), name, {"variant": name, "fold": fold, "seed": seed}, cfg))
    part = tuple(sorted(set(folds))) if sorted(set(folds)) != list(ALL_FOLDS) else None  # a part has its own queue
    return StudySpec(f"{spec.name}-confirm", spec.path, f"confirmation of {tune_name(spec)}: "
                     f"best trial {study.best_trial.number} ({study.best_trial.params})", spec.scale, trials,
                     folds_only=part)


def tune(spec: StudySpec, storage: str | None, search: bool = True, confirm: bool = False,
         folds: list[int] = ALL_FOLDS, seeds: list[int] = (0, 1, 2), out: Path | None = None,
         mitdb: str | None = None, device: str | None = None) -> None:
    """The tuning workflow: the search (unless `search` is False), then with `confirm` the best
    and the untuned config retrained on `folds` x `seeds` and a report of the comparison in `out`."""
    if search:
        print(format_summary(search_summary(run_search(spec, storage, mitdb=mitdb, device=device))))
    if not confirm:
        return
    study = open_search(spec, parse_search(spec), storage)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise NotFound(f"no finished trial of the search {tune_name(spec)!r} (Optuna storage or "
                          f"{search_table.table_path(spec.name)}) to confirm; run `python -m ablation tune {spec.name}` first")
    conf = confirm_spec(spec, study, list(folds), list(seeds))
    run_study(conf, storage_url=storage, mitdb=mitdb, device=device)
    from ablation.report import build_report
    print(f"report: {build_report(conf.name, out or DASHBOARDS, baseline='untuned')}")
