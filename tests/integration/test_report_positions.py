"""The position map and the pre/post question: numbers by hand on made-up runs (no training), and a
staged study's report from its committed table alone on an empty MLflow store."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ablation.report import aggregate as agg
from ablation.report.positions import position_deltas, pre_post, pre_post_cells, taps

TAPS = [("enc", 0, "real"), ("enc", 1, "real"), ("dec", 3, "real"), ("disc", 2, "real"), ("disc", 2, "fake"),
        ("disc", 4, "fake")]


def effect(net: str, block: int, point: str, source: str) -> float:
    """A tap's made-up gain over the student alone: pre beats post by 0.002 x (block + 1), except on
    the reconstruction, where post is better by 0.001."""
    gain = 0.002 * (block + 1) if source == "real" else -0.001
    return 0.001 * block + (gain if point == "pre" else 0.0)


def made_up_runs(pairs: list[tuple[int, int]], stage: str, cells=TAPS) -> pd.DataFrame:
    """Runs of the student alone and of every tap of `cells` at both points on `pairs`; each pair
    adds its own offset (fold and seed noise), which pairing removes."""
    rows = []
    for fold, seed in pairs:
        noise = 0.01 * fold - 0.003 * seed
        rows.append({"variant": "student_alone", "base_variant": "student_alone", "fold": fold, "seed": seed,
                     "best_val_auc": 0.80 + noise, "test_auc": 0.85 + noise})
        for net, block, source in cells:
            for point in ("pre", "post"):
                e = effect(net, block, point, source) + 0.0005 * (fold % 2) * (point == "pre")
                name = f"fd_{source}/distill.features.0.position={net}.{block}.{point}"
                rows.append({"variant": name, "base_variant": f"fd_{source}", "fold": fold, "seed": seed,
                             "axis.distill.features.0.position": f"{net}.{block}.{point}",
                             "axis.distill.features.0.input": source,
                             "best_val_auc": 0.80 + noise + e, "test_auc": 0.85 + noise + 2 * e})
    frame = pd.DataFrame(rows).assign(stage=stage, status="FINISHED", scale="cpu")
    return frame.assign(trial_key=[f"{stage}-{i}" for i in range(len(frame))], run_id=None,
                        test_ap=frame["test_auc"] - 0.05, test_f1=frame["test_auc"] - 0.1,
                        start_time=np.arange(len(frame)) * 1000.0)


def test_taps_deltas_and_pre_minus_post_by_hand():
    runs = made_up_runs([(2, 0), (2, 1)], "screen")
    t = taps(runs)
    assert len(t) == 12 and set(t["input"]) == {"real", "fake"} and set(t["point"]) == {"pre", "post"}
    d = position_deltas(runs, "student_alone").set_index(["net", "block", "point", "input"])
    assert d.loc[("enc", 1, "pre", "real"), "best_val_auc_delta"] == pytest.approx(0.001 + 0.004)
    assert d.loc[("enc", 1, "pre", "real"), "test_auc_delta"] == pytest.approx(2 * 0.005)
    assert d.loc[("enc", 1, "pre", "real"), "n_pairs"] == 2
    cells = pre_post_cells(runs).set_index(["net", "block", "input"])
    assert cells.loc[("dec", 3, "real"), "best_val_auc_delta"] == pytest.approx(0.008)
    assert cells.loc[("disc", 4, "fake"), "test_auc_delta"] == pytest.approx(-0.002)
    by_cell = np.array([0.002 * (b + 1) if s == "real" else -0.001 for _, b, s in TAPS])
    overall = pre_post(runs).set_index("metric")
    assert overall.loc["validation AUC", "pre_minus_post"] == pytest.approx(by_cell.mean())
    assert overall.loc["validation AUC", "cells_pre_better"] == 4
    assert overall.loc["validation AUC", "p_wilcoxon_cells"] == \
        pytest.approx(stats.wilcoxon(cells["best_val_auc_delta"]).pvalue)
    lo, hi = stats.t.interval(0.95, len(by_cell) - 1, by_cell.mean(), stats.sem(by_cell))
    assert (overall.loc["validation AUC", "ci_low"], overall.loc["validation AUC", "ci_high"]) == \
        (pytest.approx(lo), pytest.approx(hi))
    assert np.isnan(overall.loc["test AUC", "p_fold_blocked"])  # one fold: no blocked test


def test_pre_minus_post_is_blocked_by_fold():
    """Every cell's differences are averaged per fold; the t-test runs over the fold means."""
    runs = made_up_runs([(0, 0), (1, 0), (2, 0), (3, 0)], "screen")
    by_cell = np.array([0.002 * (b + 1) if s == "real" else -0.001 for _, b, s in TAPS])
    fold_means = [by_cell.mean() + 0.0005 * (f % 2) for f in range(4)]
    overall = pre_post(runs).set_index("metric")
    assert overall.loc["validation AUC", "n_folds"] == 4
    assert overall.loc["validation AUC", "p_fold_blocked"] == pytest.approx(stats.ttest_1samp(fold_means, 0).pvalue)


