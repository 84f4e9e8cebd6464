"""End to end on synthetic beats (fast; not ECG): a run in MLflow, teacher reuse, score, CLI errors."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from ablation import tracking
from ablation.__main__ import main
from ablation.config import from_dict, RunConfig
from ablation.report.aggregate import runs_frame
from ablation.run import execute
from ablation.study import results
from support.tiny import tiny_dict

TINY = tiny_dict(train={"epochs": 2}, data={"train_subset": 512, "val_subset": None})


@pytest.fixture(scope="module")
def teacher_run(tracking_store, synthetic):
    cfg = from_dict(RunConfig, TINY)
    return cfg, execute(cfg, beats=synthetic, progress=False)


def test_run_logs_everything(teacher_run):
    cfg, out = teacher_run
    run = MlflowClient().get_run(out.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.ndf"] == "4" and run.data.params["train.epochs"] == "2"
    for tag in ("git_commit", "data_fingerprint", "device", "role", "run_key"):
        assert run.data.tags[tag]
    for m in ("test_auc", "test_ap", "test_f1", "test_f1_threshold", "test_auc_V", "best_epoch"):
        assert m in run.data.metrics
    hist = MlflowClient().get_metric_history(out.run_id, "val_auc")
    assert [h.step for h in hist] == [0, 1]
    for loss in ("loss_d", "loss_g_rec", "loss_g_adv"):
        assert len(MlflowClient().get_metric_history(out.run_id, loss)) == 2
    arts = {a.path for a in MlflowClient().list_artifacts(out.run_id)}
    assert {"config.yaml", "checkpoint", "scores"} <= arts
    scores = tracking.load_scores(out.run_id)
    assert list(scores.columns) == ["score", "label", "cls"] and len(scores) == len(out.result.test_scores)
    np.testing.assert_allclose(scores.score, out.result.test_scores, rtol=1e-5)
    assert run.data.metrics["test_auc"] == pytest.approx(out.result.test["auc"])


def test_finished_run_is_found_not_retrained(teacher_run, synthetic):
    cfg, out = teacher_run
    again = execute(cfg, beats=synthetic, progress=False)
    assert again.run_id == out.run_id and again.result is None


def test_the_seed_makes_a_run_repeatable(teacher_run, synthetic):
    cfg, out = teacher_run
    torch.manual_seed(12345)  # whatever the global random state before the run, the seed decides
    again = execute(cfg, beats=synthetic, progress=False, skip_finished=False)
    assert again.run_id != out.run_id
    untimed = lambda history: [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]  # noqa: E731
    assert untimed(again.result.history) == untimed(out.result.history)
    for k, v in out.result.state["G"].items():
        assert torch.equal(v, again.result.state["G"][k]), k


def test_a_run_killed_mid_training_resumes_in_a_new_run_to_the_same_weights(teacher_run, synthetic):
    """The kill lands after epoch 0 is logged: the next attempt continues from epoch 1 (the
    state file, under runs/resume/), logs the whole curve, and ends with the same weights."""
    cfg, out = teacher_run
    cfg = from_dict(RunConfig, {**TINY, "train": {**TINY["train"], "epochs": 3}})

    def kill(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(cfg, beats=synthetic, progress=False, on_epoch=kill)
    again = execute(cfg, beats=synthetic, progress=False)
    whole = execute(cfg, beats=synthetic, progress=False, skip_finished=False)
    tags = MlflowClient().get_run(again.run_id).data.tags
    assert tags["resumed_at_epoch"] == "1" and "resumed_at_epoch" not in MlflowClient().get_run(whole.run_id).data.tags
    assert tags["weights_sha256"] == MlflowClient().get_run(whole.run_id).data.tags["weights_sha256"]
    assert [h.step for h in MlflowClient().get_metric_history(again.run_id, "val_auc")] == [0, 1, 2]
    assert not list(tracking.resume_dir().glob("*.pt"))  # cleared once a run has finished


def test_a_scratch_store_keeps_its_own_run_states(tracking_store):
    """`reproduce` retrains in a scratch store: it must train from scratch, not resume this machine's state."""
    outside = tracking.resume_dir()
    with tracking.scratch_store() as tmp:
        inside = tracking.resume_dir()
    assert inside.is_relative_to(tmp) and inside != outside and tracking.resume_dir() == outside


