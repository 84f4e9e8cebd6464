"""MLflow plumbing: where runs are stored, what a run records, and finding a run again by its key.
Every MLflow call of the project is here; training, studies and reports call these functions.

Default store: SQLite at ``runs/mlflow.db`` with artifacts under ``runs/mlartifacts`` (MLflow 3's
file store is deprecated). ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` point at a server instead.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports sent out (set to false to allow)
import mlflow  # noqa: E402  (after the switch: MLflow reads it when its telemetry starts)
import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.tracking import MlflowClient

from ablation.config import DataConfig, RunConfig, flatten, from_dict
from ablation.errors import BadInput, NotFound, StoreError
from ablation.paths import PROJECT_ROOT, RUNS

CHECKPOINT = "checkpoint/model.pt"
SCORES = "scores/test_scores.csv"
SNAPSHOT = "snapshot-{i}.pt"  # beside CHECKPOINT, one per kept check (train.snapshots)
FIGURES = "figures"  # the run page's Plotly figures, one .html each
REPORT = "report"  # a study's report page on its parent run
MITDB_SOURCE = "https://physionet.org/content/mitdb/1.0.0/"
PROBE_TIMEOUT_S = 5
UI_BASE = "http://127.0.0.1:5000"  # `make ui`
EXPERIMENT_KIND = "mlflow.experimentKind"
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")


def _probe_server(uri: str) -> None:
    """One short request to a tracking server, so that an unreachable one fails in seconds, not
    minutes, and a server that answers is an MLflow one (its /health says OK)."""
    import urllib.error
    import urllib.request
    not_mlflow = StoreError(f"{uri} answers but is not an MLflow server (GET /health did not say OK); check the "
                            f"port, or unset MLFLOW_TRACKING_URI to use runs/mlflow.db")
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S) as answer:
            if answer.read(64).strip() != b"OK":
                raise not_mlflow
    except urllib.error.HTTPError as e:  # it answered, with an error status
        raise not_mlflow from e
    except (urllib.error.URLError, OSError) as e:
        raise StoreError(f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); start it "
                         f"(make ui) or unset MLFLOW_TRACKING_URI to use runs/mlflow.db") from e


def _check_scheme(uri: str) -> None:
    """Refuse a tracking URI MLflow has no store for, naming the kinds it has."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        raise StoreError(f"tracking URI {uri}: unknown kind of store; allowed: sqlite:///PATH, http(s)://HOST:PORT "
                         f"(an MLflow server), postgresql://..., mysql://..., file:PATH (--tracking-uri or "
                         f"$MLFLOW_TRACKING_URI)")


def _check_writable(db: Path) -> None:
    """A SQLite store that cannot be written fails here, in one line, not at the first run it logs:
    a write in a transaction, rolled back."""
    import sqlite3
    from contextlib import closing
    if not db.exists():
        return
    try:
        with closing(sqlite3.connect(db, timeout=60, isolation_level=None)) as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE _ablation_write_probe (x)")
            con.execute("ROLLBACK")
    except sqlite3.DatabaseError as e:
        if "readonly" not in str(e):
            return  # a damaged file: the schema check names it
        raise StoreError(f"{db}: {e} (the file or its folder is read-only for this user); make it writable "
                         f"or pass --tracking-uri sqlite:///ANOTHER.db") from e


@contextmanager
def store_lock(db: Path):
    """The lock beside a SQLite store that serialises its first use (see `setup`); a process
    that reads a store another one may be creating takes it too."""
    lock = db.with_name(db.name + ".lock")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "w")
    except OSError as e:
        raise StoreError(f"{db}: cannot write {lock.name} beside it ({e.strerror}): its folder is read-only for "
                         f"this user; make it writable or pass --tracking-uri sqlite:///ANOTHER.db") from e
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{RUNS / 'mlflow.db'}"


