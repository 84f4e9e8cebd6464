"""Bad input and faults: one-line errors that name the file, key or value, and no lost or repeated
work (a failed trial does not stop a study, runners started at once share one teacher, a live
worker keeps its trial, damaged stores say how to recover, SIGTERM closes the run as KILLED).
Synthetic beats (not ECG) unless a test takes the ``mitdb`` fixture."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from ablation import tracking
from ablation.__main__ import main
from ablation.config import ConfigError, RunConfig, from_dict
from ablation.study import queue
from ablation.study.spec import load_study
from support.runs import fresh_runs
from support.tiny import TINY_MODEL, tiny_dict

TINY = tiny_dict("student")


def _write(tmp_path: Path, d, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(d if isinstance(d, str) else yaml.safe_dump(d, sort_keys=False))
    return p


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------
# one failed trial does not stop the study
# ------------------------------------------------------------------------------------------------
def test_a_trial_that_fails_at_run_time_is_failed_with_its_reason_and_the_study_goes_on(tmp_path, tracking_store,
                                                                                         synthetic):
    from ablation.study.runner import StudyIncomplete, run_study, summary
    d = {"name": "bad_trial", "base": TINY, "seeds": [0, 1],
         "variants": [{"name": "too_big_a_batch", "set": {"train.batch_size": 65536}}, {"name": "fine"}]}
    spec = load_study(_write(tmp_path, d))
    with pytest.raises(StudyIncomplete, match="2 of 4 trials did not finish"):
        run_study(spec, beats=synthetic, progress=False, storage_url=f"journal:{tmp_path / 'q.log'}")
    assert list(summary(spec).status) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    exp = MlflowClient().get_experiment_by_name(spec.name)
    assert exp is not None, (spec.name, [e.name for e in MlflowClient().search_experiments()])
    failed = MlflowClient().search_runs([exp.experiment_id], "attributes.status = 'FAILED' and tags.trial_key != ''")
    assert len(failed) == 2 and all("fewer than one batch" in r.data.tags["failure_reason"] for r in failed)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf"])
def test_non_finite_numbers_are_refused_at_load(value):
    with pytest.raises(ConfigError, match=r"`train\.lr` must be a finite number"):
        from_dict(RunConfig, {"train": {"lr": yaml.safe_load(value)}})


# ------------------------------------------------------------------------------------------------
# runners started at once
# ------------------------------------------------------------------------------------------------
TEACHER_SCRIPT = """
import sys
from ablation import tracking
from ablation.config import RunConfig, from_dict
from ablation.data.dataset import load_data
from ablation.data.synthetic import synthetic_beats
from ablation.run import ensure_teacher
import torch
torch.set_num_threads(1)
tracking.setup()
cfg = from_dict(RunConfig, {"model": {"ndf": 4, "ngf": 4, "nz": 8}, "train": {"epochs": 2, "device": "cpu"},
                            "data": {"train_subset": 512}})
print(ensure_teacher(cfg, load_data(cfg.data, beats=synthetic_beats(seed=0), progress=False),
                     torch.device("cpu"), progress=False)[0])
