"""Bad command-line input met on the second day (issue 38's probes): each ends in one line that
names the run, file or folder, and what is allowed, before any work is done."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from ablation import tracking
from ablation.models.beatgan import BeatGAN
from support.cli import one_line_error
from support.tiny import tiny


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """An untrained one-lead tiny model saved as a checkpoint file (what `score` reads)."""
    cfg = tiny()
    model = BeatGAN.build(cfg.model, cfg.data.nc)
    path = tmp_path / "model.pt"
    torch.save({"config": cfg.to_dict(), "G": model.G.state_dict(), "D": model.D.state_dict()}, path)
    return path


@pytest.fixture
def beats(tmp_path) -> Path:
    path = tmp_path / "beats.npy"
    np.save(path, np.random.default_rng(0).normal(size=(4, 1, 320)).astype(np.float32))
    return path


# ------------------------------------------------------------------------------------------------
# history
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run_id", ["abcdef0123456789abcdef0123456789", "../../x"])
def test_history_of_an_unknown_run_is_named(tmp_path, capsys, tracking_store, run_id):
    err = one_line_error(capsys, ["history", run_id, "--csv", str(tmp_path / "h.csv")])
    assert f"no MLflow run {run_id!r}" in err and not (tmp_path / "h.csv").exists()


def test_history_into_a_missing_folder_is_refused_first(tmp_path, capsys, tracking_store):
    err = one_line_error(capsys, ["history", "abc", "--csv", str(tmp_path / "none" / "h.csv")])
    assert f"--csv {tmp_path / 'none' / 'h.csv'}: the folder {tmp_path / 'none'} does not exist" in err


def test_history_of_a_run_without_per_epoch_metrics_is_an_error(tmp_path, capsys, tracking_store):
    client = MlflowClient()
    parent = client.create_run(tracking.experiment_id("hist"), tags={"study_parent": "hist@cpu"}).info.run_id
    err = one_line_error(capsys, ["history", parent, "--csv", str(tmp_path / "h.csv")])
    assert f"run {parent} logged no per-epoch metrics" in err and "parent run" in err
    assert not (tmp_path / "h.csv").exists()


# ------------------------------------------------------------------------------------------------
# score
# ------------------------------------------------------------------------------------------------
def test_score_output_must_be_a_npy_file_in_an_existing_folder(tmp_path, capsys, checkpoint, beats):
    args = ["score", "--model", str(checkpoint), "--input", str(beats), "--output"]
    assert "is a folder" in one_line_error(capsys, [*args, str(tmp_path)])
    err = one_line_error(capsys, [*args, str(tmp_path / "out")])
    assert f"--output {tmp_path / 'out'}: must end in .npy" in err and not (tmp_path / "out.npy").exists()
    assert "does not exist" in one_line_error(capsys, [*args, str(tmp_path / "none" / "s.npy")])


def test_score_refuses_extra_leads_and_complex_beats(tmp_path, capsys, checkpoint, beats):
    x = np.load(beats)
    np.save(tmp_path / "three.npy", np.concatenate([x, x, x], axis=1))
    np.save(tmp_path / "complex.npy", x.astype(np.complex64))
    args = ["--model", str(checkpoint), "--output", str(tmp_path / "s.npy")]
    err = one_line_error(capsys, ["score", "--input", str(tmp_path / "three.npy"), *args])
    assert "3 leads" in err and "reads 1" in err and "--leads 1" in err
    assert "dtype complex64" in one_line_error(capsys, ["score", "--input", str(tmp_path / "complex.npy"), *args])
    from ablation.__main__ import main
    assert main(["score", "--input", str(tmp_path / "three.npy"), "--leads", "1", *args]) == 0  # the first lead
    assert np.load(tmp_path / "s.npy").shape == (4,)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def test_report_out_an_existing_file_is_refused(tmp_path, capsys, tracking_store):
    (tmp_path / "f").write_text("x")
    err = one_line_error(capsys, ["report", "smoke", "--out", str(tmp_path / "f")])
    assert f"--out {tmp_path / 'f'}: is a file; the report needs a folder" in err


# ------------------------------------------------------------------------------------------------
# worker
# ------------------------------------------------------------------------------------------------
def test_a_worker_on_a_study_never_started_is_an_error_and_opens_no_run(tmp_path, capsys, tracking_store):
    import yaml

    from support.tiny import tiny_dict
    path = tmp_path / "never.yaml"
    path.write_text(yaml.safe_dump({"name": "never_started", "base": tiny_dict("student")}))
    err = one_line_error(capsys, ["worker", str(path)])
    assert "study never_started (scale cpu) has not been started" in err and "python -m ablation study" in err
    assert MlflowClient().get_experiment_by_name("never_started") is None


# ------------------------------------------------------------------------------------------------
# ensemble
# ------------------------------------------------------------------------------------------------
def test_ensemble_refuses_each_with_by_fold_and_a_run_given_twice(capsys, tracking_store):
    err = one_line_error(capsys, ["ensemble", "a", "b", "--each", "--by-fold"])
    assert "--each and --by-fold" in err
    err = one_line_error(capsys, ["ensemble", "a", "b", "a"])
    assert "a is given twice" in err and "K" in err


# ------------------------------------------------------------------------------------------------
# a damaged checkpoint of a run is named by the run
# ------------------------------------------------------------------------------------------------
def test_a_truncated_checkpoint_of_a_run_is_named_by_the_run(tmp_path, capsys, tracking_store, checkpoint, beats):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:200])
    run_id = tracking.log_imported("damaged", "damaged", {}, {}, truncated)
    err = one_line_error(capsys, ["score", "--model", run_id, "--input", str(beats), "--output",
                                  str(tmp_path / "s.npy")])
    assert f"run {run_id}: its {tracking.CHECKPOINT} is not a readable checkpoint" in err
    assert "/tmp" not in err.split("(")[0]


def test_bn_check_csv_in_a_missing_folder_is_refused_before_any_work(tmp_path, capsys, checkpoint):
    err = one_line_error(capsys, ["bn-check", str(checkpoint), "--csv", str(tmp_path / "none" / "b.csv")])
    assert f"--csv {tmp_path / 'none' / 'b.csv'}: the folder {tmp_path / 'none'} does not exist" in err
