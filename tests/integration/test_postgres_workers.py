"""Two workers on one PostgreSQL server: the `smoke` study's trials each run exactly once, all in MLflow.

A throwaway PostgreSQL server (Debian's `postgresql` package) on 127.0.0.1 holds both the Optuna
trial queue (database `optuna`) and the MLflow backend store (database `mlflow`); artifacts stay in
a local folder under ABLATION_RUNS. Skipped where PostgreSQL is not installed, except on CI
(the CI environment variable set), where that is a failure.
"""
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from support import pg_server as pg
from support.runs import fresh_runs

pytestmark = pytest.mark.slow

TIMEOUT_S = 600  # a hang guard, not a timing: generous for a loaded machine (the suite runs a worker per core)


def _unavailable(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must install it: apt-get install -y postgresql; pip install -e '.[dev]')")
    pytest.skip(why)


@pytest.fixture(scope="module")
def pg_server():
    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        _unavailable("PostgreSQL binaries (initdb, pg_ctl) not on PATH nor under /usr/lib/postgresql/*/bin")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed")
    server = pg.start_server(bin_dir, databases=("optuna", "mlflow"))
    try:
        yield server
    finally:
        server.stop()
    assert not server.root.exists()


def _worker_children(parent: int) -> set[int]:
    """Pids of `python -m ablation worker` processes whose parent is `parent` (Linux /proc)."""
    found = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == parent and b"\0worker\0" in (d / "cmdline").read_bytes():
                found.add(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _run_study(args: list[str], env: dict, cwd: Path, log: Path) -> tuple[int, str, set[int], int]:
    """Run the study command; returns (exit code, output, worker pids seen, coordinator pid)."""
    workers: set[int] = set()
    with open(log, "w") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError
                workers |= _worker_children(proc.pid)
                time.sleep(0.2)
        except BaseException as e:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started: coordinator and its workers
            proc.wait()
            if isinstance(e, TimeoutError):
                raise AssertionError(f"study did not finish in {TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            raise
    return proc.returncode, log.read_text(), workers, proc.pid


def test_two_workers_on_postgres_run_each_trial_once(pg_server, mitdb, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from ablation.study.spec import load_study

    spec = load_study("smoke", scale="tiny")
    keys = {t.key for t in spec.trials}
    assert len(keys) == 3
    storage, tracking_uri = pg_server.url("optuna"), pg_server.url("mlflow")

    runs = fresh_runs(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "ABLATION_OPTUNA_STORAGE", "ABLATION_MITDB")}
    env.update(ABLATION_RUNS=str(runs), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    code, out, worker_pids, coordinator = _run_study(
        [sys.executable, "-m", "ablation", "study", "smoke", "--scale", "tiny", "--workers", "2", "--storage", storage,
         "--tracking-uri", tracking_uri, "--mitdb", str(mitdb)], env, cwd, tmp_path / "study.log")
    assert code == 0, out[-6000:]

    # two worker processes ran; the trials ran in them, not in the coordinator
    started = Counter(int(p) for p in re.findall(r": start \(pid (\d+)\)", out))
    assert len(worker_pids) == 2, (worker_pids, out[-3000:])
    assert sum(started.values()) == 3 and set(started) <= worker_pids and coordinator not in started, out[-3000:]
    assert len(re.findall(r": done, best val AUC", out)) == 3, out[-3000:]

    # MLflow: one FINISHED child run per trial key, under the study's parent run, artifacts local
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("smoke")
    assert exp is not None
    assert exp.artifact_location == (runs / "mlartifacts" / "smoke").as_uri()
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("study_parent") == "smoke@tiny"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    children = [r for r in all_runs if r.data.tags.get("trial_key")]
    assert Counter(r.data.tags["trial_key"] for r in children) == Counter(keys)  # each key once, no other
    for r in children:
        assert r.info.status == "FINISHED", r.data.tags["trial_key"]
        assert r.data.tags.get("mlflow.parentRunId") == parent_id
        assert "best_val_auc" in r.data.metrics and "test_auc" in r.data.metrics
        art = Path(unquote(urlparse(r.info.artifact_uri).path))
        assert art.is_relative_to(runs / "mlartifacts" / "smoke"), r.info.artifact_uri
        assert (art / "checkpoint" / "model.pt").is_file() and (art / "scores" / "test_scores.csv").is_file()
    assert len(all_runs) == len(children) + 1
    teachers = client.get_experiment_by_name("teachers")
    assert teachers is not None and teachers.artifact_location.startswith((runs / "mlartifacts").as_uri())
    assert [r.info.status for r in client.search_runs([teachers.experiment_id])] == ["FINISHED"]
    assert not any(cwd.iterdir()), list(cwd.iterdir())  # nothing written to the working directory

    # Optuna: exactly one COMPLETE trial per key; the rest only blank trials of a worker that found none
    study = optuna.load_study(study_name="smoke@tiny", storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert Counter(t.user_attrs.get("trial_key") for t in complete) == Counter(keys)
    for t in trials:
        if t.state != TrialState.COMPLETE:
            assert t.state == TrialState.FAIL and t.user_attrs.get("blank") is True, (t.number, t.state, t.user_attrs)
    by_key = {r.data.tags["trial_key"]: r for r in children}
    for t in complete:
        assert by_key[t.user_attrs["trial_key"]].data.tags["optuna_trial"] == str(t.number)
        assert t.value == pytest.approx(by_key[t.user_attrs["trial_key"]].data.metrics["best_val_auc"])