def setup(explicit: str | None = None) -> str:
    """Point MLflow at the store; a new SQLite store gets its schema here, one process at a time.

    MLflow builds (and migrates) a SQLite schema on first use without a lock, so two runs started at
    once on a fresh ``runs/`` fail with "duplicate column" or alembic errors; a file lock beside the
    database serialises that first use.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per checkpoint load
    uri = tracking_uri(explicit)
    _check_scheme(uri)
    if uri.startswith(("http:", "https:")):
        _probe_server(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        with store_lock(db):
            _check_writable(db)
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # builds the schema if missing
            except Exception as e:  # sqlalchemy / alembic errors of a damaged file
                raise StoreError(f"{db}: not a usable MLflow database ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]}); move it aside to start a new store") from e
    mlflow.set_tracking_uri(uri)  # only a store that works becomes the current one
    return uri


@contextmanager
def key_lock(name: str):
    """An exclusive file lock ``runs/locks/<name>.lock`` (processes on this machine wait their turn)."""
    path = RUNS / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def retire(run_id: str, reason: str) -> None:
    """Take a finished run out of key lookups (FAILED, with the reason as a tag)."""
    client = MlflowClient()
    client.set_tag(run_id, "failure_reason", reason)
    client.set_terminated(run_id, "FAILED")


_ARTIFACTS = {"root": RUNS / "mlartifacts"}  # where a database store's experiments keep their artifacts


def resume_dir() -> Path:
    """Where unfinished runs keep their training state (`ablation.train.resume`): beside the
    store's artifacts, so `scratch_store`'s runs (`reproduce`) start from nothing and leave nothing."""
    return _ARTIFACTS["root"].parent / "resume"


@contextmanager
def scratch_store():
    """A throw-away store (SQLite and artifacts in a temporary folder) for the block; the previous
    store is current again after it. `reproduce` retrains committed trials there."""
    previous, root = mlflow.get_tracking_uri(), _ARTIFACTS["root"]
    with tempfile.TemporaryDirectory(prefix="ablation-scratch-") as tmp:
        _ARTIFACTS["root"] = Path(tmp) / "mlartifacts"
        try:
            setup(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
            yield tmp
        finally:
            _ARTIFACTS["root"] = root
            mlflow.set_tracking_uri(previous)


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created (with an explicit local artifact folder) when missing."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None  # a tracking server decides its own artifact store
    if not mlflow.get_tracking_uri().startswith(("http:", "https:")):
        location = (_ARTIFACTS["root"] / name).as_uri()  # database store: artifacts under runs/
    try:  # tagged as model training (MLflow 3 otherwise treats experiments as GenAI ones)
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: "custom_model_development"})
    except mlflow.exceptions.MlflowException:  # created meanwhile by another worker
        return client.get_experiment_by_name(name).experiment_id


def ui_link(experiment: str, base: str = UI_BASE) -> str | None:
    """The MLflow UI address of an experiment's runs table (MLflow 3's UI otherwise opens an
    experiment on its GenAI traces page); None when the experiment does not exist."""
    exp = MlflowClient().get_experiment_by_name(experiment)
    return None if exp is None else f"{base}/#/experiments/{exp.experiment_id}?workflowType=machine_learning"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def find_finished(exp_name: str, run_key: str) -> str | None:
    """The id of a FINISHED run of `exp_name` tagged with `run_key`, else None."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(exp_name)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], _where(_is("tags.run_key", run_key), "attributes.status = 'FINISHED'"),
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


# ----------------------------------------------------------------------------------------------
# Reading and updating runs (studies, reports, teachers)
# ----------------------------------------------------------------------------------------------
def current_uri() -> str:
    return mlflow.get_tracking_uri()


def experiment(name: str):
    """The MLflow experiment `name`, or None."""
    return MlflowClient().get_experiment_by_name(name)


