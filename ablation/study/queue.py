"""The shared trial queue: an Optuna storage holding one enqueued trial per study trial.

Workers on one machine or many pop WAITING trials from the same storage (Optuna marks a popped
trial RUNNING atomically, so each trial runs once), train it, and tell the result:

- local default: ``JournalStorage(JournalFileBackend("runs/optuna/journal.log"))`` (several
  processes on one machine);
- ``sqlite:///...`` for one process, ``postgresql+psycopg2://...`` across machines (RDBStorage with
  a heartbeat, so a crashed worker's trial is failed and re-queued).
"""
from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import get_lock_file
from optuna.trial import TrialState

from ablation.errors import StoreError
from ablation.paths import RUNS

HEARTBEAT_S = 30
GRACE_S = 120


def default_storage_url() -> str:
    return os.environ.get("ABLATION_OPTUNA_STORAGE") or f"journal:{RUNS / 'optuna' / 'journal.log'}"


def repair_torn_tail(path: Path) -> bool:
    """Cut a journal's last line when a killed writer left it unfinished (every complete record ends
    with a newline); the cut bytes are kept in ``<journal>.torn``. Done under Optuna's own journal
    lock, so no writer is mid-append. True when something was cut."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with get_lock_file(JournalFileSymlinkLock(str(path))):
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return False
        keep = data.rfind(b"\n") + 1
        path.with_name(path.name + ".torn").write_bytes(data[keep:])
        with open(path, "r+b") as f:
            f.truncate(keep)
    print(f"warning: {path}: cut an unfinished last record ({len(data) - keep} bytes, kept in "
          f"{path.name}.torn) left by a killed process", flush=True)
    return True


def open_storage(url: str | None = None):
    """An Optuna storage from ``journal:PATH``, ``sqlite:///...`` or ``postgresql+psycopg2://...``."""
    url = url or default_storage_url()
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(path)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except (ValueError, KeyError) as e:  # json errors are ValueErrors
            raise StoreError(f"{path}: the trial queue's journal is damaged ({e}); move it aside (finished "
                             f"trials are kept in MLflow and results/, and are queued again as needed)") from e
    if url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise StoreError(f"--storage {url}: the folder {folder} does not exist; create it first")
        return _rdb(url)
    if url.startswith("postgresql"):
        return _rdb(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, engine_kwargs={"pool_pre_ping": True})
    raise StoreError(f"--storage {url}: unknown kind of store; allowed: journal:PATH, sqlite:///PATH, "
                     f"postgresql+psycopg2://USER@HOST/DB")


def _rdb(url: str, **kwargs) -> RDBStorage:
    """An Optuna RDB storage; `StoreError` naming the URL (password hidden) when it cannot be opened."""
    import sqlalchemy
    try:
        return RDBStorage(url, **kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
        reason = " ".join(str(getattr(e, "orig", None) or e).split())[:200]
        raise StoreError(f"cannot open the trial queue {shown} ({type(e).__name__}: {reason}); check that the "
                         f"server runs and the URL, or leave --storage out for the local journal") from e


def is_local(storage) -> bool:
    """True where no heartbeat tells live workers from dead ones (journal files, SQLite)."""
    return not (isinstance(storage, RDBStorage) and storage.heartbeat_interval)


def open_study(name: str, storage, direction: str = "maximize", sampler=None, pruner=None) -> optuna.Study:
    return optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def reconcile(study: optuna.Study, storage, keys: list[str], finished: set[str], local_owner: bool) -> dict[str, int]:
    """Make the queue hold exactly one WAITING or RUNNING trial per unfinished key.

    ``finished``: keys whose MLflow run is FINISHED (the source of truth for "done"). A RUNNING
    trial is stale when its worker died: with a heartbeat storage Optuna fails it after the grace
    period; with a local store, `local_owner` (this process holds the study lock, so no other
    runner exists) fails it now unless its worker process is still alive (`worker_alive`: a
    `worker` joined by hand goes on). FAILED and stale trials of unfinished keys are enqueued again.
    """
    if not is_local(storage):
        optuna.storages.fail_stale_trials(study)
    live: set[str] = set()
    stale = 0
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("trial_key")
        if (t.state == TrialState.RUNNING and local_owner and is_local(storage)
                and not worker_alive(t.user_attrs.get("worker"))):
            study.tell(t.number, state=TrialState.FAIL)
            stale += 1
        elif t.state in (TrialState.WAITING, TrialState.RUNNING) and key:
            live.add(key)
    for key in keys:
        if key not in finished and key not in live:
            study.enqueue_trial({}, user_attrs={"trial_key": key})
    return {"finished": len(finished & set(keys)), "interrupted": stale,
            "to_run": len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))}


def running_elsewhere(study: optuna.Study, storage) -> dict[str, str]:
    """Trial key -> worker (``host:pid``) of the queue's RUNNING trials that another live process
    holds (with a heartbeat storage every RUNNING trial: a dead worker's is failed by its heartbeat)."""
    return {t.user_attrs["trial_key"]: t.user_attrs.get("worker", "?")
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("trial_key") and (not is_local(storage) or worker_alive(t.user_attrs.get("worker")))}


def worker_id() -> str:
    """``host:pid`` of this process, recorded on the trials it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str | None) -> bool:
    """Whether the process that claimed a trial (``host:pid``) still runs: checked on this host;
    a worker on another host is taken to be alive (a local journal has no heartbeat to tell)."""
    if not worker or ":" not in worker:
        return False
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


@contextmanager
def heartbeat(storage, trial: optuna.Trial):
    """While a claimed trial runs, record heartbeats so that other runners can tell a dead worker
    (only RDB storages with a heartbeat interval; a no-op elsewhere)."""
    if is_local(storage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            storage.record_heartbeat(trial._trial_id)
            stop.wait(storage.heartbeat_interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
