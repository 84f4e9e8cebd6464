"""Tuning: the search-space parser and its errors, pruning and the target stop, resume, and that
no test beat reaches the search (synthetic beats: fast, not ECG)."""
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from ablation.config import ConfigError
from ablation.data import dataset
from ablation.study.spec import load_study
from ablation.study.tune import TargetReached, confirm_spec, format_summary, parse_search, run_search, search_summary
from support.tiny import tiny_dict

BASE = tiny_dict("student", train={"epochs": 3}, distill={"kd": {"kind": "recon"}})


def study_file(tmp_path, search, name="tune_t"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "base": BASE, "search": search}))
    return load_study(p)


def test_shipped_tune_headline_parses():
    s = parse_search(load_study("tune_headline"))
    assert s.n_trials >= 30 and s.target == 0.95 and {"distill.kd.T", "train.score_feat_weight"} <= set(s.params)
    assert [b.name for b in s.baselines] == ["untuned", "earlier_project"]


@pytest.mark.parametrize("params,message", [
    ({"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-3}}, "unknown key `train.lrr`"),
    ({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-4}}, "low < high"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "log scale needs low > 0"),
    ({"distill.kd.kind": {"type": "categorical", "choices": ["kl"]}}, "allowed values:"),
    ({"distill.kd.kind": {"type": "categorical"}}, "non-empty `choices`"),
    ({"train.epochs": {"type": "integer", "low": 1, "high": 3}}, "`search.params.train.epochs.type`"),
    ({"data.fold": {"type": "int", "low": 0, "high": 9}}, "out of range"),
])
def test_search_space_errors(tmp_path, params, message):
    with pytest.raises(ConfigError, match="tune_t.yaml") as e:
        parse_search(study_file(tmp_path, {"params": params}))
    assert message in str(e.value)


def test_target_stop_and_pruning_on_a_fast_objective():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for x in (0.5, 0.6, 0.1, 0.2):  # two to set the median, two below it to be pruned
        study.enqueue_trial({"x": x})

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for step in range(5):
            trial.report(x * (step + 1) / 5, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x

    study.optimize(objective, n_trials=200, callbacks=[TargetReached(0.9)])
    states = [t.state for t in study.trials]
    assert max(t.value for t in study.trials if t.state == TrialState.COMPLETE) >= 0.9
    assert len(study.trials) < 200  # stopped at the target
    assert states[2:4] == [TrialState.PRUNED, TrialState.PRUNED]


def test_search_end_to_end_without_test_data_then_resume(tmp_path, tracking_store, synthetic, monkeypatch):
    search = {"params": {"distill.kd.weight": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
                         "distill.kd.kind": {"type": "categorical", "choices": ["recon", "latent"]}},
              "n_trials": 4, "target": 0.999, "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
              "baselines": [{"name": "untuned", "set": {}}]}
    spec = study_file(tmp_path, search)
    calls = []
    real_load = dataset.load_data

    def spy(cfg, *a, **kw):
        calls.append(kw.get("with_test", True))
        return real_load(cfg, *a, **kw)

    monkeypatch.setattr("ablation.study.tune.load_data", spy)
    storage = f"journal:{tmp_path / 'journal.log'}"
    study = run_search(spec, storage, beats=synthetic)
    assert calls and not any(calls)  # every search trial's data had no test set
    assert len(study.trials) == 4
    assert study.trials[0].user_attrs["baseline"] == "untuned"  # enqueued first
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tune_t").experiment_id], "tags.search = '1'")
    assert len(runs) == 4 and not any(k.startswith("test_") for r in runs for k in r.data.metrics)
    assert sum(r.data.tags.get("best_trial") == "true" for r in runs) == 1
    assert {r.data.tags["optuna_state"] for r in runs} <= {"COMPLETE", "PRUNED", "FAIL"}
    parents = client.search_runs([client.get_experiment_by_name("tune_t").experiment_id], "tags.study_parent != ''")
    assert [p.info.status for p in parents] == ["FINISHED"]  # the search's parent run is closed
    again = run_search(spec, storage, beats=synthetic)  # resume: the trial budget is already spent
    assert len(again.trials) == 4
    conf = confirm_spec(spec, again, folds=[0, 1], seeds=[0, 1])
    assert [t.name for t in conf.trials].count("tuned") == 4 and len(conf.trials) == 8
    best = again.best_trial.params
    tuned = conf.trials[0].config
    assert tuned.distill.kd.kind == best["distill.kd.kind"]
    assert tuned.distill.kd.weight == pytest.approx(best["distill.kd.weight"])


def test_search_summary_counts_states_and_pruning_savings():
    import datetime as dt
    study = optuna.create_study(direction="maximize")
    t0 = dt.datetime(2026, 1, 1)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(state, seconds, value=None):
        study.add_trial(optuna.trial.FrozenTrial(
            number=len(study.trials), trial_id=len(study.trials), state=state, value=value,
            datetime_start=t0, datetime_complete=t0 + dt.timedelta(seconds=seconds), params={"x": 0.5},
            distributions=dist, user_attrs={}, system_attrs={}, intermediate_values={0: 0.1}))

    for value, seconds in ((0.7, 100), (0.8, 120), (0.9, 140)):  # median complete trial: 120 s
        add(TrialState.COMPLETE, seconds, value)
    add(TrialState.PRUNED, 30)
    add(TrialState.PRUNED, 50)
    add(TrialState.FAIL, 5)
    s = search_summary(study)
    assert (s["complete"], s["pruned"], s["fail"]) == (3, 2, 1)
    assert s["best_value"] == 0.9 and s["best_trial"] == 2
    assert s["median_complete_s"] == 120 and s["pruned_s"] == 80
    assert s["saved_s"] == 2 * 120 - 80  # two pruned trials would have run 120 s each
    assert s["saved_fraction"] == pytest.approx(160 / (360 + 80 + 160))
    assert "3 complete, 2 pruned, 1 failed" in format_summary(s)


def test_a_search_resumes_on_a_fresh_machine_from_its_committed_table(tmp_path, tracking_store, synthetic,
                                                                      monkeypatch):
    """The Optuna storage is lost with the machine; results/<study>-search.csv is committed: a
    search on an empty storage replays it (nothing retrained, the budget counts it) and goes on."""
    import pandas as pd
    from ablation.study import results, tune
    weight = {"distill.kd.weight": {"type": "float", "low": 0.1, "high": 10.0, "log": True}}
    search = {"params": weight, "n_trials": 2, "target": 0.999, "pruner": {"name": "none"}}
    first = run_search(study_file(tmp_path, search, "tune_r"), f"journal:{tmp_path / 'a.log'}", beats=synthetic)
    table = pd.read_csv(results.RESULTS / "tune_r-search.csv")
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"] and table["value"].tolist() == pytest.approx(
        [t.value for t in first.trials], rel=1e-5)
    real_execute = tune.execute
    monkeypatch.setattr(tune, "execute", lambda *a, **k: pytest.fail("a finished trial was trained again"))
    again = run_search(study_file(tmp_path, search, "tune_r"), f"journal:{tmp_path / 'b.log'}", beats=synthetic)
    assert [(t.params, t.intermediate_values) for t in again.trials] == [
        (t.params, pytest.approx(t.intermediate_values, rel=1e-5)) for t in first.trials]
    assert again.trials[0].user_attrs["baseline"] == "untuned"  # the baseline is not enqueued twice
    monkeypatch.setattr(tune, "execute", real_execute)
    more = run_search(study_file(tmp_path, {**search, "n_trials": 3}, "tune_r"), f"journal:{tmp_path / 'c.log'}",
                      beats=synthetic)
    assert len(more.trials) == 3 and len(pd.read_csv(results.RESULTS / "tune_r-search.csv")) == 3
    other = {"distill.kd.T": {"type": "float", "low": 1.0, "high": 8.0}}
    with pytest.raises(ValueError, match="tune_r-search.csv: trial 0 does not fit"):
        run_search(study_file(tmp_path, {**search, "params": other}, "tune_r"), f"journal:{tmp_path / 'd.log'}",
                   beats=synthetic)


@pytest.mark.parametrize("name", ["tpe", "random"])
def test_two_workers_with_the_seeded_sampler_do_not_propose_the_same_trials(name):
    """Each worker builds its own sampler from the file's seed; the draws must follow the trial
    number (reproducible), not the worker's own count of draws (which repeats across workers)."""
    from ablation.study.tune import SamplerSpec, make_sampler

    def propose(order: str) -> dict[int, float]:
        storage = optuna.storages.InMemoryStorage()
        workers = [optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                       sampler=make_sampler(SamplerSpec(name, seed=0))) for _ in range(2)]
        out = {}
        for w in order:  # which worker asks next
            trial = workers[int(w)].ask()
            out[trial.number] = trial.suggest_float("x", 0.0, 1.0)
        return out

    interleaved = propose("0101")
    assert len(set(interleaved.values())) == 4  # the old per-process seed gave worker 1 worker 0's draws
    assert propose("0011") == interleaved  # trial n's draw depends on n, not on which worker drew it