def test_each_cell_gets_the_tables_tests_holm_adjusted_over_the_cells():
    """A confirmation's per-cell answer: per cell, the Wilcoxon p over its pairs and the fold-blocked
    p, each Holm-adjusted over the cells (two cells here: the two smallest x 2, capped at 1)."""
    runs = made_up_runs([(f, s) for f in (0, 1, 3, 4) for s in (0, 1)], "confirm", [("enc", 1, "real"), ("disc", 2, "fake")])
    cells = pre_post_cells(runs).set_index(["net", "block", "input"])
    raw, blocked = [], []
    for net, block, source in [("disc", 2, "fake"), ("enc", 1, "real")]:  # the cells' order
        pre, post = (f"fd_{source}/distill.features.0.position={net}.{block}.{p}" for p in ("pre", "post"))
        raw.append(agg.paired_test(runs, pre, post, "test_auc").p_value)
        blocked.append(agg.blocked_test(runs, pre, post, "test_auc").p_value)
    assert cells["test_auc_p"].tolist() == pytest.approx(agg.holm(raw))
    assert cells["test_auc_p_blocked"].tolist() == pytest.approx(agg.holm(blocked))
    assert cells.loc[("enc", 1, "real"), "test_auc_p"] < 0.05  # pre beats post by 0.008 on every pair
    assert cells.loc[("enc", 1, "real"), "n_pairs"] == 8
    assert np.isnan(pre_post_cells(made_up_runs([(2, 0), (2, 1)], "screen"))["test_auc_p_blocked"]).all()


