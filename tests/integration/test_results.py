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
    assert table["test_auc"].between(0, 1).all()
    assert set(table["trial_key"]) == {t.key for t in spec.trials}
    alone = table["variant"] == "student_alone"  # the undistilled baseline reads, and names, no teacher
    assert table.loc[~alone, "teacher_run_id"].notna().all() and table.loc[alone, "teacher_run_id"].isna().all()
    assert table.loc[~alone, "teacher_test_auc"].between(0, 1).all()
    assert table["weights_sha256"].str.fullmatch("[0-9a-f]{64}").all() and (table["numerics.threads"] == 1).all()
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
    assert path == teachers.checkpoint_path(MlflowClient().get_run(first).data.tags["run_key"])  # under results/
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


def test_a_key_has_one_committed_teacher(tmp_path, tracking_store, synthetic):
    """A teacher trained again under its key on the pinned path is the same model: exporting it
    again keeps the one row and the one checkpoint; another model under a committed key is refused."""
    import torch
    from ablation import run as run_module, teachers
    from ablation.config import RunConfig, from_dict
    from ablation.data.dataset import load_data
    cfg = from_dict(RunConfig, {"model": TINY_MODEL, "data": {"train_subset": 256},
                                "train": {"epochs": 1, "device": "cpu", "seed": 78}})
    data = load_data(cfg.data, beats=synthetic, progress=False)
    first, _ = run_module.ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
    path = teachers.export(first)
    again = run_module.execute(cfg, data=data, experiment="teachers", skip_finished=False, progress=False).run_id
    assert teachers.export(again) == path
    table = pd.read_csv(results.RESULTS / "teachers.csv", dtype={"run_key": str})
    key = MlflowClient().get_run(first).data.tags["run_key"]
    assert list(table.loc[table["run_key"] == key, "run_id"]) == [first]
    other = torch.load(path, weights_only=True)
    other["G"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["G"].items()}
    torch.save(other, path)  # as if the committed one were another model
    table.loc[table["run_key"] == key, "sha256"] = teachers._sha256(path)
    table.to_csv(results.RESULTS / "teachers.csv", index=False)
    with pytest.raises(ValueError, match="a key has one teacher"):
        teachers.export(again)