def _search(experiment_name: str, filter_string: str = "", order_by: list[str] | None = None) -> list:
    """Every run of the experiment matching `filter_string` (all pages); [] when it does not exist."""
    exp = experiment(experiment_name)
    if exp is None:
        return []
    client, out, token = MlflowClient(), [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string, max_results=1000, order_by=order_by,
                                  page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


# MLflow's query language stays in this module: the rest of the project asks for runs by what they are.
def _where(*clauses: str) -> str:
    """The clauses that are not empty, joined into one MLflow filter string."""
    return " and ".join(c for c in clauses if c)


def _is(field: str, value: str | None) -> str:
    """``field = 'value'`` (empty when `value` is None); double quotes around a value holding a quote."""
    if value is None:
        return ""
    quote = '"' if "'" in str(value) else "'"
    return f"{field} = {quote}{value}{quote}"


def runs_of(experiment_name: str) -> list:
    """Every run of the experiment (teachers, parents, trials, searches); [] when it does not exist."""
    return _search(experiment_name)


def trial_runs(study: str, status: str | None = None, key: str | None = None) -> list:
    """The study's trial runs (tagged with a trial key), only those with `status` (FINISHED, RUNNING
    ...) and of trial `key` when given."""
    return _search(study, _where(_is("attributes.status", status), "tags.trial_key != ''",
                                 _is("tags.trial_key", key)))


def keyed_runs(experiment_name: str, run_key: str, status: str | None = None) -> list:
    """The experiment's runs tagged with `run_key`, only those with `status` when given."""
    return _search(experiment_name, _where(_is("tags.run_key", run_key), _is("attributes.status", status)))


def parent_runs(study: str, tag: str | None = None) -> list:
    """The study's parent runs (one per scale), only the one tagged `tag` (``study@scale``) when given."""
    return _search(study, _is("tags.study_parent", tag) or "tags.study_parent != ''")


def search_runs(study: str, trial_number: int | None = None) -> list:
    """The runs of a study's Optuna search (tagged ``search``), newest first, only those of Optuna
    trial `trial_number` when given."""
    number = None if trial_number is None else str(trial_number)
    return _search(study, _where("tags.search = '1'", _is("tags.optuna_trial", number)),
                   order_by=["attributes.start_time DESC"])


def get_run(run_id: str):
    """The MLflow run `run_id`; `NotFound` naming it when the store has no such run."""
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise NotFound(f"no MLflow run {run_id!r} in {current_uri()} (run ids: the 32 hexadecimal characters "
                       f"the MLflow UI and `study` print)") from e


def metric_history(run_id: str, key: str) -> list:
    """The logged values of one metric (``.step``, ``.value``)."""
    return MlflowClient().get_metric_history(run_id, key)


def create_run(experiment_name: str, run_name: str, tags: dict[str, str]) -> str:
    """A run left open (a study's parent); returns its id."""
    return MlflowClient().create_run(experiment_id(experiment_name), run_name=run_name, tags=tags).info.run_id


def set_status(run_id: str, status: str) -> None:
    """End a run with `status`: FINISHED, FAILED, KILLED or SCHEDULED."""
    MlflowClient().set_terminated(run_id, status)


def set_tag(run_id: str, key: str, value: str) -> None:
    MlflowClient().set_tag(run_id, key, value)


@contextmanager
def training_run(experiment_name: str, cfg: RunConfig, tags: dict[str, str], parent_run_id: str | None = None,
                 run_name: str | None = None):
    """An active run with `cfg`'s params, config.yaml and `tags`; yields its id. An exception inside
    ends it FAILED (KILLED on SIGINT / SIGTERM) with the reason as the ``failure_reason`` tag."""
    with mlflow.start_run(experiment_id=experiment_id(experiment_name), parent_run_id=parent_run_id,
                          run_name=run_name) as run:
        log_run_inputs(cfg, tags)
        try:
            yield run.info.run_id
        except BaseException as e:
            mlflow.set_tag("failure_reason", f"{type(e).__name__}: {e}".strip(": "))
            mlflow.end_run("KILLED" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "FAILED")
            raise


def set_tags(tags: dict[str, str]) -> None:
    """Tags of the active run (`training_run`)."""
    mlflow.set_tags(tags)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Metrics of the active run (`training_run`)."""
    mlflow.log_metrics(metrics, step=step)


def log_imported(experiment_name: str, run_name: str, tags: dict[str, str], metrics: dict[str, float],
                 checkpoint: Path) -> str:
    """A finished run holding a checkpoint file trained elsewhere (an exported teacher); returns its id."""
    with mlflow.start_run(experiment_id=experiment_id(experiment_name), run_name=run_name, tags=tags) as run:
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / Path(CHECKPOINT).name
            ckpt.write_bytes(checkpoint.read_bytes())
            mlflow.log_artifact(str(ckpt), Path(CHECKPOINT).parent.as_posix())
        return run.info.run_id


def log_run_inputs(cfg: RunConfig, tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)
    mlflow.log_params({k: ("None" if v is None else v) for k, v in flatten(cfg.to_dict()).items()})
    mlflow.log_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")


def log_outputs(cfg: RunConfig, state: dict, test_scores: np.ndarray, test, snapshots: list = ()) -> None:
    """The best checkpoint (state_dicts + config), the kept `snapshots` (`Snapshot`s, best first:
    ``checkpoints/snapshot-<i>.pt``, their validation AUC and epoch as metrics at step i) and, when
    there is a test set (an `EvalSet`), the per-beat test scores as a CSV table."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / Path(CHECKPOINT).name
        torch.save({"config": cfg.to_dict(), "G": state["G"], "D": state["D"]}, ckpt)
        mlflow.log_artifact(str(ckpt), Path(CHECKPOINT).parent.as_posix())
        for i, snap in enumerate(snapshots):
            path = Path(tmp) / SNAPSHOT.format(i=i)
            torch.save({"config": cfg.to_dict(), "G": snap.state["G"], "D": snap.state["D"]}, path)
            mlflow.log_artifact(str(path), Path(CHECKPOINT).parent.as_posix())
            mlflow.log_metrics({"snapshot_val_auc": snap.auc, "snapshot_at": snap.at}, step=i)
        if test is not None:
            table = Path(tmp) / Path(SCORES).name
            pd.DataFrame({"score": test_scores, "label": test.y, "cls": test.cls}).to_csv(table, index=False)
            mlflow.log_artifact(str(table), Path(SCORES).parent.as_posix())


def log_figures(figures: dict) -> None:
    """Plotly figures of the active run as ``figures/<name>.html`` (the UI's artifact view draws
    them). Each page loads plotly.js from its CDN, as MLflow does by default: a few kB per figure
    instead of 4.8 MB, so the browser viewing the UI needs the internet."""
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"{FIGURES}/{name}.html", save_kwargs={"include_plotlyjs": "cdn"})


