"""A search's trials as committed data: ``results/<study>-search.csv``, one row per finished trial.

The Optuna storage (``runs/optuna``) lives on one machine, like MLflow's store. After every trial
the search rewrites this table (state, value, parameters, per-epoch validation AUCs, times), and a
search started where the storage has none of its trials replays the table into it first: the
sampler and the pruner see the finished trials, none is trained again, and the trial budget
counts them. So a search at full data can run a few trials per session on fresh machines.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ablation import tracking
from ablation.errors import BadInput
from ablation.paths import replace_csv
from ablation.study.results import results_path

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def table_path(study_name: str) -> Path:
    return results_path(f"{study_name}-search")


def distribution(p) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of a `ParamSpec` (what `trial.suggest_*` declares for it)."""
    if p.type == "categorical":
        return optuna.distributions.CategoricalDistribution(p.choices)
    if p.type == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def _row(t: FrozenTrial, scale: str) -> dict:
    return {"scale": scale, "number": t.number, "state": t.state.name, "value": t.value,
            "params": json.dumps(t.params, sort_keys=True), "intermediate": json.dumps(t.intermediate_values),
            "user_attrs": json.dumps(t.user_attrs, sort_keys=True),
            "start": t.datetime_start.isoformat() if t.datetime_start else "",
            "complete": t.datetime_complete.isoformat() if t.datetime_complete else "",
            **{f"param.{k}": v for k, v in t.params.items()}}


def write(study_name: str, scale: str, study: optuna.Study) -> None:
    """Rewrite this scale's rows from the storage's finished trials (other scales' rows kept)."""
    path = table_path(study_name)
    with tracking.key_lock(f"search-{study_name}"):
        old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["scale"])
        rows = pd.DataFrame([_row(t, scale) for t in study.get_trials(deepcopy=False, states=FINISHED)])
        replace_csv(path, pd.concat([old[old["scale"] != scale], rows], ignore_index=True))


def replay(study_name: str, scale: str, study: optuna.Study, params: dict) -> int:
    """Add the table's trials of `scale` to an empty `study` (`params`: the search's ParamSpecs);
    returns how many. A row that no longer fits the search space is an error, not skipped."""
    path = table_path(study_name)
    if study.get_trials(deepcopy=False) or not path.exists():
        return 0
    rows = pd.read_csv(path, keep_default_na=False)
    rows = rows[rows["scale"].astype(str) == scale]
    dists = {k: distribution(p) for k, p in params.items()}
    for r in rows.itertuples():
        values = json.loads(r.params)
        state = TrialState[r.state]
        try:
            if set(values) != set(dists):
                raise ValueError(f"parameters {sorted(values)}, the search's are {sorted(dists)}")
            study.add_trial(FrozenTrial(
                number=r.number, trial_id=r.number, state=state,
                value=float(r.value) if state == TrialState.COMPLETE else None,
                datetime_start=dt.datetime.fromisoformat(r.start) if r.start else None,
                datetime_complete=dt.datetime.fromisoformat(r.complete) if r.complete else None,
                params=values, distributions=dists, user_attrs=json.loads(r.user_attrs), system_attrs={},
                intermediate_values={int(k): v for k, v in json.loads(r.intermediate).items()}))
        except ValueError as e:
            raise BadInput(f"{path}: trial {r.number} does not fit the search space of {study_name} ({e}); "
                             f"move the table aside to start a new search") from e
    return len(rows)
