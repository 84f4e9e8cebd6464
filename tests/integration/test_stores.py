"""Stores given on the command line that cannot be used (issue 38's probes): the trial queue's
--storage, the tracking URI. Each ends in one line naming the store and what is allowed."""
import time

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