def split_name(data: DataConfig) -> str:
    """The name of a run's split as a dataset: protocol, fold or inter-patient, seed, CPU-scale caps."""
    parts = ["mitdb", data.split] + ([f"fold{data.fold}"] if data.split == "beatgan" else [])
    parts += [f"seed{data.split_seed}"] + [f"{k}{v}" for k, v in (("train", data.train_subset),
                                                                  ("val", data.val_subset)) if v is not None]
    return "-".join(parts)


def log_split(data: DataConfig, fingerprint: str, sizes: dict[str, dict[str, int]], with_test: bool) -> None:
    """The active run's split as an MLflow dataset input: a table of beats per (split, class) from
    `sizes` ({split: {class: n}}; no test rows without a test set), named by `split_name`, its
    digest the records' fingerprint (`ablation.data.mitdb.fingerprint`)."""
    rows = [(part, c, n) for part, counts in sizes.items() if with_test or part != "test" for c, n in counts.items()]
    table = pd.DataFrame(rows, columns=["split", "class", "beats"])
    with warnings.catch_warnings():  # MLflow's hint that integer columns cannot hold missing values
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(table, source=MITDB_SOURCE, name=split_name(data), digest=fingerprint)
        mlflow.log_input(dataset, context="training", tags={"fold": str(data.fold), "split_seed": str(data.split_seed)})


def log_report(run_id: str, folder: Path) -> None:
    """A study's report files (HTML, CSV, Markdown) under ``report/`` of its parent run, replacing earlier ones."""
    MlflowClient().log_artifacts(run_id, str(folder), REPORT)


def load_checkpoint(ref: str, device: str | torch.device = "cpu"):
    """(RunConfig, state) from a checkpoint path or an MLflow run id (``runs:/<id>`` or the bare id);
    errors name the file, or the run (not the temporary copy its checkpoint was downloaded to)."""
    path, label = Path(ref), ref
    if not path.exists():
        run_id = ref.removeprefix("runs:/").split("/")[0]
        try:
            path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT))
        except Exception as e:
            raise NotFound(f"{ref!r} is neither a checkpoint file nor an MLflow run with "
                           f"{CHECKPOINT} ({type(e).__name__}: {e})") from e
        label = f"run {run_id}: its {CHECKPOINT}"
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, garbage, or a pickle of something else
        raise StoreError(f"{label} is not a readable checkpoint ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})") from e
    if not isinstance(blob, dict) or not {"config", "G", "D"} <= set(blob):
        raise StoreError(f"{label} is not a checkpoint of this project (expected a mapping with config, G and D)")
    return from_dict(RunConfig, blob["config"], src=label), {"G": blob["G"], "D": blob["D"]}


def snapshot_refs(run_id: str) -> list[str]:
    """Paths of a run's kept snapshots (best first; empty when it kept none)."""
    have = {Path(a.path).name for a in MlflowClient().list_artifacts(run_id, Path(CHECKPOINT).parent.as_posix())}
    names = [SNAPSHOT.format(i=i) for i in range(len(have)) if SNAPSHOT.format(i=i) in have]
    return [mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{Path(CHECKPOINT).parent}/{n}")
            for n in names]


def load_scores(run_id: str) -> pd.DataFrame:
    """The per-beat test scores a run stored (columns: score, label, cls)."""
    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SCORES))


def history(run_id: str) -> pd.DataFrame:
    """Every per-epoch metric of a run, one row per epoch: columns run_id, fold, seed, epoch, then the metrics."""
    client = MlflowClient()
    run = get_run(run_id)
    per_epoch: dict[int, dict[str, float]] = {}
    for key in sorted(run.data.metrics):
        for m in client.get_metric_history(run_id, key):
            per_epoch.setdefault(int(m.step), {})[key] = m.value
    if not per_epoch:
        why = ("it is a study's parent run: its trials are its child runs" if "study_parent" in run.data.tags
               else "it ended before its first epoch")
        raise BadInput(f"run {run_id} logged no per-epoch metrics ({why})")
    steps = sorted(per_epoch)
    multi = [k for k in sorted({k for row in per_epoch.values() for k in row})
             if sum(k in per_epoch[s] for s in steps) > 1 or len(steps) == 1]
    where = {"fold": run.data.params.get("data.fold"), "seed": run.data.params.get("train.seed")}
    return pd.DataFrame([{"run_id": run_id, **where, "epoch": s, **{k: per_epoch[s].get(k) for k in multi}}
                         for s in steps])


def print_ui_links() -> None:
    """Each experiment's runs-table address in the MLflow UI (what `make ui` prints before serving)."""
    for exp in MlflowClient().search_experiments():
        if exp.name != "Default":
            print(f"{exp.name}: {ui_link(exp.name)}")
