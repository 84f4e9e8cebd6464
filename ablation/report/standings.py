"""Where the platform stands against the target test AUC: its best detectors, best first.

    standings()  ->  DataFrame, one row per detector: label, parameters, runs, folds, test AUC
                     mean / sd / 95 % CI, and the distance of the mean to the target
    markdown(standings())  ->  the README's table

Read from the committed tables only (`results/first_run/` by default: the runs made before the
numeric path was pinned, whose checkpoints are gone), so it rebuilds on any machine: the teachers the
headline study used (`teachers.csv`, one run per fold: the last exported), the same teachers'
snapshot ensembles with K chosen on validation (`snapshots_teachers.csv`), seed ensembles of each
fold's teachers (`ensemble_teachers.csv`, every member), the levers study's ensemble-distilled and
two-lead students and two-lead teachers (`levers.csv`), the same-size student distilled from the
seed ensemble (`born_again.csv`), the headline students
(`headline.csv`), the same students rescored with the D-feature residual at the weight validation
chose (`rescore_headline_students.csv`), and a tuned student's confirmation when it has run
(`tune_headline-confirm.csv`). `results/` itself (the runs on the pinned numeric path) adds the
committed teachers of each family, every seed (`teachers.csv` with its `family` column), and the
second family's study (`anobeat.csv`: BeatGAN and Anobeat students alone and with `recon` KD from
the Anobeat teacher). A table that is absent gives no row.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablation.paths import RESULTS
from ablation.report.aggregate import blocked_test, describe, paired_ci, paired_differences, paired_test
from ablation.report.markdown import p_text

FIRST_RUN = RESULTS / "first_run"
TARGET = 0.95


def _read(name: str, results: Path) -> pd.DataFrame:
    path = results / name
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def _teachers(results: Path) -> pd.Series:
    t = _read("teachers.csv", results)
    used = set(_read("headline.csv", results).get("teacher_run_id", pd.Series(dtype=str)))
    t = t[t["run_id"].isin(used)] if used and len(t) else t
    return t.groupby("fold").tail(1).set_index("fold")["test_auc"] if len(t) else pd.Series(dtype=float)


def _teacher_params(family: str) -> int:
    """Parameters of a `family` teacher at the recipe's widths (`ModelConfig`'s defaults: ndf 32, nz 50)."""
    from ablation.config import ModelConfig
    from ablation.models import family as family_of
    return sum(family_of(family).build(ModelConfig(family=family), 1).n_params().values())


def _committed_teachers(results: Path, family: str) -> pd.Series:
    """Per fold: the test AUC of every committed teacher of `family`, each seed (a teachers.csv
    without a `family` column, the first run's, gives none)."""
    t = _read("teachers.csv", results)
    if "family" not in t:
        return pd.Series(dtype=float)
    return t[t["family"] == family].set_index("fold")["test_auc"]


def family_pairs(results: Path, family: str, baseline: str = "beatgan") -> dict:
    """The committed teachers of `family` against those of `baseline`, paired by (fold, seed):
    n_pairs, the mean difference (family - baseline) with its 95 % t interval, the Wilcoxon p over
    the pairs and the fold-blocked p (a fold's seeds share its test beats). Empty without pairs."""
    t = _read("teachers.csv", results)
    if "family" not in t or "seed" not in t:
        return {}
    runs = t.rename(columns={"family": "variant"})
    d = paired_differences(runs, family, baseline, "test_auc").to_numpy(dtype=float)
    if len(d) == 0:
        return {}
    low, high = paired_ci(d)
    return {"family": family, "baseline": baseline, "n_pairs": len(d), "delta": float(d.mean()),
            "ci_low": low, "ci_high": high, "p": paired_test(runs, family, baseline).p_value,
            "p_blocked": blocked_test(runs, family, baseline).p_value}


def family_markdown(pair: dict) -> str:
    """One sentence for `family_pairs`: the difference, its interval and both p values."""
    if not pair:
        return ""
    return (f"{pair['family']} - {pair['baseline']} teachers, {pair['n_pairs']} (fold, seed) pairs: "
            f"{pair['delta']:+.4f} test AUC [{pair['ci_low']:+.4f}, {pair['ci_high']:+.4f}], "
            f"Wilcoxon p {p_text(pair['p'])}, fold-blocked p {p_text(pair['p_blocked'])}\n")


def _snapshots_chosen(results: Path) -> pd.Series:
    """Per teacher run: the test AUC of its snapshot ensemble at the K with the best validation AUC."""
    s = _read("snapshots_teachers.csv", results)
    if s.empty:
        return pd.Series(dtype=float)
    best = s.loc[s.groupby("runs")["val_auc"].idxmax()]
    return best.set_index("fold")["test_auc"]


def _seed_ensembles(results: Path) -> pd.Series:
    """Per fold: the test AUC of its teachers' seed ensemble with every member (the largest K)."""
    s = _read("ensemble_teachers.csv", results)
    return s.loc[s.groupby("fold")["k"].idxmax()].set_index("fold")["test_auc"] if len(s) else pd.Series(dtype=float)


def _teacher_of(table: pd.DataFrame, variant: str) -> pd.Series:
    """Per fold: the test AUC of the teacher the variant's students were distilled from."""
    rows = _variant(table, variant, "teacher_test_auc")
    return rows[~rows.index.duplicated()]


def _params(table: pd.DataFrame, variant: str, column: str) -> int:
    rows = table[table["variant"] == variant] if len(table) else table
    return int(rows[column].iloc[0]) if len(rows) else 0


def _variant(table: pd.DataFrame, variant: str, column: str) -> pd.Series:
    if table.empty or "variant" not in table:
        return pd.Series(dtype=float)
    rows = table[table["variant"] == variant]
    return rows.set_index("fold")[column]


def _sources(results: Path) -> list[tuple[str, int, pd.Series]]:
    head = _read("headline.csv", results)
    rescored = _read("rescore_headline_students.csv", results)
    confirm = _read("tune_headline-confirm.csv", results)
    teacher_params = int(head["teacher_params"].iloc[0]) if len(head) else 0
    student_params = int(head["n_params"].iloc[0]) if len(head) else 0  # every headline student: ndf = ngf = 8
    levers = _read("levers.csv", results)
    born = _read("born_again.csv", results)
    second = _read("anobeat.csv", results)
    return [
        ("BeatGAN teachers, committed (ndf 32, every seed)", _teacher_params("beatgan"),
         _committed_teachers(results, "beatgan")),
        ("Anobeat teachers, committed (ndf 32, every seed)", _teacher_params("anobeat"),
         _committed_teachers(results, "anobeat")),
        ("student `recon` KD from the Anobeat teacher (anobeat)", _params(second, "beatgan_kd_recon", "n_params"),
         _variant(second, "beatgan_kd_recon", "test_auc")),
        ("Anobeat student (ndf 8) `recon` KD from the Anobeat teacher", _params(second, "anobeat_kd_recon", "n_params"),
         _variant(second, "anobeat_kd_recon", "test_auc")),
        ("Anobeat student (ndf 8) alone", _params(second, "anobeat_alone", "n_params"),
         _variant(second, "anobeat_alone", "test_auc")),
        ("teacher (best recipe, ndf 32)", teacher_params, _teachers(results)),
        ("teacher, snapshot ensemble (K on validation)", teacher_params, _snapshots_chosen(results)),
        ("teachers of seeds 0 and 1, seed ensemble", 2 * teacher_params, _seed_ensembles(results)),
        ("teacher, two leads (`data.nc: 2`)", _params(levers, "two_leads", "teacher_params"),
         _teacher_of(levers, "two_leads")),
        ("student `recon` KD from the seed ensemble (levers)", student_params,
         _variant(levers, "kd_recon_ensemble", "test_auc")),
        ("same-size student (ndf 32) `recon` KD from the seed ensemble (born again)",
         _params(born, "born_again_ensemble", "n_params"), _variant(born, "born_again_ensemble", "test_auc")),
        ("student, two leads (levers)", _params(levers, "two_leads", "n_params"),
         _variant(levers, "two_leads", "test_auc")),
        ("student `recon` KD, D-feature score (w on validation)", student_params,
         _variant(rescored, "kd_recon", "test_auc_chosen")),
        ("student `recon` KD (headline)", student_params, _variant(head, "kd_recon", "test_auc")),
        ("student alone, D-feature score (w on validation)", student_params,
         _variant(rescored, "student_alone", "test_auc_chosen")),
        ("student alone (headline)", student_params, _variant(head, "student_alone", "test_auc")),
        ("student tuned on fold 0 validation (`tune_headline --confirm`)", student_params,
         _variant(confirm, "tuned", "test_auc")),
    ]


def standings(results: Path = FIRST_RUN, target: float = TARGET) -> pd.DataFrame:
    """One row per detector with committed runs, sorted by mean test AUC (best first)."""
    rows = []
    for label, params, values in _sources(Path(results)):
        if len(values) == 0:
            continue
        d = describe(values)
        folds = sorted({int(f) for f in values.index})
        rows.append({"detector": label, "parameters": params, "runs": d.n,
                     "folds": " ".join(map(str, folds)), "test_auc_mean": d.mean, "test_auc_std": d.std,
                     "ci_low": d.ci_low, "ci_high": d.ci_high, "to_target": d.mean - target})
    out = pd.DataFrame(rows)
    return out.sort_values("test_auc_mean", ascending=False, ignore_index=True) if len(out) else out


def markdown(table: pd.DataFrame, target: float = TARGET) -> str:
    """The standings as a Markdown table."""
    lines = [f"| detector | parameters | runs (folds) | test AUC mean ± sd | 95 % CI | to {target} |",
             "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        spread = "| one run |" if r["runs"] < 2 else \
            f"± {r['test_auc_std']:.4f} | [{r['ci_low']:.4f}, {r['ci_high']:.4f}] |"
        lines.append(f"| {r['detector']} | {r['parameters'] / 1e6:.2f} M | {r['runs']} ({r['folds']}) | "
                     f"{r['test_auc_mean']:.4f} {spread} {r['to_target']:+.4f} |")
    return "\n".join(lines) + "\n"
