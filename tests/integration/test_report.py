"""Study reports: statistics on hand-built run tables, the page from hand-built data, and one tiny real study."""
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ablation.report import aggregate as agg
from ablation.report.figures import figure_specs
from ablation.report.page import build_report, render, write_report
from support.report_samples import run_tiny_study, synthetic_report_data

FIGURE_IDS = ["fig-auc", "fig-heatmap", "fig-parcoords", "fig-roc", "fig-pr", "fig-training", "fig-compression"]
OPTUNA_IDS = ["fig-optuna-history", "fig-optuna-importance", "fig-optuna-parcoords"]

# Hand-built runs. student_alone and kd: 6 seeds each; kd also has seed 6, which the baseline lacks
# (not a pair). few: 3 seeds. single: 1 run.
BASE = {0: 0.900, 1: 0.910, 2: 0.905, 3: 0.920, 4: 0.915, 5: 0.895}
KD = {0: 0.912, 1: 0.915, 2: 0.908, 3: 0.935, 4: 0.931, 5: 0.909, 6: 0.990}
FEW = {0: 0.80, 1: 0.82, 2: 0.81}


def _runs() -> pd.DataFrame:
    rows = []
    for variant, values in (("student_alone", BASE), ("kd", KD), ("few", FEW), ("single", {3: 0.7})):
        for seed, auc in values.items():
            rows.append({"variant": variant, "fold": 0, "seed": seed, "test_auc": auc, "test_ap": auc - 0.2,
                         "test_f1": auc - 0.3, "n_params": 1000.0 if variant != "kd" else 500.0,
                         "teacher_params": 4000.0, "compression_ratio": 4000 / (1000.0 if variant != "kd" else 500.0)})
    # shuffled: pairing must follow (fold, seed), not row order
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)


def _row(table: pd.DataFrame, variant: str) -> pd.Series:
    return table.set_index("variant").loc[variant]