def test_checkpoint_loads_weights_only_and_score_round_trip(teacher_run, synthetic, tmp_path):
    cfg, out = teacher_run
    cfg2, state = tracking.load_checkpoint(out.run_id)
    assert cfg2 == cfg
    raw = (synthetic.x[:50, :1] * 3.0 + 7.0).astype(np.float32)  # un-normalised beats
    np.save(tmp_path / "beats.npy", raw)
    assert main(["score", "--model", out.run_id, "--input", str(tmp_path / "beats.npy"),
                 "--output", str(tmp_path / "s.npy"), "--device", "cpu"]) == 0
    s = np.load(tmp_path / "s.npy")
    from ablation.run import load_model
    from ablation.train.evaluate import scores
    model = load_model(cfg2, state, torch.device("cpu"))
    np.testing.assert_allclose(s, scores(model.G, torch.from_numpy(synthetic.x[:50, :1])), rtol=1e-4, atol=1e-6)


def test_bn_check_reports_the_stored_auc_and_leaves_the_model_alone(teacher_run, synthetic, single_thread):
    """bn-check's eval-mode AUC is the run's own; its other BN treatments work on copies."""
    from ablation.data.dataset import load_data
    from ablation.run import load_model
    from ablation.analysis.bn_check import batch_stat_scores, bn_modes, with_bn_from
    from ablation.train.evaluate import scores
    cfg, out = teacher_run
    G = load_model(*tracking.load_checkpoint(out.run_id), torch.device("cpu")).G
    before = {k: v.clone() for k, v in G.state_dict().items()}
    data = load_data(cfg.data, beats=synthetic, progress=False)
    res = bn_modes(G, data)
    assert set(res) == {"val", "test", "val_batch_stats", "test_batch_stats", "test_bn_from_val", "test_bn_from_train"}
    assert res["test"] == pytest.approx(out.result.test["auc"], abs=1e-6)
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items())
    # one batch holding every beat: per-batch statistics = running statistics recomputed on those beats
    # (up to BN's unbiased running variance, n / (n - 1))
    x = data.val.x
    one = batch_stat_scores(G, x, batch_size=len(x))
    np.testing.assert_allclose(one, scores(with_bn_from(G, x, batch_size=len(x)), x), rtol=2e-2, atol=1e-6)
    assert not np.allclose(one, scores(G, x), rtol=2e-2)


