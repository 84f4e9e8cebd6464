"""Two runs of one study compared trial by trial (`ablation.report.replication`, `compare`).
Synthetic tables, except the last test, which reads the committed headline tables."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablation.paths import PROJECT_ROOT
from ablation.report.replication import compare, markdown, matched, noise
from support.cli import one_line_error


def table(effect: float, shift: float = 0.0, seed: int = 0, key: str = "a") -> pd.DataFrame:
    """student_alone and kd on 5 folds x 2 seeds; kd = student_alone + effect + small noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(5):
        for s in range(2):
            base = 0.88 + 0.004 * fold + shift + rng.normal(0, 0.003)
            rows.append({"trial_key": f"{key}-sa-{fold}-{s}", "variant": "student_alone", "fold": fold, "seed": s,
                         "test_auc": base, "status": "FINISHED"})
            rows.append({"trial_key": f"{key}-kd-{fold}-{s}", "variant": "kd", "fold": fold, "seed": s,
                         "test_auc": base + effect + rng.normal(0, 0.001), "status": "FINISHED"})
    return pd.DataFrame(rows)


def test_trials_match_on_variant_fold_and_seed_not_on_key():
    first, second = table(0.01), table(0.01, shift=0.002, key="b")
    second = second[~((second["variant"] == "kd") & (second["fold"] == 4) & (second["seed"] == 1))]
    trials = matched(first, second)
    assert len(trials) == 19  # the trial missing from the second run is left out
    assert np.allclose(trials["diff"], trials["second"] - trials["first"])
    sa = trials[trials["variant"] == "student_alone"]
    assert np.allclose(sa["diff"], 0.002)  # the same noise draws, shifted
    n = noise(trials)
    assert n["n"] == 19 and n["max_abs"] >= n["mean_abs"] > 0


def test_a_replicated_effect_agrees_and_a_reversed_one_does_not():
    first = table(0.01)
    same = compare(first, table(0.01, seed=1, key="b")).set_index("variant").loc["kd"]
    assert same["n_pairs"] == 10 and same["first_resolved"] and same["second_resolved"]
    assert same["same_sign"] and same["same_call"]
    assert same["first_delta_ci_low"] < 0.01 < same["first_delta_ci_high"]
    flipped = compare(first, table(-0.01, seed=1, key="b")).set_index("variant").loc["kd"]
    assert not flipped["same_sign"] and flipped["second_delta"] < 0 and flipped["second_resolved"]
    vanished = compare(first, table(0.0, seed=1, key="b")).set_index("variant").loc["kd"]
    assert not vanished["second_resolved"] and not vanished["same_call"]


def test_the_markdown_says_when_nothing_matches_and_bolds_resolved_deltas():
    first = table(0.01)
    assert markdown(first, table(0.01).assign(fold=lambda t: t["fold"] + 10)).startswith("no trial")
    text = markdown(first, table(0.01, seed=1, key="b"), ("one", "two"))
    assert text.startswith("20 trials in both") and "| variant | pairs | one | two |" in text
    assert "| `kd` | 10 | **+0.01" in text


@pytest.mark.parametrize("write, message", [
    (None, "no such results table"),
    ("variant,fold,seed\nkd,0,0\n", "lacks column(s) test_auc"),
])
def test_a_missing_or_wrong_table_is_one_line(tmp_path, capsys, write, message):
    path = tmp_path / "t.csv"
    if write is not None:
        path.write_text(write)
    good = tmp_path / "good.csv"
    table(0.0).to_csv(good, index=False)
    err = one_line_error(capsys, ["compare", str(path), str(good)])
    assert str(path) in err and message in err


def test_the_committed_headline_runs_compare(capsys):
    from ablation.__main__ import main
    results = Path(PROJECT_ROOT) / "results"
    assert main(["compare", str(results / "first_run" / "headline.csv"), str(results / "headline.csv")]) == 0
    out = capsys.readouterr().out
    assert "| `student_alone` | 2 | 0 | 0.8911 | 0.8885 | -0.0026 |" in out  # docs/reproducibility.md's row
    assert "| `kd_recon` |" in out


def test_compare_tests_against_the_study_files_first_variant(capsys):
    """results/anobeat.csv (real runs) began with beatgan_kd_recon; studies/anobeat.yaml lists
    beatgan_alone first: without --baseline the comparison is against it, in the file's order."""
    from ablation.__main__ import main
    anobeat = str(Path(PROJECT_ROOT) / "results" / "anobeat.csv")
    assert main(["compare", anobeat, anobeat]) == 0
    out = capsys.readouterr().out
    assert "Difference to `beatgan_alone` on those trials" in out
    rows = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| `")]
    assert rows[:3] == ["| `beatgan_kd_recon`", "| `anobeat_alone`", "| `anobeat_kd_recon`"]
    assert rows[3] == "| `beatgan_alone`"  # the per-trial table starts with the baseline's trials
