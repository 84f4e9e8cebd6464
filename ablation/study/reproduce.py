"""Retrain a study's committed trials and compare: the check that a results table is what its
keys say it is.

Each selected trial with a FINISHED row in ``results/<study>.csv`` is trained again from its config
in a scratch MLflow store (`tracking.scratch_store`: the committed rows and this machine's runs
cannot stand in for it; its teacher is imported from ``results/teachers/``). A trial reproduced
identically has the committed SHA-256 of its weights (rows from before the weights were hashed
compare their test AUC to the table's six digits instead, said in the `match` column).

Every outcome is also kept in ``results/reproductions.csv`` (one row per study, trial key and
machine: CPU model, ISA flags, numeric path, torch), so that the run-to-run noise floor a report
states rests on committed checks made on named machines.
"""
from __future__ import annotations

import datetime

import pandas as pd

from ablation import numerics, tracking
from ablation.config import ConfigError
from ablation.data.dataset import load_data
from ablation.data.mitdb import Beats
from ablation.paths import RESULTS, upsert_row
from ablation.run import execute
from ablation.study import results
from ablation.study.spec import StudySpec

COLUMNS = ["trial", "fold", "seed", "committed_test_auc", "new_test_auc", "match", "identical"]
TABLE = "reproductions.csv"
MACHINE = ("cpu_model", "isa_flags", "mode", "torch")  # with study and trial key: one row per check


def committed_trials(spec: StudySpec) -> list[tuple[object, pd.Series]]:
    """(trial, committed row) for every trial of `spec` the results table holds as FINISHED."""
    rows = results.load(spec.name)
    rows = rows[rows["status"] == "FINISHED"].drop_duplicates("trial_key", keep="last").set_index("trial_key")
    found = [(t, rows.loc[t.key]) for t in spec.trials if t.key in rows.index]
    if not found:
        raise ConfigError(f"{results.results_path(spec.name)}: no committed trial of {spec.name}{spec.part} "
                          f"({len(spec.trials)} trials selected); nothing to reproduce")
    return found


def compare(committed: pd.Series, run) -> tuple[str, bool]:
    """How the retrained run is compared with its row, and whether it matched."""
    new_hash = run.data.tags.get("weights_sha256")
    old_hash = committed.get("weights_sha256")
    if isinstance(old_hash, str) and old_hash:
        return "weights SHA-256", new_hash == old_hash
    return "test AUC to 6 digits", f"{run.data.metrics['test_auc']:.6g}" == f"{float(committed['test_auc']):.6g}"


def record(study: str, trial_key: str, committed: pd.Series, outcome: dict, threads: int) -> None:
    """Keep one reproduction check in ``results/reproductions.csv`` (a rerun on the same machine
    replaces its row)."""
    machine = {k.removeprefix("numerics."): v for k, v in numerics.record(threads).items()}
    row = {"study": study, "trial_key": trial_key, **{k: outcome[k] for k in COLUMNS},
           "committed_run_id": committed["run_id"], **{k: machine[k] for k in MACHINE},
           "git_commit": tracking.git_commit(), "date": datetime.date.today().isoformat()}
    with tracking.key_lock("results-reproductions"):
        upsert_row(RESULTS / TABLE, row, ("study", "trial_key", *MACHINE))


def noise_floor(study: str) -> str | None:
    """One sentence on the study's reproduction checks (``results/reproductions.csv``): how many
    retrained trials were identical, on which machines, and the sd of the test-AUC differences;
    None when the study has none."""
    path = RESULTS / TABLE
    table = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["study"])
    table = table[table["study"] == study]
    if table.empty:
        return None
    diff = table["new_test_auc"] - table["committed_test_auc"]
    same = table["identical"].astype(str).str.lower() == "true"
    machines = "; ".join(sorted({f"{r.cpu_model} ({r.isa_flags})" for r in table.itertuples()}))
    sd = f"{diff.std(ddof=1):.4f}" if len(diff) > 1 else "n/a (one check)"
    return (f"Run-to-run noise floor: {int(same.sum())} of {len(table)} committed trials retrained by "
            f"`reproduce` gave identical weights (sd of the test-AUC differences {sd}, largest "
            f"{diff.abs().max():.4f}), on {machines}")


def reproduce(spec: StudySpec, mitdb: str | None = None, device: str | None = None,
              beats: Beats | None = None, progress: bool = True) -> pd.DataFrame:
    """Retrain the committed trials of `spec` and return one row per trial (`COLUMNS`)."""
    found = committed_trials(spec)
    rows = []
    with tracking.scratch_store():
        for i, (trial, committed) in enumerate(found, 1):
            label = f"[{i}/{len(found)}] {trial.name} f{trial.axes['fold']} s{trial.axes['seed']}"
            print(f"{label}: retraining (committed run {committed['run_id']})", flush=True)
            out = execute(trial.config, data=load_data(trial.config.data, mitdb, beats, progress=False),
                          device=device, experiment=f"reproduce-{spec.name}", skip_finished=False, progress=progress)
            run = tracking.get_run(out.run_id)
            match, same = compare(committed, run)
            rows.append({"trial": trial.name, "fold": trial.axes["fold"], "seed": trial.axes["seed"],
                         "committed_test_auc": float(committed["test_auc"]),
                         "new_test_auc": run.data.metrics["test_auc"], "match": match, "identical": same})
            record(spec.name, trial.key, committed, rows[-1], trial.config.train.threads)
            print(f"{label}: committed {rows[-1]['committed_test_auc']:.6f}, new {rows[-1]['new_test_auc']:.6f}, "
                  f"{'identical' if same else 'DIFFERENT'} ({match})", flush=True)
    return pd.DataFrame(rows, columns=COLUMNS)