def test_a_committed_teacher_exports_again_as_itself_from_an_import_or_a_newer_revision(tmp_path, tracking_store,
                                                                                        synthetic):
    """`make teachers` exports every key it finds: a committed teacher written by an older revision
    (its config lacks a field added since) and the run that imported it on a fresh store are that
    same teacher, and leave its checkpoint and row as they are."""
    import torch
    from ablation import run as run_module, teachers
    from ablation.config import RunConfig, from_dict
    from ablation.data.dataset import load_data
    cfg = from_dict(RunConfig, {"model": TINY_MODEL, "data": {"train_subset": 256},
                                "train": {"epochs": 1, "device": "cpu", "seed": 79}})
    data = load_data(cfg.data, beats=synthetic, progress=False)
    first, _ = run_module.ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
    path = teachers.export(first)
    older = torch.load(path, weights_only=True)
    del older["config"]["model"]["family"]  # as a revision before `model.family` wrote it
    torch.save(older, path)
    table = pd.read_csv(results.RESULTS / "teachers.csv", dtype={"run_key": str})
    table["sha256"] = teachers._sha256(path)
    table.to_csv(results.RESULTS / "teachers.csv", index=False)
    committed, rows = path.read_bytes(), (results.RESULTS / "teachers.csv").read_text()
    assert teachers.export(first) == path
    old = mlflow.get_tracking_uri()
    tracking.setup(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        imported, _ = run_module.ensure_teacher(cfg, data, torch.device("cpu"), progress=False)
        assert imported != first and teachers.export(imported) == path
    finally:
        tracking.setup(old)
    assert path.read_bytes() == committed and (results.RESULTS / "teachers.csv").read_text() == rows


def test_a_fresh_clone_runs_a_study_on_its_committed_teachers_and_trains_none(tmp_path, tracking_store, synthetic,
                                                                              capsys):
    """The teachers a study needs, exported to results/teachers/, are all a fresh machine needs:
    its study imports them, trains none, and prints the imported teacher's AUC beside its students."""
    from ablation import teachers
    spec = run_tiny_study(tmp_path, name="fresh_clone_tiny", seeds=(0,))
    first = capsys.readouterr().out
    assert "teacher f0 s0 (" in first and "trained here): best val AUC" in first
    used = set(results.load("fresh_clone_tiny")["teacher_run_id"].dropna())
    assert len(used) == 1
    teachers.export(used.pop())
    (results.RESULTS / "fresh_clone_tiny.csv").unlink()  # the trials must run again
    old = mlflow.get_tracking_uri()
    tracking.setup(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        runner.run_study(spec, beats=synthetic, device="cpu", progress=False)
        exp = MlflowClient().get_experiment_by_name("teachers")
        runs = MlflowClient().search_runs([exp.experiment_id])
        assert len(runs) == 1 and runs[0].data.tags["imported_from"]  # imported, not trained
        line = f"imported from results/teachers/): best val AUC {runs[0].data.metrics['best_val_auc']:.4f}, test AUC"
        assert line in capsys.readouterr().out
        assert len(results.load("fresh_clone_tiny")) == len(spec.trials)
    finally:
        tracking.setup(old)


def test_reproduce_retrains_committed_trials_in_a_scratch_store(tmp_path, tracking_store, synthetic, capsys):
    """`reproduce` retrains the committed rows bit for bit, leaves this machine's store as it was,
    and says so; a row whose weights differ is reported DIFFERENT."""
    from ablation.study.reproduce import reproduce
    from ablation.study.spec import select_part
    spec = run_tiny_study(tmp_path, name="reproduce_tiny", seeds=(0,))
    before = len(tracking.runs_of("reproduce_tiny"))
    part = select_part(spec, variants=["kd_score_kl"])
    table = reproduce(part, beats=synthetic, device="cpu", progress=False)
    assert list(table["identical"]) == [True] and list(table["match"]) == ["weights SHA-256"]
    assert len(tracking.runs_of("reproduce_tiny")) == before  # nothing written to this store
    committed = results.load("reproduce_tiny")
    committed["weights_sha256"] = "f" * 64
    committed.to_csv(results.results_path("reproduce_tiny"), index=False)
    assert not reproduce(part, beats=synthetic, device="cpu", progress=False)["identical"].any()
    assert "DIFFERENT" in capsys.readouterr().out


def test_reproduce_keeps_each_check_and_the_report_states_the_noise_floor(tmp_path, tracking_store, synthetic):
    """Each reproduction check lands in results/reproductions.csv (one row per trial key and machine:
    a rerun here replaces it), and the study's report page states the floor they measure."""
    from ablation.report.aggregate import collect
    from ablation.study.reproduce import reproduce
    from ablation.study.spec import select_part
    spec = run_tiny_study(tmp_path, name="noise_tiny", seeds=(0,))
    part = select_part(spec, variants=["student_alone"])
    reproduce(part, beats=synthetic, device="cpu", progress=False)
    reproduce(part, beats=synthetic, device="cpu", progress=False)
    table = pd.read_csv(results.RESULTS / "reproductions.csv")
    mine = table[table["study"] == "noise_tiny"]
    assert len(mine) == 1 and bool(mine["identical"].iloc[0])
    assert mine["trial_key"].iloc[0] == part.trials[0].key and mine["mode"].iloc[0] == "avx2-r1"
    notes = " ".join(collect("noise_tiny").notes)
    assert "Run-to-run noise floor: 1 of 1 committed trials retrained by `reproduce` gave identical weights" in notes


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


def test_the_committed_teachers_are_whole_and_are_the_studies_teachers(mitdb):
    """Real records: every row of results/teachers.csv has its committed checkpoint (hash checked,
    loadable with weights_only), one row per key, and each seed-0 one-lead row is the teacher the
    headline study asks for on its fold (its key from the real beats), so a fresh clone imports it."""
    import hashlib
    import torch
    from ablation.data.mitdb import Protocol, load_beats
    from ablation.paths import PROJECT_ROOT
    from ablation.run import run_key
    from ablation.study.spec import load_study
    table = pd.read_csv(PROJECT_ROOT / "results" / "teachers.csv", dtype={"run_key": str})
    assert len(table) >= 1 and table["run_key"].is_unique
    for row in table.itertuples():
        path = PROJECT_ROOT / "results" / "teachers" / f"{row.run_key}.pt"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256, path
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert set(state) == {"config", "G", "D"} and state["config"]["data"]["fold"] == row.fold
    fingerprint = load_beats(Protocol(), mitdb, progress=False).fingerprint
    wanted = {t.data.fold: run_key(t, fingerprint) for trial in load_study("headline").trials
              if trial.config.reads_teacher() for t in trial.config.teacher_configs()}
    beatgan = table.reindex(columns=["family"])["family"].fillna("beatgan") == "beatgan"  # headline's family
    for row in table[(table["seed"] == 0) & (table["nc"] == 1) & beatgan].itertuples():
        assert wanted[row.fold] == row.run_key, f"fold {row.fold}"


def test_a_committed_table_keeps_large_counts_exact_beside_missing_values(tmp_path):
    """The undistilled baseline names no teacher, so `teacher_params` is a float column with gaps; its
    2,612,288 was written as 2.61229e+06 (six significant digits, as every float is): counts stay exact."""
    from ablation.paths import replace_csv
    frame = pd.DataFrame({"variant": ["student_alone", "kd_recon"], "teacher_params": [float("nan"), 2_612_288.0],
                          "test_auc": [0.8934123456, 0.9]})
    replace_csv(tmp_path / "t.csv", frame)
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["teacher_params"].iloc[1] == 2_612_288 and pd.isna(back["teacher_params"].iloc[0])
    assert back["test_auc"].iloc[0] == 0.893412  # metrics keep their six digits


def test_adding_a_row_leaves_the_committed_rows_text_as_it_was(tmp_path, monkeypatch):
    """A trial written on another machine keeps its row byte for byte when this machine adds one: a
    parameter whose value is the text None (the whole training set) stays None, not an empty cell."""
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    row = {"trial_key": "a", "run_id": "r1", "status": "FINISHED", "scale": "cpu", "variant": "x", "fold": 2,
           "seed": 0, "test_auc": 0.891234, "param.data.train_subset": "None"}
    results.write("s", pd.DataFrame([row]))
    before = (tmp_path / "s.csv").read_text().splitlines()
    results.write("s", pd.DataFrame([{**row, "trial_key": "b", "run_id": "r2", "seed": 1}]))
    after = (tmp_path / "s.csv").read_text().splitlines()
    assert after[:2] == before and after[2].split(",")[-1] == "None"
