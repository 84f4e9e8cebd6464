"""The named queries of `ablation.tracking` (the only module that writes MLflow filter strings)."""
from mlflow.tracking import MlflowClient

from ablation import tracking


def _run(exp: str, status: str, **tags) -> str:
    client = MlflowClient()
    run_id = client.create_run(tracking.experiment_id(exp), tags=tags).info.run_id
    client.set_terminated(run_id, status)
    return run_id


def test_trial_parent_and_search_runs_are_found_by_name(tracking_store):
    exp = "queries"
    parent = _run(exp, "FINISHED", study_parent="queries@cpu")
    done = _run(exp, "FINISHED", trial_key="k1")
    failed = _run(exp, "FAILED", trial_key="k1")
    other = _run(exp, "FINISHED", trial_key="it's")
    old = _run(exp, "FINISHED", search="1", optuna_trial="3")
    new = _run(exp, "FAILED", search="1", optuna_trial="3")
    _run(exp, "FINISHED", search="1", optuna_trial="4")
    ids = lambda runs: {r.info.run_id for r in runs}  # noqa: E731
    assert ids(tracking.trial_runs(exp)) == {done, failed, other}
    assert ids(tracking.trial_runs(exp, "FINISHED")) == {done, other}
    assert ids(tracking.trial_runs(exp, "FAILED", "k1")) == {failed}
    assert ids(tracking.trial_runs(exp, key="it's")) == {other}
    assert ids(tracking.parent_runs(exp)) == ids(tracking.parent_runs(exp, "queries@cpu")) == {parent}
    assert tracking.parent_runs(exp, "queries@quick") == []
    assert [r.info.run_id for r in tracking.search_runs(exp, 3)] == [new, old]
    assert len(tracking.search_runs(exp)) == 3 and len(tracking.runs_of(exp)) == 7
    assert tracking.trial_runs("no_such_experiment") == []