def test_a_staged_report_from_the_committed_table_alone(tracking_store, tmp_path):
    """No MLflow run: the table is the confirmation's (Holm over its variants), the position map
    and the pre/post section the screen's; their CSVs are written beside the page."""
    from ablation.paths import RESULTS
    from ablation.report.page import build_report
    confirmed = [("enc", 1, "real")]
    screen = made_up_runs([(2, 0), (2, 1)], "screen")
    confirm = made_up_runs([(f, s) for f in (0, 1, 3, 4) for s in (0, 1)], "confirm", confirmed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    pd.concat([screen, confirm]).to_csv(RESULTS / "positions_demo.csv", index=False)
    html = build_report("positions_demo", tmp_path).read_text()
    data = agg.collect("positions_demo")
    assert set(data.summary["variant"]) == {"student_alone", "fd_real/distill.features.0.position=enc.1.pre",
                                            "fd_real/distill.features.0.position=enc.1.post"}
    assert data.summary["n_pairs"].dropna().eq(8).all() and len(data.screen) == len(screen)
    assert any("the table is the confirmation's 24 runs of 3 variants" in n for n in data.notes)
    assert 'data-figure="fig-positions"' in html and "Pre-activation against post-activation" in html
    positions = pd.read_csv(tmp_path / "positions_demo-positions.csv")
    assert len(positions) == 12 and set(positions["n_pairs"]) == {2}
    pre_post_table = pd.read_csv(tmp_path / "positions_demo-pre_post.csv")
    assert pre_post_table["stage"].value_counts().to_dict() == {"screen": len(TAPS) + 2, "confirm": 1}
    assert pre_post_table.loc[pre_post_table["stage"] == "confirm", "n_pairs"].tolist() == [8]
    text = (tmp_path / "positions_demo-positions.md").read_text()
    assert "| disc (fake) |" in text and "Pre minus post in the confirmation" in text
    enc = next(line for line in text.splitlines() if line.startswith("| enc 1 |")).split(" | ")
    assert enc[1] == "8" and float(enc[2].split(" [")[0]) == pytest.approx(0.004 + 0.0005 / 2, abs=1e-4)  # odd folds: +0.0005
    assert "In the confirmation" in html


def test_the_position_map_has_pre_and_post_panels_with_titles():
    from ablation.report.figures import position_map
    fig = position_map(position_deltas(made_up_runs([(2, 0), (2, 1)], "screen"), "student_alone"), "student_alone")
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:4] == ["Δ validation AUC, pre", "Δ validation AUC, post", "Δ test AUC, pre", "Δ test AUC, post"]
    assert list(fig.data[0].y) == ["enc", "dec", "disc (real)", "disc (fake)"] and list(fig.data[0].x) == \
        ["0", "1", "2", "3", "4"]
    assert fig.layout.xaxis.title.text == "block" and fig.layout.title.text


def test_the_position_map_as_markdown_gives_pre_and_post_per_cell():
    """`<study>-positions.md`: one row per network and input in the pipeline's order, 'pre / post'
    per block, a missing point as '·', then the overall pre minus post lines."""
    from ablation.report.markdown import position_markdown
    runs = made_up_runs([(0, 0), (1, 0), (2, 0)], "screen")
    deltas = position_deltas(runs, "student_alone")
    text = position_markdown(deltas[deltas["variant"] != "fd_real/distill.features.0.position=enc.0.post"],
                             pre_post(runs))
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "block 0" not in line]
    assert rows[:3] == ["| enc", "| dec", "| disc (real)"] and rows[3] == "| disc (fake)"
    enc = next(line for line in text.splitlines() if line.startswith("| enc"))
    assert enc.split(" | ")[1] == f"{effect('enc', 0, 'pre', 'real') + 0.0005 / 3:+.4f} / ·"  # fold 1 adds 0.0005 to pre
    assert enc.split(" | ")[2] == f"{effect('enc', 1, 'pre', 'real') + 0.0005 / 3:+.4f} / {effect('enc', 1, 'post', 'real'):+.4f}"
    assert "- pre minus post, validation AUC, over 6 cells:" in text and "fold-blocked p" in text


def test_the_fd_positions_numbers_quoted_are_the_committed_studys_report(tracking_store, tmp_path):
    """The README's fd_positions table is `make report NAME=fd_positions`'s .md and docs/fd_positions.md
    quotes its `-positions.md` (map, pre minus post, the confirmation's cells), rebuilt from the
    committed results/fd_positions.csv (real MIT-BIH runs, both stages) on an empty MLflow store."""
    import shutil
    from ablation.paths import PROJECT_ROOT, RESULTS
    from ablation.report.page import write_report
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "results" / "fd_positions.csv", RESULTS / "fd_positions.csv")
    data = agg.collect("fd_positions")
    assert len(data.screen) == 82 and len(data.runs) == 40 and data.summary["n_pairs"].dropna().eq(8).all()
    write_report(data, tmp_path)
    assert (tmp_path / "fd_positions.md").read_text().strip() in (PROJECT_ROOT / "README.md").read_text()
    docs = (PROJECT_ROOT / "docs" / "fd_positions.md").read_text()
    quoted = [line for line in (tmp_path / "fd_positions-positions.md").read_text().splitlines()
              if line.startswith("|") and "---" not in line]
    assert len(quoted) == 2 * 5 + 3 and all(line in docs for line in quoted)