"""


def test_two_runners_started_at_once_train_one_teacher(tmp_path):
    env = {**os.environ, "ABLATION_RUNS": str(tmp_path / "runs")}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, "-c", TEACHER_SCRIPT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-800:] for o in outs]
    ids = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(ids) == 1  # the second found the first's teacher
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("teachers")
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_two_cache_builders_started_at_once_on_an_empty_runs_folder(tmp_path, mitdb):
    env = {**os.environ, "ABLATION_RUNS": str(tmp_path / "runs")}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "ablation", "data", "--mitdb", str(mitdb)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-800:] for o in outs]
    assert all("97748 beats" in o[0] for o in outs)
    assert len(list((tmp_path / "runs" / "cache").glob("beats-*.npz"))) == 1
    assert not list((tmp_path / "runs" / "cache").glob("*.tmp.npz"))


def test_cache_builders_write_unique_temporary_files(tmp_path, monkeypatch, mitdb):
    """Two builders on an empty cache: each writes its own temporary file, then renames it."""
    from ablation.data import mitdb as m
    names = []
    real = np.savez_compressed
    monkeypatch.setattr(m.np, "savez_compressed", lambda f, **kw: (names.append(Path(f).name), real(f, **kw)))
    monkeypatch.setattr(m, "cache_path", lambda fp: tmp_path / f"beats-{fp}.npz")
    m.load_beats(m.Protocol(), mitdb, progress=False)
    assert len(names) == 1 and str(os.getpid()) in names[0] and not list(tmp_path.glob("*.tmp.npz"))


# ------------------------------------------------------------------------------------------------
# a restarted runner leaves a live worker's trial alone
# ------------------------------------------------------------------------------------------------
def test_reconcile_fails_only_trials_of_dead_workers(tmp_path):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = queue.open_storage(f"journal:{tmp_path / 'q.log'}")
    study = queue.open_study("live", storage)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    try:
        for key, pid in (("a", alive.pid), ("b", dead.pid)):
            study.enqueue_trial({}, user_attrs={"trial_key": key})
            t = study.ask()
            t.set_user_attr("worker", f"{host}:{pid}")
        state = queue.reconcile(study, storage, ["a", "b"], set(), local_owner=True)
        by_key = {t.user_attrs["trial_key"]: t.state.name for t in study.get_trials() if t.state.name != "WAITING"}
        assert by_key == {"a": "RUNNING", "b": "FAIL"} and state["interrupted"] == 1 and state["to_run"] == 1
    finally:
        alive.kill()


# ------------------------------------------------------------------------------------------------
# large grids, study files, names
# ------------------------------------------------------------------------------------------------
def test_a_huge_grid_is_refused_before_it_is_expanded(tmp_path):
    d = {"name": "huge", "base": TINY, "grid": {"train.lr": [1e-4 * (i + 1) for i in range(1000)],
                                                "train.w_adv": [0.1 * (i + 1) for i in range(1000)]}}
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"1,000,000 trials .* --yes"):
        load_study(_write(tmp_path, d))
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("text, message", [
    ("", "the study file is empty"),
    ("name: x\nvariants: []\n", "`variants` must be a non-empty list"),
    ("- a\n- b\n", "must hold a mapping"),
    ("name: ../escape\n", "must be a plain name"),
    ("name: x\nbase: {role: teacher, distill: {kd: {kind: recon}}}\n", "`distill` is set on a role: teacher"),
    ("name: x\nbase: null\n", "`base` is null: it must map config sections"),
    ("name: x\nbase: [1]\n", "`base` must map config sections"),
])
def test_bad_study_files_are_one_line_errors(tmp_path, capsys, text, message):
    path = _write(tmp_path, text)
    assert message in _one_line_error(capsys, ["study", str(path), "--dry-run"])


def test_a_study_path_that_does_not_exist_is_named(tmp_path, capsys):
    err = _one_line_error(capsys, ["study", str(tmp_path / "x.yaml"), "--dry-run"])
    assert f"no study file {tmp_path / 'x.yaml'}" in err and "x.yaml.yaml" not in err


# ------------------------------------------------------------------------------------------------
# command-line input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["train", "--set", "train.epochs=[1,"], "--set train.epochs: '[1,' is not a valid value"),
    (["train", "--set", "train.lr=!!python/object:os.system x"], "is not a valid value"),
    (["train", "--set", "distill.kd.kind=recon"], "`distill` is set on a role: teacher"),
    (["train", "--device", "tpu", "--set", "train.epochs=1"], "device 'tpu' is not one of"),
    (["tune", "smoke", "--confirm-only"], "no search"),
])
def test_command_line_errors_are_one_line(capsys, tracking_store, argv, message):
    assert message in _one_line_error(capsys, argv)


def test_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--threads", "-3"])
    assert e.value.code == 2 and "'-3' is not a positive integer" in capsys.readouterr().err


def test_threads_are_bounded(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--threads", "1000000000"])
    assert e.value.code == 2 and "--threads: '1000000000' is more than 256" in capsys.readouterr().err


def test_score_refuses_bad_beats_and_bad_checkpoints(tmp_path, capsys, tracking_store, synthetic):
    from ablation.run import execute
    cfg = from_dict(RunConfig, {"model": TINY_MODEL, "train": {"epochs": 1, "device": "cpu"},
                                "data": {"train_subset": 256}})
    run_id = execute(cfg, beats=synthetic, progress=False).run_id
    beats = np.zeros((4, 1, 320), np.float32)
    beats[2, 0, 7] = np.nan
    np.save(tmp_path / "nan.npy", beats)
    out = ["--output", str(tmp_path / "o.npy")]
    err = _one_line_error(capsys, ["score", "--model", run_id, "--input", str(tmp_path / "nan.npy"), *out])
    assert "1 of 4 beats hold NaN or inf (first: beat 2)" in err
    (tmp_path / "text.npy").write_text("not numpy")
    assert "not a numpy .npy array" in _one_line_error(
        capsys, ["score", "--model", run_id, "--input", str(tmp_path / "text.npy"), *out])
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 10)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"G": {}, "D": {}}, tmp_path / "noconfig.pt")
    for name, message in (("garbage.pt", "not a readable checkpoint"), ("list.pt", "not a checkpoint of this"),
                          ("noconfig.pt", "not a checkpoint of this")):
        err = _one_line_error(capsys, ["score", "--model", str(tmp_path / name), "--input",
                                       str(tmp_path / "nan.npy"), *out])
        assert message in err and name in err


# ------------------------------------------------------------------------------------------------
# damaged stores
# ------------------------------------------------------------------------------------------------
def test_an_unreachable_tracking_server_fails_fast(capsys):
    t0 = time.perf_counter()
    err = _one_line_error(capsys, ["train", "--tracking-uri", "http://127.0.0.1:59999", "--set", "train.epochs=1"])
    assert "http://127.0.0.1:59999 is unreachable" in err and time.perf_counter() - t0 < 20


def test_a_corrupt_mlflow_database_is_named(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not sqlite" * 100)
    err = _one_line_error(capsys, ["train", "--tracking-uri", f"sqlite:///{db}", "--set", "train.epochs=1"])
    assert f"{db}: not a usable MLflow database" in err and "move it aside" in err


def test_a_torn_journal_tail_is_cut_and_kept(tmp_path, capsys):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / "q.log"
    study = queue.open_study("torn", queue.open_storage(f"journal:{path}"))
    study.enqueue_trial({}, user_attrs={"trial_key": "k"})
    good = path.read_bytes()
    path.write_bytes(good + b'{"op_code": 5, "worker_id": "x", "trial_id"')  # a writer killed mid-record
    study = queue.open_study("torn", queue.open_storage(f"journal:{path}"))
    import json
    data = path.read_bytes()
    assert len(study.get_trials()) == 1 and data.startswith(good) and data.endswith(b"\n")
    assert all(json.loads(line) for line in data.splitlines())  # no torn record left
    assert (tmp_path / "q.log.torn").read_bytes().startswith(b'{"op_code": 5')
    assert "cut an unfinished last record" in capsys.readouterr().out


def test_a_teacher_whose_checkpoint_does_not_load_is_trained_again(tmp_path, tracking_store, synthetic):
    from ablation.data.dataset import load_data
    from ablation.run import ensure_teacher
    cfg = from_dict(RunConfig, {"model": TINY_MODEL, "train": {"epochs": 1, "device": "cpu",
                                                                                  "seed": 41},
                                "data": {"train_subset": 256}})
    data = load_data(cfg.data, beats=synthetic, progress=False)
    first, _ = ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
    uri = MlflowClient().get_run(first).info.artifact_uri
    ckpt = Path(uri.removeprefix("file://")) / tracking.CHECKPOINT
    ckpt.write_bytes(b"truncated")
    second, model = ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
    assert second != first and model is not None
    old = MlflowClient().get_run(first)
    assert old.info.status == "FAILED" and "not a readable checkpoint" in old.data.tags["failure_reason"]


# ------------------------------------------------------------------------------------------------
# SIGTERM closes the run
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, reason", [(signal.SIGTERM, "SystemExit"), (signal.SIGINT, "KeyboardInterrupt")])
def test_sigterm_and_sigint_end_a_training_run_as_killed_with_its_reason(tmp_path, mitdb, sig, reason):
    runs = fresh_runs(tmp_path)
    env = {**os.environ, "ABLATION_RUNS": str(runs)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "ablation", "train", "--mitdb", str(mitdb), "--threads", "1", "--experiment", "term",
           "--set", "model.ndf=4", "--set", "model.ngf=4", "--set", "model.nz=8", "--set", "data.train_subset=2048",
           "--set", "train.epochs=200"]
    # a test run started in the background (`cmd &`) inherits SIGINT ignored, and so would the
    # child: give it the default disposition, under which Python raises KeyboardInterrupt
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = runs / "mlflow.db"
    client = None
    deadline = time.time() + 120
    run = None
    while time.time() < deadline and run is None:
        time.sleep(1)
        try:
            # the child builds the new store's schema holding this lock; a client made or reading
            # without it would build it too (MlflowClient's constructor already does), and one of
            # the two would fail
            with tracking.store_lock(db):
                client = client or MlflowClient(f"sqlite:///{db}")
                exp = client.get_experiment_by_name("term")
            found = client.search_runs([exp.experiment_id]) if exp else []
            run = found[0] if found and client.get_metric_history(found[0].info.run_id, "val_auc") else None
        except Exception:  # the store is still being created
            pass
    assert run is not None, proc.stderr.read() if proc.poll() is not None else "no run started"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    after = client.get_run(run.info.run_id)
    assert proc.returncode == 128 + sig
    assert after.info.status == "KILLED" and after.data.tags["failure_reason"].startswith(reason)
    if sig == signal.SIGINT:  # Ctrl-C: one line, no traceback
        err = proc.stderr.read()
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)"), err[-2000:]


# ------------------------------------------------------------------------------------------------
# a teacher run whose process was killed (SIGKILL) is closed, not left RUNNING
# ------------------------------------------------------------------------------------------------
def test_a_teacher_run_left_running_by_a_dead_process_is_closed_killed(tracking_store, synthetic):
    from ablation.data.dataset import load_data
    from ablation.run import TEACHER_EXPERIMENT, ensure_teacher, run_key
    cfg = from_dict(RunConfig, {"model": TINY_MODEL, "train": {"epochs": 1, "device": "cpu", "seed": 43},
                                "data": {"train_subset": 256}})
    data = load_data(cfg.data, beats=synthetic, progress=False)
    key = run_key(cfg, data.fingerprint)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    client = MlflowClient()
    exp = tracking.experiment_id(TEACHER_EXPERIMENT)
    host = socket.gethostname()
    try:
        killed = client.create_run(exp, tags={"run_key": key, "process": f"{host}:{dead.pid}"}).info.run_id
        live = client.create_run(exp, tags={"run_key": key, "process": f"{host}:{alive.pid}"}).info.run_id
        run_id, _ = ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
        assert client.get_run(live).info.status == "RUNNING"  # another process still trains it
    finally:
        alive.kill()
    after = client.get_run(killed)
    assert after.info.status == "KILLED" and f"{host}:{dead.pid}" in after.data.tags["failure_reason"]
    assert client.get_run(run_id).data.tags["process"] == f"{host}:{os.getpid()}"


# ------------------------------------------------------------------------------------------------
# a trial another live process is training: said so, and the parent is not FAILED
# ------------------------------------------------------------------------------------------------
def test_a_trial_running_in_another_live_process_is_not_a_failure(tmp_path, tracking_store, synthetic, capsys):
    from ablation.study.runner import queue_name, run_study
    d = {"name": "beside_a_worker", "base": tiny_dict("teacher"), "seeds": [0, 1]}
    spec = load_study(_write(tmp_path, d))
    storage = f"journal:{tmp_path / 'q.log'}"
    study = queue.open_study(queue_name(spec), queue.open_storage(storage))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        study.enqueue_trial({}, user_attrs={"trial_key": spec.trials[0].key})
        study.ask().set_user_attr("worker", f"{socket.gethostname()}:{other.pid}")  # the other process's trial
        table = run_study(spec, storage_url=storage, beats=synthetic, progress=False)
    finally:
        other.kill()
    out = capsys.readouterr().out
    assert f"1 trial is still running in another process ({socket.gethostname()}:{other.pid})" in out
    assert list(table.status) == ["RUNNING elsewhere", "FINISHED"]
    parent = MlflowClient().search_runs([tracking.experiment(spec.name).experiment_id], "tags.study_parent != ''")
    assert [p.info.status for p in parent] == ["RUNNING"]