def test_a_killed_search_worker_leaves_no_trial_running_and_its_trial_is_retried(tmp_path, tracking_store,
                                                                                 synthetic, monkeypatch):
    """SIGTERM ends a worker through sys.exit (SystemExit) inside a trial; SIGKILL leaves it RUNNING.
    Neither may hold a slot of the budget for ever: the trial is FAIL, its parameters run again."""
    import ablation.study.tune as tune_module
    search = {"params": {"distill.kd.weight": {"type": "float", "low": 0.1, "high": 10.0, "log": True}},
              "n_trials": 3, "target": 0.999, "baselines": [{"name": "untuned", "set": {}}]}
    spec = study_file(tmp_path, search, name="tune_killed")
    storage = f"journal:{tmp_path / 'journal.log'}"
    real = tune_module.execute

    def sigterm(*a, **kw):
        raise SystemExit(143)

    monkeypatch.setattr(tune_module, "execute", sigterm)
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        run_search(spec, storage, beats=synthetic)
    study = optuna.load_study(study_name=tune_module.tune_name(spec), storage=tune_module.queue.open_storage(storage))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]  # not RUNNING; queued again
    dead = study.ask({"distill.kd.weight": optuna.distributions.FloatDistribution(0.1, 10.0, log=True)})
    dead.set_user_attr("worker", "nohost-x:0")  # a SIGKILLed worker on this host...
    monkeypatch.setattr(tune_module.queue, "worker_alive", lambda w: w != "nohost-x:0")  # ...whose pid is gone
    monkeypatch.setattr(tune_module, "execute", real)
    done = run_search(spec, storage, beats=synthetic)
    finished = [t for t in done.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 and done.trials[dead.number].state == TrialState.FAIL
    assert finished[0].params == done.trials[0].params  # the interrupted baseline ran again first


def test_confirmation_parts_on_disjoint_folds_have_their_own_queues(tmp_path):
    from ablation.study.runner import queue_name
    search = {"params": {"distill.kd.weight": {"type": "float", "low": 0.1, "high": 10.0, "log": True}},
              "n_trials": 1, "baselines": [{"name": "untuned", "set": {}}]}
    spec = study_file(tmp_path, search, name="tune_parts")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"distill.kd.weight": 2.0})
    study.optimize(lambda t: t.suggest_float("distill.kd.weight", 0.1, 10.0, log=True), n_trials=1)
    whole, a, b = (confirm_spec(spec, study, folds=f, seeds=[0]) for f in ([0, 1, 2, 3, 4], [0, 1, 2], [3, 4]))
    assert whole.folds_only is None and a.folds_only == (0, 1, 2) and b.folds_only == (3, 4)
    assert len({queue_name(whole), queue_name(a), queue_name(b)}) == 3
    assert {t.config.data.fold for t in b.trials} == {3, 4} and len(b.trials) == 4  # tuned + untuned x 2 folds
