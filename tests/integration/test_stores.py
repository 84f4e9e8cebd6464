"""Stores given on the command line that cannot be used (issue 38's probes): the trial queue's
--storage, the tracking URI. Each ends in one line naming the store and what is allowed."""
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from ablation.errors import StoreError
from ablation.study import queue
from support.cli import one_line_error
from support.tiny import tiny_dict


@pytest.mark.parametrize("url, message", [
    ("bogus://x", "--storage bogus://x: unknown kind of store; allowed: journal:PATH, sqlite:///PATH, "
                  "postgresql+psycopg2://USER@HOST/DB"),
    ("sqlite:////nonexistent-folder/q.db", "--storage sqlite:////nonexistent-folder/q.db: the folder "
                                          "/nonexistent-folder does not exist"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:59998/optuna", "cannot open the trial queue "
                                                               "postgresql+psycopg2://u:***@127.0.0.1:59998/optuna"),
])
def test_an_unusable_queue_storage_is_one_line(url, message):
    t0 = time.perf_counter()
    with pytest.raises(StoreError) as e:
        queue.open_storage(url)
    assert message in str(e.value) and "\n" not in str(e.value) and "secret" not in str(e.value)
    assert time.perf_counter() - t0 < 20


def test_a_bad_storage_is_refused_before_any_teacher_trains(tmp_path, capsys, tracking_store):
    from mlflow.tracking import MlflowClient
    path = tmp_path / "st.yaml"
    path.write_text(yaml.safe_dump({"name": "bad_storage", "base": tiny_dict("student")}))
    err = one_line_error(capsys, ["study", str(path), "--storage", "bogus://x"])
    assert "--storage bogus://x: unknown kind of store" in err
    assert MlflowClient().get_experiment_by_name("bad_storage") is None


# ------------------------------------------------------------------------------------------------
# the tracking URI
# ------------------------------------------------------------------------------------------------
def test_an_unknown_tracking_uri_scheme_is_one_line(capsys):
    err = one_line_error(capsys, ["history", "x", "--csv", "h.csv", "--tracking-uri", "bogus://x"])
    assert "tracking URI bogus://x: unknown kind of store" in err and "sqlite:///PATH" in err


def test_a_plain_http_server_is_not_taken_for_mlflow(capsys):
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        err = one_line_error(capsys, ["history", "x", "--csv", "h.csv", "--tracking-uri", uri])
    finally:
        server.shutdown()
    assert f"{uri} answers but is not an MLflow server" in err and "unreachable" not in err


@contextmanager
def _as_nobody():
    """The block runs with another effective user when the tests run as root (root writes a
    read-only file); modules are imported before it."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_a_read_only_mlflow_database_is_one_line(capsys, tracking_store):
    from ablation import tracking
    folder = Path(tempfile.mkdtemp(prefix="ablation-ro-"))
    folder.chmod(0o777)  # the lock file beside the database can be written; the database cannot
    db = folder / "mlflow.db"
    previous = tracking.current_uri()
    tracking.setup(f"sqlite:///{db}")  # a real, empty store
    db.chmod(0o444)
    (folder / "mlflow.db.lock").unlink()
    capsys.readouterr()  # MLflow's lines of the store's creation
    try:
        with _as_nobody():
            err = one_line_error(capsys, ["history", "x", "--csv", str(folder / "h.csv"),
                                          "--tracking-uri", f"sqlite:///{db}"])
    finally:
        tracking.setup(previous)
    assert err.startswith(f"error: {db}: attempt to write a readonly database")
