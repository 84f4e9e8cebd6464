"""The run page's figures in memory: which beats the grid takes, and what each figure draws."""
import numpy as np

from ablation.report.run_page import BeatViews, beat_grid, pick_beats, score_distribution


def test_pick_beats_takes_the_first_and_last_of_each_class_present_in_class_order():
    cls = np.array([2, 0, 0, 2, 0, 4, 2, 0])  # V N N V N Q V N: no S, no F
    assert pick_beats(cls).tolist() == [1, 7, 0, 6, 5]  # N: first, last; V: first, last; Q: its only beat
    assert pick_beats(cls, per_class=3).tolist() == [1, 4, 7, 0, 3, 6, 5]  # N at 1 2 4 7: positions 0, 2 (1.5), 3
    assert pick_beats(cls).tolist() == pick_beats(cls.copy()).tolist()


def test_the_grid_draws_the_teacher_only_when_there_is_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 320)).astype(np.float32)
    views = BeatViews(np.array([3, 9]), np.array([0, 2]), x, x * 0.9, np.array([0.1, 0.2]))
    assert {t.name for t in beat_grid(views).data} == {"beat", "this run", "residual, this run"}
    views.teacher_recon, views.teacher_score = x * 0.8, np.array([0.05, 0.1])
    fig = beat_grid(views)
    teacher = [t for t in fig.data if t.name == "residual, teacher"]
    np.testing.assert_allclose(teacher[1].y, x[1] - x[1] * 0.8, rtol=1e-6)
    assert [a.text for a in fig.layout.annotations if a.text][:2] == [
        "N, test beat 3<br>MSE 0.1, teacher 0.05", "V, test beat 9<br>MSE 0.2, teacher 0.1"]


def test_the_score_distribution_gives_each_class_its_share_and_the_threshold():
    score = np.array([0.1, 0.2, 0.3, 1.0, 2.0])
    cls = np.array([0, 0, 0, 2, 2])
    fig = score_distribution(score, cls, threshold=0.5)
    n, v, thr = fig.data
    assert np.isclose(sum(n.y), 1) and np.isclose(sum(v.y), 1)
    assert n.name.startswith("N: 3 beats, 0.0% above") and v.name.startswith("V: 2 beats, 100.0% above")
    assert list(thr.x) == [0.5, 0.5] and fig.layout.xaxis.type == "log"
