"""Study files: expansion, validation errors, resume after SIGKILL, the NaN path, two local workers."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ablation.config import ConfigError
from ablation.study.spec import load_study
from support.runs import fresh_runs
from support.tiny import tiny_dict

TINY_BASE = tiny_dict("student")


def write(tmp_path: Path, d: dict, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def test_expansion_counts_names_and_axes(tmp_path):
    d = {"name": "t", "base": TINY_BASE,
         "variants": [{"name": "nce", "set": {"distill.kd.kind": "score_nce"}},
                      {"name": "kd", "set": {"distill.kd.kind": "score_kl"}}],
         "grid": {"distill.kd.T": [1.0, 4.0], "train.lr": [1e-4, 2e-4, 3e-4]},
         "folds": [0, 1], "seeds": [0, 1]}
    spec = load_study(write(tmp_path, d))
    assert len(spec.trials) == 2 * 2 * 3 * 2 * 2
    t = spec.trials[-1]
    assert t.name == "kd/distill.kd.T=4.0/train.lr=0.0003"
    assert t.axes == {"variant": "kd", "distill.kd.T": 4.0, "train.lr": 3e-4, "fold": 1, "seed": 1}
    assert t.config.distill.kd.kind == "score_kl" and t.config.data.fold == 1 and t.config.train.seed == 1
    assert len({x.key for x in spec.trials}) == len(spec.trials)


def test_a_grid_over_a_field_no_term_reads_is_refused(tmp_path):
    """The undistilled student has no temperature: a T grid over it would train one config twice."""
    d = {"name": "t", "base": TINY_BASE, "grid": {"distill.kd.T": [1.0, 4.0]}}
    with pytest.raises(ConfigError, match="same config .* no term reads"):
        load_study(write(tmp_path, d))


def test_keys_stable_under_key_order(tmp_path):
    d = {"name": "t", "base": TINY_BASE, "grid": {"train.lr": [1e-4, 2e-4]}, "seeds": [0, 1]}
    reordered = {"seeds": [0, 1], "grid": {"train.lr": [1e-4, 2e-4]}, "name": "t",
                 "base": {k: TINY_BASE[k] for k in reversed(list(TINY_BASE))}}
    a = load_study(write(tmp_path, d, "a.yaml"))
    b = load_study(write(tmp_path, reordered, "b.yaml"))
    assert [t.key for t in a.trials] == [t.key for t in b.trials]


def test_scales_select_knobs(tmp_path):
    d = {"name": "t", "base": TINY_BASE, "scales": {"cpu": {"train.epochs": 2}, "full": {"train.epochs": 100}}}
    assert load_study(write(tmp_path, d)).trials[0].config.train.epochs == 2
    assert load_study(write(tmp_path, d), "full").trials[0].config.train.epochs == 100
    with pytest.raises(ConfigError, match="no 'gpu'; allowed values: cpu, full"):
        load_study(write(tmp_path, d), "gpu")


@pytest.mark.parametrize("patch,message", [
    ({"bogus": 1}, "unknown key `bogus`"),
    ({"variants": [{"name": "a", "set": {"train.lrr": 1}}]}, "unknown key `train.lrr`"),
    ({"variants": [{"name": "a", "set": {"train.epochs": "many"}}]}, "`train.epochs` must be int"),
    ({"folds": [7]}, "`data.fold` = 7 is out of range [0, 4]"),
    ({"grid": {"distill.kd.kind": ["kl"]}}, "`distill.kd.kind` is 'kl'; allowed values:"),
    ({"grid": {"train.lr_schedule": ["step"]}}, "allowed values: 'constant', 'cosine'"),
    ({"seeds": []}, "`seeds` must be a non-empty list"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "variant names must be unique"),
    ({"seeds": [-1]}, "`seeds` must be non-negative"),
    ({"variants": [{"name": "a", "set": ["train.epochs", 2]}]}, "`variants[0].set` must map dotted keys"),
    ({"name": "teachers"}, "the platform's own MLflow experiment"),
    ({"name": "headline"}, "it would train into that study's experiment"),
])
def test_validation_errors_name_file_and_key(tmp_path, patch, message):
    path = write(tmp_path, {"name": "t", "base": TINY_BASE, **patch})
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert str(path) in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("name: t\ntrain: {epochs: 1}\ntrain: {epochs: 2}\n", "duplicate key 'train'"),
    ("name: t\nbase: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
])
def test_unreadable_study_files_end_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_study(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_more_workers_than_trials_left_start_none_and_finish_the_parent(tmp_path, tracking_store, synthetic,
                                                                        monkeypatch):
    """--workers is capped at the trials left and the cores: a finished study starts no worker."""
    from ablation.study import runner
    spec = load_study(write(tmp_path, {"name": "capped", "base": TINY_BASE}))
    storage = f"journal:{tmp_path / 'journal.log'}"
    runner.run_study(spec, beats=synthetic, progress=False, storage_url=storage)
    monkeypatch.setattr(runner, "spawn_workers", lambda *a, **k: pytest.fail("a worker was started"))
    runner.run_study(spec, workers=1_000_000, beats=synthetic, progress=False, storage_url=storage)
    assert MlflowClient().get_run(runner.parent_run(spec)).info.status == "FINISHED"


def test_unknown_study_lists_the_known_ones():
    with pytest.raises(ConfigError, match="smoke"):
        load_study("no_such_study")


def test_shipped_studies_expand():
    """Every study file under studies/ loads at every scale it declares (each trial validated)."""
    from ablation.paths import PROJECT_ROOT
    for path in sorted((PROJECT_ROOT / "studies").glob("*.yaml")):
        scales = yaml.safe_load(path.read_text()).get("scales") or {"cpu": {}}
        for scale in scales:
            assert load_study(path.stem, scale).trials, (path.stem, scale)


def test_diverged_trial_fails_with_reason_and_study_goes_on(tmp_path, tracking_store, synthetic):
    from ablation.study.runner import StudyIncomplete, run_study, summary
    d = {"name": "nan_study", "base": TINY_BASE,
         "variants": [{"name": "explodes", "set": {"train.w_adv": 1.0e39}}, {"name": "fine"}]}
    spec = load_study(write(tmp_path, d))
    with pytest.raises(StudyIncomplete, match="1 of 2 trials did not finish"):
        run_study(spec, beats=synthetic, progress=False, storage_url=f"journal:{tmp_path / 'journal.log'}")
    assert list(summary(spec).status) == ["FAILED", "FINISHED"]
    exp = MlflowClient().get_experiment_by_name("nan_study")
    failed = MlflowClient().search_runs([exp.experiment_id], "attributes.status = 'FAILED' and tags.trial_key != ''")
    assert len(failed) == 1 and "non-finite" in failed[0].data.tags["failure_reason"]


def test_a_study_runs_fold_by_fold_into_one_table(tmp_path, tracking_store, synthetic):
    """`--folds` runs part of a scale; the rest runs later, and nothing is trained twice."""
    from ablation.study.runner import parent_run, run_study
    from ablation.study.spec import select_part
    spec = load_study(write(tmp_path, {"name": "parts", "base": TINY_BASE, "folds": [0, 1]}))
    storage = f"journal:{tmp_path / 'journal.log'}"
    part = select_part(spec, folds=[1])
    assert [t.config.data.fold for t in part.trials] == [1]
    assert list(run_study(part, beats=synthetic, progress=False, storage_url=storage).status) == ["FINISHED"]
    assert MlflowClient().get_run(parent_run(spec)).info.status == "SCHEDULED"  # fold 0 still to come
    first = _finished_in("parts")
    assert len(run_study(spec, beats=synthetic, progress=False, storage_url=storage)) == 2
    after = _finished_in("parts")
    assert all(after[k] == v for k, v in first.items()) and len(after) == 2  # fold 1 was not retrained
    assert MlflowClient().get_run(parent_run(spec)).info.status == "FINISHED"
    with pytest.raises(ConfigError, match="--folds 3: scale cpu has folds \\[0, 1\\]"):
        select_part(spec, folds=[3])



def test_a_study_runs_some_variants_now_and_the_rest_later(tmp_path, tracking_store, synthetic):
    """`--variants` runs part of a study (say, the variants worth more folds); nothing is trained twice."""
    from ablation.study.runner import parent_run, queue_name, run_study
    from ablation.study.spec import select_part
    spec = load_study(write(tmp_path, {"name": "some_variants", "base": TINY_BASE, "folds": [0, 1],
                                       "variants": [{"name": "a"}, {"name": "b", "set": {"distill.kd.kind": "recon"}}]}))
    storage = f"journal:{tmp_path / 'journal.log'}"
    part = select_part(spec, folds=[1], variants=["b"])
    assert [(t.axes["variant"], t.config.data.fold) for t in part.trials] == [("b", 1)]
    assert queue_name(part) != queue_name(select_part(spec, folds=[1])) != queue_name(spec)
    assert list(run_study(part, beats=synthetic, progress=False, storage_url=storage).status) == ["FINISHED"]
    assert MlflowClient().get_run(parent_run(spec)).info.status == "SCHEDULED"
    first = _finished_in("some_variants")
    assert len(run_study(spec, beats=synthetic, progress=False, storage_url=storage)) == 4
    after = _finished_in("some_variants")
    assert all(after[k] == v for k, v in first.items()) and len(after) == 4
    with pytest.raises(ConfigError, match="--variants c: .* has variants a b"):
        select_part(spec, variants=["c"])

def _finished_in(study: str) -> dict[str, list[str]]:
    client = MlflowClient()
    exp = client.get_experiment_by_name(study)
    return {r.data.tags["trial_key"]: r.info.run_id
            for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' and tags.trial_key != ''")}


def _study_cmd(path, runs, mitdb, *extra):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # mlflow exports it
    env["ABLATION_RUNS"] = str(runs)
    cmd = [sys.executable, "-m", "ablation", "study", str(path), "--mitdb", str(mitdb), "--threads", "1", *extra]
    return cmd, env


def _finished(runs: Path, study: str) -> dict[str, list[str]]:
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study)
    out: dict[str, list[str]] = {}
    for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' and tags.trial_key != ''"):
        out.setdefault(r.data.tags["trial_key"], []).append(r.info.run_id)
    return out


def test_resume_after_sigkill_mid_trial(tmp_path, mitdb):
    """Kill the runner (SIGKILL) during the second trial; the rerun trains only what is missing."""
    d = {"name": "resume", "base": {**TINY_BASE, "train": {"epochs": 3, "device": "cpu"},
                                    "data": {"train_subset": 2048, "val_subset": 300}},
         "variants": [{"name": "a"}, {"name": "b", "set": {"distill.kd.kind": "recon"}},
                      {"name": "c", "set": {"distill.kd.kind": "score_kl"}}]}
    path = write(tmp_path, d)
    runs = fresh_runs(tmp_path)
    cmd, env = _study_cmd(path, runs, mitdb)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "[2/3]" in line and "epoch 0" in line:  # inside trial 2, trial 1 finished
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    before = _finished(runs, "resume")
    assert len(before) == 1
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 finished, 1 interrupted (re-queued), 2 to run" in out.stdout
    after = _finished(runs, "resume")
    keys = {t.key for t in load_study(path).trials}
    assert set(after) == keys and all(len(v) == 1 for v in after.values())  # each trial exactly once
    (k0, ids0), = before.items()
    assert after[k0] == ids0  # the finished trial was not redone
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("resume")
    killed = client.search_runs([exp.experiment_id], "attributes.status = 'KILLED'")
    assert len(killed) == 1  # the interrupted run is marked, not left RUNNING
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert "3 finished, 0 interrupted (re-queued), 0 to run" in again.stdout


def test_two_local_workers_share_the_queue(tmp_path, mitdb):
    d = {"name": "two", "base": {**TINY_BASE, "data": {"train_subset": 512, "val_subset": 300}},
         "variants": [{"name": "a"}, {"name": "b", "set": {"distill.kd.kind": "recon"}}], "seeds": [0, 1]}
    path = write(tmp_path, d)
    runs = fresh_runs(tmp_path)
    cmd, env = _study_cmd(path, runs, mitdb, "--workers", "2")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    after = _finished(runs, "two")
    assert set(after) == {t.key for t in load_study(path).trials}
    assert all(len(v) == 1 for v in after.values())
    pids = {line.split("(pid ")[1].rstrip(")\n") for line in out.stdout.splitlines() if "start (pid" in line}
    assert len(pids) >= 1


def test_two_workers_train_a_studys_missing_teachers_at_once(tmp_path, mitdb):
    """A study over two folds with --workers 2: both folds' teachers train concurrently (in their
    own processes) before the trials, each once, and the trials find them."""
    d = {"name": "teachers2", "base": {**TINY_BASE, "data": {"train_subset": 512, "val_subset": 300},
                                       "distill": {**TINY_BASE["distill"], "kd": {"kind": "recon"}}},
         "folds": [0, 1]}
    path = write(tmp_path, d)
    runs = fresh_runs(tmp_path)
    cmd, env = _study_cmd(path, runs, mitdb, "--workers", "2")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("teachers")
    teachers = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    assert sorted(r.data.params["data.fold"] for r in teachers) == ["0", "1"]
    (a, b) = sorted(teachers, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time  # trained at the same time
    students = _finished(runs, "teachers2")
    used = {client.get_run(ids[0]).data.tags["teacher_run_id"] for ids in students.values()}
    assert used == {a.info.run_id, b.info.run_id}


@pytest.mark.parametrize("workers,folds,threads", [(2, [0], 4), (2, [0, 1], 2), (4, [0, 1], 2)])
def test_missing_teachers_train_at_most_workers_at_once_on_the_cores_there_are(
        tracking_store, synthetic, monkeypatch, workers, folds, threads):
    """Teachers a study lacks train in their own processes before its trials: up to `workers` at
    once, the cores split among those that run (a run trains on its own `train.threads`)."""
    from ablation.study import runner
    from support.tiny import tiny
    started = []
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: set(range(4)))
    monkeypatch.setattr(runner, "_run_at_most", lambda cmds, slots: started.append((cmds, slots)))
    monkeypatch.setattr(runner.tracking, "find_finished", lambda *a: None)  # earlier tests' teachers count as missing
    configs = [tiny("student", data={"fold": f}, distill={"kd": {"kind": "recon"}}) for f in folds]
    runner.ensure_teachers(configs, synthetic, device=None, progress=False, workers=workers)
    [(cmds, slots)] = started
    assert len(cmds) == len(folds) and slots == workers
    assert all(c[c.index("--threads") + 1] == str(threads) for c in cmds)
