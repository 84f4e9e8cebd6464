"""The committed per-run table (results/<study>.csv): written as trials finish, enough to resume a
study and rebuild its report on a machine whose MLflow store is empty. Synthetic beats (not ECG)."""
import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ablation import tracking
from ablation.report.page import build_report
from ablation.study import results, runner
from support.report_samples import run_tiny_study
from support.tiny import TINY_MODEL


def test_committed_results_resume_a_study_and_rebuild_its_report(tmp_path, tracking_store, synthetic):
    spec = run_tiny_study(tmp_path, name="results_tiny", seeds=(0, 1))
    table = results.load("results_tiny")
    assert len(table) == 4 and set(table["variant"]) == {"student_alone", "kd_score_kl"}
    assert table["test_auc"].between(0, 1).all() and table["teacher_test_auc"].between(0, 1).all()
    assert table["teacher_run_id"].notna().all() and set(table["trial_key"]) == {t.key for t in spec.trials}
    old = mlflow.get_tracking_uri()
    tracking.setup(f"sqlite:///{tmp_path / 'fresh.db'}")  # a fresh machine: the committed table only
    try:
        assert runner.finished_keys(spec) == {t.key for t in spec.trials}
        runner.run_study(spec, beats=synthetic, device="cpu", progress=False)
        teachers = MlflowClient().get_experiment_by_name("teachers")
        assert teachers is None or not MlflowClient().search_runs([teachers.experiment_id])  # nothing retrained
        path = build_report("results_tiny", tmp_path / "dash")
        csv = pd.read_csv(path.with_suffix(".csv")).set_index("variant")
        assert list(csv.index) == ["student_alone", "kd_score_kl", "teacher"] and csv.loc["kd_score_kl", "n_pairs"] == 2
        assert csv.loc["kd_score_kl", "test_auc_mean"] == pytest.approx(
            table[table["variant"] == "kd_score_kl"]["test_auc"].mean(), rel=1e-5)
        assert "read from results_tiny.csv" in path.read_text()
    finally:
        tracking.setup(old)


def test_merge_keeps_rows_of_other_machines_and_replaces_its_own():
    committed = pd.DataFrame({"trial_key": ["a", "b"], "variant": ["x", "x"], "fold": [0, 1], "seed": 0,
                              "test_auc": [0.1, 0.2]})
    fresh = pd.DataFrame({"trial_key": ["b", "c"], "variant": ["x", "x"], "fold": [1, 2], "seed": 0,
                          "test_auc": [0.3, 0.4]})
    out = results.merge(committed, fresh).set_index("trial_key")["test_auc"].to_dict()
    assert out == {"a": 0.1, "b": 0.3, "c": 0.4}


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", ""])
def test_a_study_name_is_not_a_path(name):
    with pytest.raises(ValueError, match="plain name"):
        results.results_path(name)


def test_an_exported_teacher_is_found_on_a_fresh_store_not_retrained(tmp_path, tracking_store, synthetic,
                                                                       monkeypatch):
    import torch
    from ablation import run as run_module, teachers
    from ablation.config import RunConfig, from_dict
    from ablation.data.dataset import load_data
    cfg = from_dict(RunConfig, {"model": TINY_MODEL, "data": {"train_subset": 256},
                                "train": {"epochs": 1, "device": "cpu", "seed": 77}})
    data = load_data(cfg.data, beats=synthetic, progress=False)
    first, model = run_module.ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
    path = teachers.export(first)
    table = pd.read_csv(results.RESULTS / "teachers.csv")
    row = table[table["run_id"] == first].iloc[0]
    assert path.is_file() and row["run_id"] == first and row["seed"] == 77 and row["nc"] == 1 and 0 <= row["test_auc"] <= 1
    old = mlflow.get_tracking_uri()
    tracking.setup(f"sqlite:///{tmp_path / 'fresh.db'}")
    monkeypatch.setattr(run_module, "execute", lambda *a, **k: pytest.fail("the teacher was trained again"))
    try:
        again, found = run_module.ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
        assert again != first and MlflowClient().get_run(again).data.tags["imported_from"] == first
        for k, v in model.G.state_dict().items():
            assert torch.equal(v, found.G.state_dict()[k]), k
        assert run_module.ensure_teacher(cfg, data, torch.device("cpu"), progress=False)[0] == again  # now in MLflow
        path.write_bytes(path.read_bytes()[:-1] + b"x")
        tracking.setup(f"sqlite:///{tmp_path / 'fresh2.db'}")
        with pytest.raises(tracking.StoreError, match="SHA-256 differs"):
            run_module.ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
        path.unlink()  # no checkpoint on this machine: nothing to import, the teacher is trained
        assert teachers.import_teacher(row["run_key"], "teachers") is None
    finally:
        tracking.setup(old)


def test_a_retrained_teacher_keeps_the_row_of_the_one_a_study_used(tracking_store):
    """A fold's teacher trained again on another machine has the same key but may not be the same
    model: its export adds a row and keeps the earlier run's (committed trials cite its run id), and
    an import takes the row whose SHA-256 is that of the checkpoint on this machine."""
    from ablation import teachers
    path = teachers.RUNS / "teachers" / "k1.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for run_id, content in (("old", b"first model"), ("new", b"second model")):
        path.write_bytes(content)
        rows.append({"run_key": "k1", "run_id": run_id, "fold": 1, "seed": 0,
                     **{m: 0.9 for m in teachers.METRICS},
                     "data_fingerprint": "f", "git_commit": "c", "sha256": teachers._sha256(path)})
        teachers._record(rows[-1])
    def runs_of_k1():
        table = pd.read_csv(results.RESULTS / "teachers.csv")
        return list(table.loc[table["run_key"] == "k1", "run_id"])
    assert runs_of_k1() == ["old", "new"]
    path.write_bytes(b"first model")  # the earlier teacher's checkpoint copied here
    imported = teachers.import_teacher("k1", "teachers")
    assert MlflowClient().get_run(imported).data.tags["imported_from"] == "old"
    path.write_bytes(b"neither")
    with pytest.raises(tracking.StoreError, match="SHA-256"):
        teachers.import_teacher("k1", "teachers")
    teachers._record({**rows[0], "test_auc": 0.8})  # the same run exported again: replaced, not doubled
    assert sorted(runs_of_k1()) == ["new", "old"]


def test_teachers_exported_side_by_side_both_keep_their_rows(tracking_store):
    """`make teachers` exports two folds' teachers at once: each row is written under the table's lock,
    so neither read-modify-write drops the other's row."""
    import threading
    from ablation import teachers
    row = {"run_key": "k9", "run_id": "r9", "fold": 3, "seed": 1, "nc": 1, **{m: 0.9 for m in teachers.METRICS},
           "data_fingerprint": "f", "git_commit": "c", "sha256": "s"}
    writer = threading.Thread(target=teachers._record, args=(row,))
    with tracking.key_lock("results-teachers"):  # another process is writing the table
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), "the row was written without waiting for the table's lock"
    writer.join(10)
    assert "r9" in set(pd.read_csv(results.RESULTS / "teachers.csv")["run_id"])