def test_describe_mean_std_ci_by_hand():
    d = agg.describe([0.90, 0.92, 0.94])
    assert d.n == 3 and d.mean == pytest.approx(0.92)
    assert d.std == pytest.approx(0.02)  # sqrt((0.02**2 + 0 + 0.02**2) / (3 - 1))
    half = 4.302652729749462 * 0.02 / math.sqrt(3)  # t(0.975, df=2)
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.92 - half), pytest.approx(0.92 + half))
    one = agg.describe([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert agg.describe([]).n == 0 and math.isnan(agg.describe([np.nan]).mean)


def test_summary_statistics_and_paired_wilcoxon_by_hand():
    table = agg.summarize(_runs(), order=["student_alone", "kd", "few", "single"])
    assert table.attrs["baseline"] == "student_alone"  # found by name
    assert list(table["variant"]) == ["student_alone", "kd", "few", "single"]
    kd = _row(table, "kd")
    values = np.array(list(KD.values()))
    n = len(values)
    assert kd["n_runs"] == n == 7
    assert kd["test_auc_mean"] == pytest.approx(values.sum() / n)
    sd = math.sqrt(((values - values.mean()) ** 2).sum() / (n - 1))
    assert kd["test_auc_std"] == pytest.approx(sd)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert kd["test_auc_ci_low"] == pytest.approx(values.mean() - half)
    assert kd["test_auc_ci_high"] == pytest.approx(values.mean() + half)
    # paired on the 6 common seeds; seed 6 has no baseline run
    diffs = np.array([KD[s] - BASE[s] for s in range(6)])
    assert kd["n_pairs"] == 6
    assert kd["test_auc_delta"] == pytest.approx(diffs.mean())
    assert kd["test_auc_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert kd["test_auc_p"] == pytest.approx(2 / 2 ** 6)  # all six differences positive: exact p
    assert kd["test_ap_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue, rel=1e-6)
    assert kd["n_params"] == 500 and kd["compression_ratio"] == 8 and kd["notes"] == ""
    base = _row(table, "student_alone")
    assert bool(base["is_baseline"]) and base["test_auc_delta"] == 0 and math.isnan(base["test_auc_p"])


def test_too_few_runs_give_no_number_and_say_why():
    table = agg.summarize(_runs(), baseline="student_alone")
    single = _row(table, "single")
    assert single["n_runs"] == 1 and single["test_auc_mean"] == 0.7
    assert math.isnan(single["test_auc_std"]) and math.isnan(single["test_auc_ci_low"])
    assert "std/CI n/a: 1 run" in single["notes"]
    assert single["n_pairs"] == 1 and math.isnan(single["test_auc_p"])
    assert single["test_auc_delta"] == pytest.approx(0.7 - BASE[3])
    few = _row(table, "few")
    assert few["n_pairs"] == 3 and math.isnan(few["test_auc_p"]) and not math.isnan(few["test_auc_std"])
    assert f"Wilcoxon n/a: 3 pairs (needs >= {agg.MIN_PAIRS} to reach p < 0.05)" in few["notes"]
    none = agg.paired_test(_runs().assign(seed=lambda d: d.seed + 100 * (d.variant == "kd")), "kd", "student_alone")
    assert none.n_pairs == 0 and math.isnan(none.delta) and "no matched" in none.note


def test_min_pairs_is_the_smallest_n_that_can_reach_p_below_alpha():
    n = agg.MIN_PAIRS
    assert stats.wilcoxon(np.arange(1.0, n)).pvalue >= agg.ALPHA  # n - 1 pairs, all positive: best case
    assert stats.wilcoxon(np.arange(1.0, n + 1)).pvalue < agg.ALPHA
    assert agg.paired_test(pd.DataFrame({"variant": ["a"] * n + ["b"] * n, "fold": 0, "seed": list(range(n)) * 2,
                                         "test_auc": [0.0] * n + [0.0] * n}), "b", "a").p_value == 1.0


def test_keep_latest_finished_run_per_trial_and_per_variant_fold_seed():
    runs = pd.DataFrame([
        {"run_id": "a1", "trial_key": "A", "status": "FINISHED", "start_time": 1, "variant": "v", "fold": 0, "seed": 0},
        {"run_id": "a2", "trial_key": "A", "status": "FINISHED", "start_time": 5, "variant": "v", "fold": 0, "seed": 0},
        {"run_id": "a3", "trial_key": "A", "status": "FAILED", "start_time": 9, "variant": "v", "fold": 0, "seed": 0},
        {"run_id": "b1", "trial_key": "B", "status": "FINISHED", "start_time": 2, "variant": "v", "fold": 0, "seed": 1},
        {"run_id": "b2", "trial_key": "B2", "status": "FINISHED", "start_time": 3, "variant": "v", "fold": 0, "seed": 1},
        {"run_id": "c1", "trial_key": "C", "status": "RUNNING", "start_time": 4, "variant": "w", "fold": 0, "seed": 0},
    ])
    kept, counts = agg.keep_latest(runs)
    assert sorted(kept["run_id"]) == ["a2", "b2"]
    assert counts == {"runs": 6, "not_finished": 2, "repeated": 1, "superseded": 1}


def test_baseline_choice():
    assert agg.default_baseline(["kd", "none", "student_alone"]) == "student_alone"
    assert agg.default_baseline(["kd", "baseline/distill.kd.T=2"]) == "baseline/distill.kd.T=2"
    assert agg.default_baseline(["kd", "fd"]) == "kd"
    assert agg.resolve_baseline(["kd", "fd"], "fd") == "fd"
    with pytest.raises(ValueError, match="not a variant"):
        agg.resolve_baseline(["kd", "fd"], "student_alone")


def test_the_default_baseline_is_the_study_files_first_variant_not_the_first_to_run(tracking_store):
    """studies/anobeat.yaml lists beatgan_alone first but its runs began with beatgan_kd_recon (the
    committed table of real MIT-BIH runs): without --baseline the report tests against the file's
    first variant, and its rows follow the file's order."""
    import shutil
    from ablation.paths import PROJECT_ROOT, RESULTS
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "results" / "anobeat.csv", RESULTS / "anobeat.csv")
    data = agg.collect("anobeat")
    assert data.baseline == "beatgan_alone"
    assert data.summary["variant"].tolist() == ["beatgan_alone", "beatgan_kd_recon", "anobeat_alone",
                                                "anobeat_kd_recon"]


def test_variant_order_follows_the_declared_names_then_run_order():
    runs = pd.DataFrame({"variant": ["b/x=1", "c", "a", "b/x=2", "z"], "start_time": [1, 2, 3, 4, 5]})
    assert agg.variant_order(runs, ["a", "b", "c"]) == ["a", "b/x=1", "b/x=2", "c", "z"]
    assert agg.variant_order(runs) == ["b/x=1", "c", "a", "b/x=2", "z"]


def test_axis_values_are_numbers_where_they_are_numbers():
    assert agg.axis_value("4.0") == 4.0 and agg.axis_value("3") == 3 and isinstance(agg.axis_value("3"), int)
    assert agg.axis_value("score_kl") == "score_kl"


def _div_ids(page: str) -> set[str]:
    return set(re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page))


def test_page_from_hand_built_data_has_every_figure_table_and_header(tmp_path):
    data = synthetic_report_data()
    path = write_report(data, tmp_path)
    page = path.read_text()
    assert path.name == "synthetic_demo.html" and _div_ids(page) == set(FIGURE_IDS)
    # plotly.js inline exactly once, nothing fetched from the network
    assert page.count("/* plotly.js") == 1 and not re.search(r"<(script|link)[^>]*(src|href)=", page)
    for text in ("synthetic_demo", "epochs", "train subset", "folds", "seeds", "git commit", "0123456789ab",
                 "report date", "Wilcoxon", f"at least {agg.MIN_PAIRS} pairs", "student_alone/distill.kd.T=2.0/model.ndf=4"):
        assert text in page
    csv = pd.read_csv(tmp_path / "synthetic_demo.csv")
    assert len(csv) == 8 and csv["n_runs"].eq(6).all()
    for col in ("test_auc_mean", "test_auc_std", "test_auc_ci_low", "test_auc_ci_high", "test_ap_mean",
                "test_f1_mean", "n_params", "compression_ratio", "n_pairs", "test_auc_delta", "test_auc_p"):
        assert col in csv
    assert csv["test_auc_p"].notna().sum() == 7  # every variant but the baseline, 6 pairs each


def test_every_figure_has_a_title_and_axis_labels():
    for spec in figure_specs(synthetic_report_data()):
        fig = spec.figure
        assert fig is not None, spec.id
        assert fig.layout.title.text, spec.id
        if spec.id == "fig-parcoords":
            assert all(d.label for d in fig.data[0].dimensions)
            continue
        axes = [k for k in fig.layout.to_plotly_json() if re.fullmatch(r"[xy]axis\d*", k)]
        assert axes, spec.id
        for k in axes:
            assert fig.layout[k].title.text, f"{spec.id} {k}"


def test_page_with_too_few_runs_says_so(tmp_path):
    data = synthetic_report_data(seeds=1, grid=False)
    page = render(data)
    assert "sd, CI n/a: 1 run" in page and "p n/a: 1 pair (needs &gt;= 6)" in page
    assert "fig-heatmap" not in _div_ids(page) and "a heatmap needs exactly two" in page
    assert _div_ids(page) == set(FIGURE_IDS) - {"fig-heatmap"}


def test_optuna_figures_are_optional(tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", study_name="tuned")
    study.optimize(lambda t: -(t.suggest_float("lr", 1e-4, 1e-2, log=True) - 3e-3) ** 2 + t.suggest_int("ndf", 2, 8) * 1e-6,
                   n_trials=8)
    page = render(synthetic_report_data(optuna_study=study))
    assert _div_ids(page) == set(FIGURE_IDS + OPTUNA_IDS)
    empty = render(synthetic_report_data(optuna_study=optuna.create_study()))
    assert not (_div_ids(empty) & set(OPTUNA_IDS)) and "not drawn" in empty


def test_build_report_from_a_tiny_real_study(tmp_path, tracking_store):
    """End to end: train 2 variants x 3 seeds on synthetic beats into MLflow, then report them."""
    run_tiny_study(tmp_path)
    path = build_report("report_tiny", tmp_path / "dash")
    page = path.read_text()
    assert path == tmp_path / "dash" / "report_tiny.html" and (tmp_path / "dash" / "report_tiny.csv").exists()
    assert _div_ids(page) == set(FIGURE_IDS) - {"fig-heatmap"}
    csv = pd.read_csv(tmp_path / "dash" / "report_tiny.csv").set_index("variant")
    assert list(csv.index) == ["student_alone", "kd_score_kl", "teacher"]
    assert csv["n_runs"].tolist() == [3, 3, 1] and bool(csv.loc["teacher", "is_reference"])
    assert 0 < csv.loc["teacher", "test_auc_mean"] <= 1
    assert bool(csv.loc["student_alone", "is_baseline"]) and csv.loc["kd_score_kl", "n_pairs"] == 3
    assert math.isnan(csv.loc["kd_score_kl", "test_auc_p"]) and csv["test_auc_std"].iloc[:2].notna().all()
    assert csv.loc["kd_score_kl", "compression_ratio"] > 1
    assert "teacher: AUC" in page and "[baseline]" in page and "loss_kd_score_kl" in page
    assert "epochs</dt><dd>2<" in page and "train subset (beats)</dt><dd>256<" in page
    from ablation.report.aggregate import collect
    data = collect("report_tiny", baseline="kd_score_kl")
    assert data.baseline == "kd_score_kl" and len(data.runs) == 6 and len(data.teachers) == 1
    assert {c.kind for c in data.curves} == {"top", "baseline", "teacher"}
    assert set(data.history["metric"]) >= {"val_auc", "loss_d", "loss_g_rec", "loss_g_adv", "loss_kd_score_kl"}
    with pytest.raises(LookupError, match="no MLflow experiment"):
        build_report("no_such_study", tmp_path)


# ------------------------------------------------------------------------------------------------
# Paired statistics: CI of the difference, Holm, gap closed, detectable difference
# ------------------------------------------------------------------------------------------------
def test_holm_by_hand():
    # p = (0.01, 0.04, 0.03) of k = 3: sorted 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> max so far 0.06
    assert agg.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = agg.holm([0.2, math.nan, 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert agg.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_fold_blocked_test_by_hand():
    """Two seeds a fold: the fold means of the differences, then a one-sample t-test on them."""
    d = {(0, 0): 0.01, (0, 1): 0.03, (1, 0): 0.02, (1, 1): 0.00, (2, 0): 0.04, (2, 1): 0.02,
         (3, 0): 0.01, (3, 1): 0.01, (4, 0): 0.03, (4, 1): 0.05}
    rows = [{"variant": v, "fold": f, "seed": s, "test_auc": 0.8 + (dv if v == "v" else 0.0)}
            for (f, s), dv in d.items() for v in ("a", "v")]
    runs = pd.DataFrame(rows)
    means = np.array([0.02, 0.01, 0.03, 0.01, 0.04])
    t = means.mean() / (means.std(ddof=1) / math.sqrt(5))
    blocked = agg.blocked_test(runs, "v", "a")
    assert blocked.n_pairs == 5 and blocked.delta == pytest.approx(means.mean())
    assert blocked.p_value == pytest.approx(2 * stats.t.sf(t, 4))
    assert math.isnan(agg.blocked_test(runs[runs["fold"] < 2], "v", "a").p_value)  # 2 folds: no test
    row = agg.summarize(runs, baseline="a").set_index("variant").loc["v"]
    assert row["n_folds"] == 5 and row["test_auc_p_blocked_holm"] == pytest.approx(blocked.p_value)


def _paired(deltas, teacher_lead=0.1):
    n = len(deltas)
    base = np.linspace(0.8, 0.85, n)
    return pd.DataFrame({"variant": ["a"] * n + ["v"] * n, "fold": list(range(n)) * 2, "seed": 0,
                         "test_auc": np.concatenate([base, base + np.asarray(deltas)]),
                         "teacher_test_auc": np.concatenate([base + teacher_lead] * 2)})


def test_paired_ci_gap_closed_and_detectable_difference():
    d = np.array([0.01, 0.03, 0.02, 0.04, 0.00, 0.02, 0.03, 0.01, 0.02, 0.02])
    runs = _paired(d)
    lo, hi = agg.paired_ci(d)
    half = stats.t.ppf(0.975, 9) * d.std(ddof=1) / math.sqrt(10)
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    assert agg.gap_closed(runs, "v", "a", "test_auc") == pytest.approx(d.mean() / 0.1)
    mde = agg.detectable_difference(d, 0.05)
    assert mde == pytest.approx((stats.t.ppf(0.975, 9) + stats.t.ppf(0.8, 9)) * d.std(ddof=1) / math.sqrt(10))
    assert agg.detectable_difference(d, 0.05 / 8) > mde  # a stricter alpha needs a larger difference
    row = agg.summarize(runs, baseline="a").set_index("variant").loc["v"]
    assert row["test_auc_delta_ci_low"] == pytest.approx(lo) and row["test_auc_p_holm"] == pytest.approx(
        row["test_auc_p"])  # one comparison: Holm leaves p alone
    assert agg.gap_closed(_paired(d, teacher_lead=-0.01), "v", "a", "test_auc") != agg.gap_closed(runs, "v", "a",
                                                                                                   "test_auc")


def test_markdown_table_rows_deltas_and_bold_holm(tmp_path):
    from ablation.report.markdown import markdown_table
    table = agg.with_reference(agg.summarize(_runs(), "student_alone"), _runs())
    md = markdown_table(table, "student_alone").splitlines()
    assert len(md) == 2 + len(table)  # header, rule, one row per variant
    rows = {line.split(" | ")[0].strip("| `"): line for line in md[2:]}
    kd, base = _row(table, "kd"), rows["student_alone` (baseline)"]
    assert f"{kd['test_auc_mean']:.4f} ± {kd['test_auc_std']:.4f}" in rows["kd"]
    assert f"{kd['test_auc_delta']:+.4f} [{kd['test_auc_delta_ci_low']:+.4f}, " in rows["kd"]
    bold = kd["test_auc_p_holm"] < 0.05 and kd["test_auc_p_blocked_holm"] < 0.05
    assert bool(kd["test_auc_resolved"]) == bold
    assert (f"**{kd['test_auc_p_holm']:.3f}**" in rows["kd"]) == bold
    assert base.count("—") == 7  # the baseline has no difference to itself
    write_report(synthetic_report_data(), tmp_path)
    assert (tmp_path / "synthetic_demo.md").read_text().startswith("| variant | runs |")


@pytest.mark.parametrize("table_dir, document", [("results", "README.md"), ("results/first_run", "docs/results.md")])
def test_the_headline_tables_quoted_are_the_committed_study_reports(tracking_store, table_dir, document):
    """The README's headline table (the replication) and docs/results.md's (the first run) are
    `make report NAME=headline`'s .md, rebuilt from the committed headline.csv (real MIT-BIH runs)
    on an empty MLflow store."""
    import shutil
    from ablation.paths import PROJECT_ROOT, RESULTS
    from ablation.report.markdown import markdown_table
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / table_dir / "headline.csv", RESULTS / "headline.csv")
    data = agg.collect("headline")
    table = markdown_table(agg.with_reference(data.summary, data.runs), data.baseline)
    assert len(data.runs) == 90 and data.summary["n_pairs"].dropna().eq(10).all()
    assert table in (PROJECT_ROOT / document).read_text()


def test_standings_from_committed_tables_by_hand(tmp_path):
    from ablation.report.standings import markdown, standings
    pd.DataFrame({"run_id": ["t0", "t1old", "t1", "unused"], "fold": [0, 1, 1, 2],
                  "test_auc": [0.94, 0.90, 0.93, 0.99]}).to_csv(tmp_path / "teachers.csv", index=False)
    pd.DataFrame({"variant": ["student_alone", "kd_recon"] * 2, "fold": [0, 0, 1, 1],
                  "test_auc": [0.88, 0.90, 0.86, 0.89], "n_params": 10, "teacher_params": 100, "teacher_run_id": ["t0", "t0", "t1old", "t1"]}
                 ).to_csv(tmp_path / "headline.csv", index=False)
    pd.DataFrame({"runs": ["t1", "t1", "t0", "t0"], "k": [1, 2, 1, 2], "fold": [1, 1, 0, 0],
                  "val_auc": [0.95, 0.96, 0.95, 0.94], "test_auc": [0.93, 0.91, 0.94, 0.95]}
                 ).to_csv(tmp_path / "snapshots_teachers.csv", index=False)
    pd.DataFrame({"runs": "t0 t0b", "k": [1, 2], "fold": 0, "val_auc": 0.95, "test_auc": [0.94, 0.96]}
                 ).to_csv(tmp_path / "ensemble_teachers.csv", index=False)
    pd.DataFrame({"variant": ["two_leads"] * 3, "fold": [0, 0, 1], "test_auc": [0.8, 0.82, 0.84],
                  "teacher_test_auc": [0.95, 0.95, 0.93], "n_params": 11, "teacher_params": 101}
                 ).to_csv(tmp_path / "levers.csv", index=False)
    pd.DataFrame({"variant": "born_again_ensemble", "fold": 4, "seed": [0, 1], "test_auc": [0.93, 0.95],
                  "n_params": 100}).to_csv(tmp_path / "born_again.csv", index=False)
    table = standings(tmp_path).set_index("detector")
    born = table.loc["same-size student (ndf 32) `recon` KD from the seed ensemble (born again)"]
    assert born["runs"] == 2 and born["test_auc_mean"] == pytest.approx(0.94) and born["parameters"] == 100
    assert table.loc["teachers of seeds 0 and 1, seed ensemble", "test_auc_mean"] == pytest.approx(0.96)  # all members
    assert table.loc["teachers of seeds 0 and 1, seed ensemble", "parameters"] == 200
    two = table.loc["teacher, two leads (`data.nc: 2`)"]  # one teacher per fold, not one per student
    assert two["runs"] == 2 and two["test_auc_mean"] == pytest.approx(0.94) and two["parameters"] == 101
    assert table.loc["student, two leads (levers)", "runs"] == 3
    teacher = table.loc["teacher (best recipe, ndf 32)"]
    assert teacher["runs"] == 2 and teacher["test_auc_mean"] == pytest.approx(0.935)  # t1, fold 1's last used
    snap = table.loc["teacher, snapshot ensemble (K on validation)"]
    assert snap["test_auc_mean"] == pytest.approx((0.91 + 0.94) / 2)  # K = 2 on fold 1, K = 1 on fold 0
    assert table.loc["student alone (headline)", "to_target"] == pytest.approx(0.87 - 0.95)
    assert not any("D-feature" in d or "tuned" in d for d in table.index)  # absent tables: no rows
    assert list(table["test_auc_mean"]) == sorted(table["test_auc_mean"], reverse=True)
    assert markdown(standings(tmp_path)).count("\n") == 2 + len(table)
    assert "| 0.9600 | one run | +0.0100 |" in markdown(standings(tmp_path)) and "nan" not in markdown(standings(tmp_path))


def test_standings_of_the_pinned_results_add_each_familys_committed_teachers_and_the_anobeat_study(tmp_path):
    """results/ names each teacher's family: a row per family over every seed, and anobeat.csv's students;
    the first run's teachers.csv has no family column and gives no such row."""
    from ablation.report.standings import standings
    pd.DataFrame({"run_id": ["b0", "b1", "a0", "a1"], "fold": [0, 0, 0, 1], "seed": [0, 1, 0, 0],
                  "family": ["beatgan", "beatgan", "anobeat", "anobeat"], "test_auc": [0.93, 0.94, 0.95, 0.97]}
                 ).to_csv(tmp_path / "teachers.csv", index=False)
    pd.DataFrame({"variant": ["beatgan_alone", "beatgan_kd_recon", "anobeat_alone", "anobeat_kd_recon"], "fold": 0,
                  "seed": 0, "test_auc": [0.88, 0.89, 0.90, 0.91], "n_params": [10, 10, 11, 11],
                  "teacher_params": 101}).to_csv(tmp_path / "anobeat.csv", index=False)
    table = standings(tmp_path).set_index("detector")
    anobeat = table.loc["Anobeat teachers, committed (ndf 32, every seed)"]
    assert anobeat["runs"] == 2 and anobeat["test_auc_mean"] == pytest.approx(0.96) and anobeat["parameters"] == 2_635_457
    assert table.loc["BeatGAN teachers, committed (ndf 32, every seed)", "test_auc_mean"] == pytest.approx(0.935)
    assert table.loc["BeatGAN teachers, committed (ndf 32, every seed)", "parameters"] == 2_612_288
    assert table.loc["student `recon` KD from the Anobeat teacher (anobeat)", "test_auc_mean"] == pytest.approx(0.89)
    assert table.loc["Anobeat student (ndf 8) `recon` KD from the Anobeat teacher", "parameters"] == 11
    assert table.loc["Anobeat student (ndf 8) alone", "test_auc_mean"] == pytest.approx(0.90)
    pd.DataFrame({"run_id": ["b0"], "fold": [0], "test_auc": [0.93]}).to_csv(tmp_path / "teachers.csv", index=False)
    assert not any(d.endswith("every seed)") for d in standings(tmp_path)["detector"])


def test_the_anobeat_teachers_are_paired_with_the_beatgan_teachers_by_fold_and_seed(tmp_path, capsys):
    """Pairs on (fold, seed): an unpaired teacher is left out; the fold-blocked p averages each fold's seeds."""
    from ablation.__main__ import main
    from ablation.report.standings import family_markdown, family_pairs
    folds, seeds = [0, 0, 1, 1, 2, 2], [0, 1] * 3
    beat = [0.93, 0.94, 0.92, 0.93, 0.94, 0.95]
    gain = [0.010, 0.012, 0.008, 0.011, 0.009, 0.013]
    anobeat = [b + g for b, g in zip(beat, gain)] + [0.5]  # fold 3 has no BeatGAN teacher
    pd.DataFrame({"run_id": [f"r{i}" for i in range(13)], "fold": folds * 2 + [3], "seed": seeds * 2 + [0],
                  "family": ["beatgan"] * 6 + ["anobeat"] * 7, "test_auc": beat + anobeat}
                 ).to_csv(tmp_path / "teachers.csv", index=False)
    pair = family_pairs(tmp_path, "anobeat")
    assert pair["n_pairs"] == 6 and pair["delta"] == pytest.approx(np.mean(gain))
    assert pair["ci_low"] < np.mean(gain) < pair["ci_high"] and pair["p"] == pytest.approx(0.03125)  # all 6 positive
    by_fold = [0.011, 0.0095, 0.011]
    assert pair["p_blocked"] == pytest.approx(stats.ttest_1samp(by_fold, 0).pvalue)
    assert family_markdown(pair).startswith("anobeat - beatgan teachers, 6 (fold, seed) pairs: +0.0105 test AUC [")
    assert main(["standings", "--results", str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith("\n\n" + family_markdown(pair))  # after the table
    pd.read_csv(tmp_path / "teachers.csv").query("family == 'beatgan'").to_csv(tmp_path / "teachers.csv", index=False)
    assert family_pairs(tmp_path, "anobeat") == {} and family_markdown({}) == ""


def test_the_readme_standings_are_the_committed_tables():
    from ablation.paths import PROJECT_ROOT
    from ablation.report.standings import markdown, standings
    assert markdown(standings(PROJECT_ROOT / "results" / "first_run")) in (PROJECT_ROOT / "README.md").read_text()


def test_the_teacher_reference_row_is_the_baselines_teachers():
    """A variant with its own teacher (two leads) does not enter the reference row: the row is the
    teachers the baseline's runs name, the same teachers the gap closed is measured against."""
    runs = pd.DataFrame({"variant": ["alone", "alone", "two", "two"], "fold": 0, "seed": [0, 1, 0, 1],
                         "test_auc": [0.88, 0.89, 0.86, 0.87], "teacher_run_id": ["tA", "tA", "tB", "tB"],
                         "teacher_test_auc": [0.95, 0.95, 0.80, 0.80], "teacher_params": 100})
    table = agg.with_reference(agg.summarize(runs, "alone", metrics=["test_auc"]), runs).set_index("variant")
    assert table.loc["teacher", "n_runs"] == 1 and table.loc["teacher", "test_auc_mean"] == pytest.approx(0.95)