def test_cli_errors_are_clear(tmp_path, capsys, tracking_store):
    assert main(["train", "--mitdb", str(tmp_path), "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "MIT-BIH records not found" in err and str(tmp_path) in err
    assert main(["train", "--set", "train.lr_schedule=linear"]) == 2
    err = capsys.readouterr().err
    assert "train.lr_schedule" in err and "'cosine'" in err
    assert main(["train", "--set", "model.ndff=3"]) == 2
    assert "unknown key `model.ndff`" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.zeros((3, 1, 100), np.float32))
    assert main(["score", "--model", str(tmp_path / "none.pt"), "--input", str(tmp_path / "bad.npy"),
                 "--output", str(tmp_path / "o.npy")]) == 2
    assert "neither a checkpoint file nor an MLflow run" in capsys.readouterr().err
    assert main(["bn-check", str(tmp_path / "none.pt")]) == 2
    assert "neither a checkpoint file nor an MLflow run" in capsys.readouterr().err


def test_students_share_one_teacher_whatever_their_scale_knobs():
    """A student's train/val caps never leak into its teacher's key: studies reuse one teacher."""
    a = from_dict(RunConfig, {"role": "student", "data": {"train_subset": 4096, "val_subset": 2000}, "distill": {}})
    b = from_dict(RunConfig, {"role": "student", "data": {"train_subset": 8192}, "model": {"ndf": 4},
                              "distill": {"kd": {"kind": "recon"}}})
    assert a.teacher_config() == b.teacher_config()
    assert a.teacher_config().data.val_subset is None and a.teacher_config().data.train_subset is None


def test_processes_started_together_share_a_fresh_store(tmp_path):
    """Runs launched at once on an empty runs/ all reach the store (MLflow's first-use schema build
    is not safe across processes: without setup's lock most of these three fail with a SQL error)."""
    code = ("import sys; from mlflow.tracking import MlflowClient; from ablation import tracking; "
            "tracking.setup(sys.argv[1]); MlflowClient().search_experiments()")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    stderrs = [p.communicate()[1] for p in procs]
    errors = [err for p, err in zip(procs, stderrs) if p.returncode != 0]
    assert not errors, errors[0][-500:]


def test_history_writes_the_learning_curve(teacher_run, tmp_path):
    import pandas as pd
    cfg, out = teacher_run
    assert main(["history", out.run_id, "--csv", str(tmp_path / "h.csv")]) == 0
    h = pd.read_csv(tmp_path / "h.csv")
    assert list(h["epoch"]) == [0, 1] and set(h["seed"]) == {0} and set(h["fold"]) == {0}
    assert h["val_auc"].tolist() == pytest.approx([row["val_auc"] for row in out.result.history])


def test_experiments_open_on_the_runs_table_and_trials_are_named(tracking_store, tmp_path):
    from ablation.study.runner import run_study
    from ablation.study.spec import load_study
    from support.report_samples import write_tiny_study
    from ablation.data.synthetic import synthetic_beats
    spec = load_study(write_tiny_study(tmp_path, "named_runs", seeds=(0,)))
    run_study(spec, beats=synthetic_beats(seed=0), device="cpu", progress=False)
    exp = MlflowClient().get_experiment_by_name("named_runs")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracking.ui_link("named_runs").endswith(f"#/experiments/{exp.experiment_id}?workflowType=machine_learning")
    names = {r.info.run_name for r in MlflowClient().search_runs([exp.experiment_id], "tags.trial_key != ''")}
    assert names == {"student_alone f0 s0", "kd_score_kl f0 s0"}


def test_rescore_at_weight_zero_is_the_runs_own_auc_and_the_weight_is_chosen_on_validation(teacher_run, synthetic):
    from ablation.data.dataset import load_data
    from ablation.run import load_model
    from ablation.analysis.rescore import WEIGHTS, rescore
    cfg, out = teacher_run
    model = load_model(*tracking.load_checkpoint(out.run_id), torch.device("cpu"))
    res = rescore(model, load_data(cfg.data, beats=synthetic, progress=False))
    assert res["test_auc_plain"] == pytest.approx(out.result.test["auc"], abs=1e-6)  # a monotone map of the MSE
    assert res["val_auc_chosen"] == max(res[f"val_auc_w{w:g}"] for w in WEIGHTS) and res["weight"] in WEIGHTS
    assert res["val_auc_w4"] != res["val_auc_w0"]  # the feature residual changes the ranking
    for name in ("feat", "latent", "window"):
        assert res[f"{name}_weight"] in WEIGHTS and res[f"{name}_val_auc"] >= res["val_auc_plain"]
    assert res["feat_test_auc"] == res["test_auc_chosen"]
    best = max(["rec", "feat", "latent", "window"],  # the validation's choice; max keeps the first of equals
               key=lambda n: res["val_auc_plain"] if n == "rec" else res[f"{n}_val_auc"])
    assert res["best_score"] == best and res["test_auc_best"] == (
        res["test_auc_plain"] if best == "rec" else res[f"{best}_test_auc"])


def test_snapshot_ensemble_of_one_is_the_run_itself(tracking_store, synthetic):
    """A run with train.snapshots keeps them in MLflow, best first; K = 1 is the run's own test AUC."""
    from ablation.data.dataset import load_data
    from ablation.run import load_model
    from ablation.analysis.ensemble import curve, member
    cfg = from_dict(RunConfig, {**TINY, "train": {"epochs": 3, "device": "cpu", "val_per_epoch": 2,
                                                  "snapshots": 3, "snapshot_gap": 0.5}})
    out = execute(cfg, beats=synthetic, progress=False)
    refs = tracking.snapshot_refs(out.run_id)
    assert len(refs) == 3
    hist = MlflowClient().get_metric_history(out.run_id, "snapshot_val_auc")
    assert sorted(h.step for h in hist) == [0, 1, 2] and hist[0].value == pytest.approx(out.result.val["auc"])
    data = load_data(cfg.data, beats=synthetic, progress=False)
    members = [member(str(i), load_model(*tracking.load_checkpoint(p), torch.device("cpu")), data)
               for i, p in enumerate(refs)]
    rows = curve(members, data)
    assert [r["k"] for r in rows] == [1, 2, 3] and rows[2]["members"] == "0 1 2"
    assert rows[0]["test_auc"] == pytest.approx(out.result.test["auc"], abs=1e-6)
    normals = members[0].val[data.val.y == 0]  # standardised on the validation normals
    assert abs(normals.mean()) < 1e-9 and normals.std() == pytest.approx(1.0)


def test_ensemble_cli_each_run_of_its_own_snapshots(tracking_store, synthetic, monkeypatch, tmp_path):
    """`ensemble RUN_A RUN_B --snapshots --each`: one K = 1..k table per run, in one CSV; without
    --each the runs' snapshots are members of one ensemble (synthetic beats stand in for the records)."""
    import pandas as pd
    from ablation.data import dataset
    real = dataset.load_data
    monkeypatch.setattr(dataset, "load_data", lambda cfg, mitdb=None, **kw: real(cfg, beats=synthetic, **kw))
    cfg = {**TINY, "train": {"epochs": 3, "device": "cpu", "val_per_epoch": 2, "snapshots": 2, "snapshot_gap": 0.5}}
    runs = [execute(from_dict(RunConfig, {**cfg, "train": {**cfg["train"], "seed": s}}), beats=synthetic,
                    progress=False) for s in (11, 12)]  # seeds no other test trains (snapshots is not in the run key)
    csv = tmp_path / "each.csv"
    assert main(["ensemble", *[r.run_id for r in runs], "--snapshots", "--each", "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert list(table["k"]) == [1, 2, 1, 2] and list(table["runs"]) == [runs[0].run_id] * 2 + [runs[1].run_id] * 2
    for r in runs:
        assert table[(table["runs"] == r.run_id) & (table["k"] == 1)]["test_auc"].item() == pytest.approx(
            r.result.test["auc"], abs=1e-5)
    assert main(["ensemble", *[r.run_id for r in runs], "--snapshots", "--csv", str(csv)]) == 0
    both = pd.read_csv(csv)  # the one ensemble of both runs' snapshots joins the per-run rows
    assert list(both["k"]) == [1, 2, 1, 2, 1, 2, 3, 4] and both["runs"].nunique() == 3


def test_ensemble_cli_by_fold_one_seed_ensemble_per_fold(tracking_store, synthetic, monkeypatch, tmp_path):
    """`ensemble RUN... --by-fold`: the runs are grouped by their fold (order kept within a fold), one
    K = 1..n table per fold in one CSV; without it runs of two folds are refused (synthetic beats)."""
    import pandas as pd
    from ablation.data import dataset
    real = dataset.load_data
    monkeypatch.setattr(dataset, "load_data", lambda cfg, mitdb=None, **kw: real(cfg, beats=synthetic, **kw))
    runs = [execute(from_dict(RunConfig, {**TINY, "data": {**TINY["data"], "fold": f},
                                          "train": {**TINY["train"], "seed": s}}), beats=synthetic, progress=False)
            for f, s in ((0, 21), (1, 21), (0, 22))]
    ids = [r.run_id for r in runs]
    import mlflow
    ids[2] = mlflow.artifacts.download_artifacts(run_id=ids[2], artifact_path=tracking.CHECKPOINT,
                                                 dst_path=str(tmp_path))  # a file: no MLflow params, like an import
    csv = tmp_path / "by_fold.csv"
    assert main(["ensemble", *ids, "--by-fold", "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert list(zip(table["fold"], table["k"])) == [(0, 1), (0, 2), (1, 1)]
    assert table["runs"].iloc[0] == f"{ids[0]} {ids[2]}" and table["runs"].iloc[2] == ids[1]
    assert table["test_auc"].iloc[2] == pytest.approx(runs[1].result.test["auc"], abs=1e-5)
    assert main(["ensemble", *ids]) != 0  # two folds in one ensemble: a one-line error
    assert main(["ensemble", ids[1], "--csv", str(csv)]) == 0  # fold 1 again: its rows replaced, fold 0's kept
    again = pd.read_csv(csv)
    assert list(zip(again["fold"], again["k"])) == [(0, 1), (0, 2), (1, 1)]
    pd.testing.assert_frame_equal(again, table)


def test_ensemble_averages_standardised_scores():
    """Two noisy (standardised) members: their average ranks better than either alone."""
    from types import SimpleNamespace
    from ablation.analysis.ensemble import Member, curve
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(400), np.ones(100)].astype(int)
    data = SimpleNamespace(val=SimpleNamespace(y=y), test=SimpleNamespace(y=y))
    a, b = y + rng.normal(0, 1, (2, len(y)))
    rows = curve([Member("a", a, a), Member("b", b, b)], data)
    assert rows[1]["test_auc"] > rows[0]["test_auc"] + 0.02
    from sklearn.metrics import roc_auc_score
    assert rows[1]["test_auc"] == pytest.approx(roc_auc_score(y, a + b))  # the plain mean


def test_a_student_of_an_ensemble_trains_each_member_teacher_once(tracking_store, synthetic):
    cfg = from_dict(RunConfig, tiny_dict("student", distill={"teacher_seeds": [0, 1], "kd": {"kind": "recon"}}))
    out = execute(cfg, beats=synthetic, progress=False)
    run = MlflowClient().get_run(out.run_id)
    members = run.data.tags["teacher_run_ids"].split(",")
    assert len(set(members)) == 2 and run.data.tags["teacher_run_id"] == members[0]
    seeds = {MlflowClient().get_run(m).data.params["train.seed"] for m in members}
    assert seeds == {"0", "1"}
    assert int(run.data.tags["teacher_params"]) == 2 * sum(
        int(MlflowClient().get_run(members[0]).data.tags[k]) for k in ("params_G", "params_D"))
    assert "test_auc" in run.data.metrics and len(out.result.history) == 1
    row = results.table(runs_frame([run])).iloc[0]  # the committed table names every member, in order
    assert row["teacher_run_id"] == members[0] and row["teacher_run_ids"] == ",".join(members)


def test_two_leads_train_a_two_lead_teacher_and_student(tracking_store, synthetic, tmp_path):
    """data.nc 2 (MLII and the other lead): the teacher and the student both read both leads."""
    cfg = from_dict(RunConfig, tiny_dict("student", data={"nc": 2}, distill={"kd": {"kind": "recon"}}))
    out = execute(cfg, beats=synthetic, progress=False)
    _, state = tracking.load_checkpoint(out.run_id)
    first = next(v for k, v in state["G"].items() if k.endswith("weight") and v.dim() == 3)
    assert first.shape[1] == 2  # the first convolution reads two channels
    teacher = MlflowClient().get_run(MlflowClient().get_run(out.run_id).data.tags["teacher_run_id"])
    assert teacher.data.params["data.nc"] == "2" and 0.0 <= out.result.test["auc"] <= 1.0
    np.save(tmp_path / "beats.npy", synthetic.x[:20, :2].astype(np.float32))
    assert main(["score", "--model", out.run_id, "--input", str(tmp_path / "beats.npy"),
                 "--output", str(tmp_path / "s.npy"), "--device", "cpu"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (20,)


def test_a_student_without_terms_trains_and_names_no_teacher(tracking_store, synthetic, monkeypatch):
    """The undistilled baseline reads no teacher: none is found, trained or recorded for it."""
    from ablation import run as run_module
    monkeypatch.setattr(run_module, "ensure_teacher", lambda *a, **k: pytest.fail("a teacher was looked up"))
    out = execute(from_dict(RunConfig, tiny_dict("student")), beats=synthetic, progress=False, experiment="alone")
    tags = MlflowClient().get_run(out.run_id).data.tags
    assert "teacher_run_id" not in tags and tags["role"] == "student"


def test_a_run_records_its_numeric_path_and_weights_hash(teacher_run):
    from ablation import numerics
    cfg, out = teacher_run
    tags = MlflowClient().get_run(out.run_id).data.tags
    assert tags["numerics.mode"] == numerics.mode() and tags["numerics.threads"] == "1"
    assert tags["numerics.onednn_max_cpu_isa"] == "AVX2" and tags["numerics.aten_capability"] == "AVX2"
    assert tags["numerics.cpu_model"] and tags["numerics.torch"] == torch.__version__
    assert tags["weights_sha256"] == numerics.weights_hash(out.result.state)


def test_a_teacher_trained_for_a_student_trains_on_its_own_split(tracking_store, synthetic):
    """A teacher key names the teacher's split (its training subset, the full validation set), not
    the student's: the teacher a student's run trains first has the weights of the same teacher
    trained on its own config in another store (before the fix it trained on the student's subsets)."""
    student = from_dict(RunConfig, tiny_dict("student", data={"val_subset": 64},
                                             distill={"kd": {"kind": "recon"}, "teacher_train_subset": 128}))
    first = execute(student, beats=synthetic, experiment="own_split", progress=False)
    teacher_id = tracking.get_run(first.run_id).data.tags["teacher_run_id"]
    with tracking.scratch_store():
        alone = execute(student.teacher_config(), beats=synthetic, progress=False)
        alone_hash = tracking.get_run(alone.run_id).data.tags["weights_sha256"]
    assert tracking.get_run(teacher_id).data.tags["weights_sha256"] == alone_hash
