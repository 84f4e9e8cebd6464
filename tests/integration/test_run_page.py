"""A run's MLflow page (synthetic beats, tiny models): its figures, its split as a dataset input,
the same beats in every run of a fold, the teacher's reconstructions on a student's page, a study's
report on its parent run, and both in the MLflow UI in headless Chromium (the run's figures drawn,
its split listed among its datasets, the report drawn on the parent run's page).

The browser test starts ``mlflow ui`` on 127.0.0.1 on this session's store and needs the Debian
package `chromium`: skipped where it is absent, except under CI (env var CI set), where its
absence fails the test.
"""
import os
import re
import shutil
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ablation import tracking
from ablation.config import RunConfig, from_dict
from ablation.data.mitdb import CLASSES
from ablation.run import execute
from support.tiny import tiny_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import mlflow_screenshot  # noqa: E402

FIGURES = {"beats.html", "pr.html", "roc.html", "scores_per_class.html"}
GRID_TITLE = re.compile(r"([NSVFQ]), test beat (\d+)\\u003cbr\\u003eMSE ([0-9.e+-]+)")


def student(seed: int) -> RunConfig:
    return from_dict(RunConfig, tiny_dict("student", train={"seed": seed},
                                          distill={"kd": {"kind": "recon", "weight": 1.0}}))


@pytest.fixture(scope="module")
def students(tracking_store, synthetic) -> list[str]:
    """Two students of fold 0 (seeds 0 and 1) of one teacher: their run ids."""
    return [execute(student(s), beats=synthetic, progress=False, skip_finished=False).run_id for s in (0, 1)]


@pytest.fixture(scope="module")
def teacher(students) -> str:
    return tracking.get_run(students[0]).data.tags["teacher_run_id"]


def figure_html(run_id: str, name: str) -> str:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"figures/{name}")).read_text()


def grid_beats(run_id: str) -> list[tuple[str, int, float]]:
    """(class, test index, reconstruction MSE) of each beat in a run's grid, in grid order."""
    return [(c, int(i), float(m)) for c, i, m in GRID_TITLE.findall(figure_html(run_id, "beats.html"))]


def test_every_run_logs_its_figures_and_its_split(students, teacher):
    split = "mitdb-beatgan-fold0-seed0-train256"  # the teacher's caps: 256 training beats, every validation beat
    for run_id, name in [(teacher, split), *((s, split + "-val200") for s in students)]:
        assert {Path(a.path).name for a in MlflowClient().list_artifacts(run_id, "figures")} == FIGURES
        run = tracking.get_run(run_id)
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.digest == run.data.tags["data_fingerprint"] and inp.dataset.name == name
        assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    assert "this run: AUC" in figure_html(students[0], "roc.html")
    assert "F1-best threshold" in figure_html(students[0], "scores_per_class.html")


def test_every_run_of_a_fold_shows_the_same_beats(students, teacher):
    grids = [[(c, i) for c, i, _ in grid_beats(r)] for r in (teacher, *students)]
    assert grids[0] == grids[1] == grids[2]
    assert [c for c, _ in grids[0]] == CLASSES * 2  # row by row: the first beat of each class, then the last


def test_the_grid_shows_each_beats_stored_score(students):
    scores = tracking.load_scores(students[0])
    beats = grid_beats(students[0])
    assert [CLASSES[k] for k in scores["cls"].iloc[[i for _, i, _ in beats]]] == [c for c, _, _ in beats]
    np.testing.assert_allclose([m for _, _, m in beats], scores["score"].iloc[[i for _, i, _ in beats]], rtol=0.05)  # 2 digits


def test_a_students_grid_shows_its_teacher_and_a_teachers_does_not(students, teacher):
    assert '"name":"teacher"' in figure_html(students[0], "beats.html")
    assert '"name":"residual, teacher"' in figure_html(students[0], "beats.html")
    assert '"name":"teacher"' not in figure_html(teacher, "beats.html")


@pytest.fixture(scope="module")
def study_parent(tracking_store, tmp_path_factory) -> str:
    """The parent run of a tiny study (2 variants, 1 seed) run to its end."""
    from support.report_samples import run_tiny_study
    run_tiny_study(tmp_path_factory.mktemp("page_study"), "page_study", seeds=(0,))
    (parent,) = tracking.parent_runs("page_study")
    return parent.info.run_id


def test_a_studys_parent_run_carries_its_report(study_parent):
    names = {Path(a.path).name for a in MlflowClient().list_artifacts(study_parent, "report")}
    assert names == {"page_study.html", "page_study.csv", "page_study.md"}
    page = Path(mlflow.artifacts.download_artifacts(run_id=study_parent, artifact_path="report/page_study.html"))
    assert "<h1>" in page.read_text() and "kd_score_kl" in page.read_text()


# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; CI must run `apt-get install -y chromium` (Debian package)")
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def mlflow_ui(tracking_store, chromium) -> str:
    """`mlflow ui` on 127.0.0.1 on this session's store; its base address."""
    with mlflow_screenshot.ui_server(tracking_store) as base:
        yield base


def overview_text(browser, run_id: str, base: str, expect: str, timeout: float = 60) -> str:
    """The text of a run's overview page in the UI once `expect` shows (or after `timeout` seconds)."""
    exp = tracking.get_run(run_id).info.experiment_id
    browser.page("Page.navigate", url=f"{base}/#/experiments/{exp}/runs/{run_id}")
    end = time.time() + timeout
    while expect not in (text := browser.js("document.body.innerText") or "") and time.time() < end:
        browser.wait(1)
    return text


def test_the_run_page_draws_the_figures_in_a_browser(mlflow_ui, students, study_parent, tmp_path):  # skips first
    run = tracking.get_run(students[0])
    browser = mlflow_screenshot.Browser(1400, 1100)
    try:
        (grid,) = mlflow_screenshot.open_artifact(browser, students[0], "figures/beats.html", mlflow_ui)
        (roc,) = mlflow_screenshot.open_artifact(browser, students[0], "figures/roc.html", mlflow_ui)
        browser.screenshot(tmp_path / "roc.png")
        overview = overview_text(browser, students[0], mlflow_ui, "mitdb-beatgan")
        report = mlflow_screenshot.open_artifact(browser, study_parent, "report/page_study.html", mlflow_ui)
    finally:
        browser.close()
    assert report and report[0]["title"].startswith("test AUC per variant")  # the report's first figure, offline
    assert f"mitdb-beatgan-fold0-seed0-train256-val200 ({run.data.tags['data_fingerprint']})" in overview
    assert grid["svgs"] and grid["traces"] == 10 * 5  # 10 beats: the beat, 2 reconstructions, 2 residuals
    assert {"beat", "this run", "teacher", "residual, teacher"} <= set(grid["legend"])
    assert roc["title"].startswith("ROC curve on test") and any("AUC" in t for t in roc["legend"])
    assert (tmp_path / "roc.png").stat().st_size > 30_000  # a blank page compresses to a few kB
