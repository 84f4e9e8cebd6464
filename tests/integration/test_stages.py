"""Staged studies: the rule, its validation, the confirmation waiting for the screen, a whole staged
study on synthetic beats, and resume after SIGKILL in either stage on the real records (tiny nets)."""
import signal
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ablation.config import ConfigError
from ablation.study.spec import load_study
from ablation.study.stages import Rule, ScreenIncomplete, confirmation, pick
from support.runs import fresh_runs
from support.tiny import tiny_dict

BASE = tiny_dict("student", distill={"normalize": True, "features": [{"position": "enc.1.pre", "distance": "l2"}]})
POSITIONS = ["enc.1.pre", "enc.1.post", "dec.2.pre", "dec.2.post"]
STAGED = {"name": "staged", "base": BASE,
          "variants": [{"name": "student_alone", "set": {"distill.features": []}},
                       {"name": "fd", "grid": {"distill.features.0.position": POSITIONS}}],
          "stages": {"screen": {"folds": [0], "seeds": [0, 1]},
                     "confirm": {"folds": [0], "seeds": [2], "rule": {"best": 1, "twin": "pre_post"}}}}


def write(tmp_path, d: dict, name: str = "staged.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def fd(position: str) -> str:
    return f"fd/distill.features.0.position={position}"


def screen_rows(spec, val: dict[str, float], test: float = 0.5) -> pd.DataFrame:
    """A committed table of the whole screen: best_val_auc per variant (plus a per-seed wiggle)."""
    return pd.DataFrame([{"trial_key": t.key, "status": "FINISHED", "scale": spec.scale, "variant": t.name,
                          "fold": t.axes["fold"], "seed": t.axes["seed"],
                          "best_val_auc": val[t.name] + 0.001 * t.axes["seed"], "test_auc": test}
                         for t in spec.trials])


def test_the_confirmations_variants_follow_from_the_screen_and_never_from_test_metrics(tmp_path):
    """The rule keeps the baseline, the best variant by paired validation gain and its pre/post twin,
    on the confirmation's pairs; rewriting every test metric changes nothing it picks."""
    spec = load_study(write(tmp_path, STAGED))
    val = {"student_alone": 0.80, fd("enc.1.pre"): 0.79, fd("enc.1.post"): 0.78, fd("dec.2.pre"): 0.77,
           fd("dec.2.post"): 0.83}
    table = screen_rows(spec, val)
    confirm = confirmation(spec, table)
    assert confirm.stage == "confirm"
    assert [t.name for t in confirm.trials] == ["student_alone", fd("dec.2.pre"), fd("dec.2.post")]
    assert {(t.axes["fold"], t.axes["seed"]) for t in confirm.trials} == {(0, 2)}
    assert all(t.stage == "confirm" for t in confirm.trials)
    rng = np.random.default_rng(0)
    for column in ("test_auc", "test_ap", "test_f1"):
        shuffled = table.assign(**{column: rng.uniform(0, 1, len(table))})
        assert [t.key for t in confirmation(spec, shuffled).trials] == [t.key for t in confirm.trials]
    val[fd("enc.1.post")] = 0.90  # a validation metric does change the pick
    assert [t.name for t in confirmation(spec, screen_rows(spec, val)).trials] == \
        ["student_alone", fd("enc.1.pre"), fd("enc.1.post")]


def test_pick_reads_only_the_rules_metric_and_breaks_ties_by_file_order():
    order = ["alone", "a.pre", "a.post", "b.pre", "b.post"]
    twins = {"a.pre": "a.post", "a.post": "a.pre", "b.pre": "b.post", "b.post": "b.pre"}
    rows = [{"variant": v, "fold": 0, "seed": s, "best_val_ap": 0.5} for v in order for s in (0, 1)]
    screen = pd.DataFrame(rows)  # every variant ties: the first in the file wins, with its twin
    assert pick(Rule(best=1, metric="best_val_ap", baseline="alone"), screen, order, twins) == \
        ["alone", "a.pre", "a.post"]
    assert pick(Rule(best=2, metric="best_val_ap", twin="none", baseline="alone"), screen, order, twins) == \
        ["alone", "a.pre", "a.post"]


def test_the_confirmation_cannot_start_before_the_screen_is_complete(tmp_path, capsys):
    from ablation.__main__ import main
    path = write(tmp_path, {**STAGED, "name": "staged_dry"})  # no committed table of this name
    spec = load_study(path)
    partial = screen_rows(spec, {t.name: 0.8 for t in spec.trials}).iloc[:-1]
    with pytest.raises(ScreenIncomplete) as e:
        confirmation(spec, partial)
    assert str(e.value) == ("study staged_dry: the confirmation stage cannot start before the screen is complete "
                            "(9 of 10 screening trials finished)")
    assert main(["study", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "10 trials; stage=screen" in out and "the rule" in out and "at most 3 variants x 1" in out
    assert main(["study", str(path), "--stage", "confirm"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (  # MLflow's own log lines come before it
        "error: study staged_dry: the confirmation stage cannot start before the screen is complete (0 of 10 "
        "screening trials finished)")
    assert main(["study", str(write(tmp_path, {"name": "flat", "base": BASE}, "flat.yaml")), "--stage", "screen"]) == 2
    assert "the study declares no `stages`" in capsys.readouterr().err


@pytest.mark.parametrize("patch,message", [
    ({"rule": {"best": 1, "top": 2}}, "unknown key `stages.confirm.rule.top`; allowed keys here: baseline, best, "
                                      "metric, twin"),
    ({"rule": {"metric": "test_auc"}}, "`stages.confirm.rule.metric` is 'test_auc'; allowed values: "
                                       "'best_val_auc', 'best_val_ap', 'best_val_f1'"),
    ({"rule": {"twin": "mirror"}}, "`stages.confirm.rule.twin` is 'mirror'; allowed values: 'pre_post', 'none'"),
    ({"rule": {"baseline": "alone"}}, "`stages.confirm.rule.baseline` is 'alone'; allowed values: student_alone"),
    ({"rule": {"best": 0}}, "`stages.confirm.rule.best` = 0 is out of range"),
    ({"rule": {"best": 5}}, "`stages.confirm.rule.best` = 5 is more than the 4 variants"),
    ({"seeds": [1]}, "pairs the screen did not use; both have [(0, 1)]"),
    ({"folds": []}, "`stages.confirm.folds` must be a non-empty list"),
])
def test_a_bad_stage_or_rule_is_one_line_naming_file_key_and_allowed_values(tmp_path, patch, message):
    d = {**STAGED, "stages": {**STAGED["stages"], "confirm": {**STAGED["stages"]["confirm"], **patch}}}
    path = write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_a_staged_study_sets_folds_and_seeds_per_stage(tmp_path):
    with pytest.raises(ConfigError, match="`folds` is set per stage"):
        load_study(write(tmp_path, {**STAGED, "folds": [0]}))
    d = {**STAGED, "scales": {"cpu": {}, "small": {"stages.confirm.seeds": [3, 4], "stages.confirm.rule": {"best": 2}}}}
    small = load_study(write(tmp_path, d), "small")
    assert small.stages.confirm.seeds == [3, 4] and small.stages.confirm.rule.best == 2
    assert small.stages.confirm.rule.twin == "pre_post"  # the rest of the rule is kept


def test_shipped_fd_positions_is_staged_with_twins_for_every_tap():
    spec = load_study("fd_positions")
    names = list(dict.fromkeys(t.name for t in spec.trials))
    assert len(names) == 41 and len(spec.trials) == 82 and spec.stage == "screen"
    assert len(spec.twins) == 40 and all(spec.twins[spec.twins[n]] == n for n in spec.twins)
    assert not set(spec.stages.pairs("screen")) & set(spec.stages.pairs("confirm"))


def test_a_staged_study_runs_its_screen_then_the_picked_confirmation(tmp_path, tracking_store, synthetic):
    """Synthetic beats, tiny nets: the screen's 10 trials, then the rule's variants on the new pair,
    each trial tagged and committed with its stage; a rerun trains nothing."""
    from ablation.study import results
    from ablation.report import aggregate as agg
    from ablation.report.page import build_report
    from ablation.study.reproduce import committed_trials
    from ablation.study.runner import parent_run, run_study
    from ablation.study.spec import both_stages
    spec = load_study(write(tmp_path, STAGED))
    storage = f"journal:{tmp_path / 'journal.log'}"
    table = run_study(spec, beats=synthetic, progress=False, storage_url=storage)
    committed = results.load("staged")
    expected = confirmation(spec, committed)
    assert len(expected.trials) == 3
    assert list(table["stage"]) == ["screen"] * 10 + ["confirm"] * 3
    assert set(table["status"]) == {"FINISHED"}
    by_key = committed.set_index("trial_key")["stage"]
    assert all(by_key[t.key] == "screen" for t in spec.trials)
    assert all(by_key[t.key] == "confirm" for t in expected.trials) and len(committed) == 13
    assert MlflowClient().get_run(parent_run(spec)).info.status == "FINISHED"
    assert len(committed_trials(both_stages(spec))) == 13  # `reproduce` finds both stages' rows
    report = agg.collect("staged")  # from MLflow: the confirmation's table, the screen's map
    assert len(report.runs) == 3 and len(report.screen) == 10 and report.summary["n_pairs"].dropna().eq(1).all()
    assert 'data-figure="fig-positions"' in build_report("staged", tmp_path / "report").read_text()
    runs_before = len(MlflowClient().search_runs([MlflowClient().get_experiment_by_name("staged").experiment_id]))
    run_study(spec, beats=synthetic, progress=False, storage_url=storage)
    assert len(MlflowClient().search_runs([MlflowClient().get_experiment_by_name("staged").experiment_id])) == runs_before


def test_a_rerun_after_a_finished_screen_gives_the_confirmation_every_worker(tmp_path, tracking_store, synthetic,
                                                                            monkeypatch):
    """`--workers 2` on a rerun whose screen is complete: the screen starts no worker (nothing to
    run), and the confirmation still gets its two, not the screen's count of zero."""
    from ablation.paths import RESULTS
    from ablation.study import runner
    spec = load_study(write(tmp_path, {**STAGED, "name": "staged_workers"}))  # no other test's runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    val = {t.name: 0.80 for t in spec.trials}
    screen_rows(spec, val).assign(stage="screen").to_csv(RESULTS / "staged_workers.csv", index=False)
    started = []
    monkeypatch.setattr(runner, "ensure_teachers", lambda *a, **k: None)
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(runner, "spawn_workers", lambda s, n, *a: started.append((s.stage, n)))
    monkeypatch.setattr(runner, "run_worker", lambda s, *a, **k: started.append((s.stage, 1)))
    with pytest.raises(runner.StudyIncomplete):  # the stand-in workers train nothing
        runner.run_study(spec, workers=2, beats=synthetic, progress=False,
                         storage_url=f"journal:{tmp_path / 'journal.log'}")
    assert started == [("screen", 1), ("confirm", 2)]


@pytest.mark.parametrize("kill_in", ["screen", "confirm"])
def test_a_staged_study_resumes_after_sigkill_in_either_stage(tmp_path, mitdb, kill_in):
    """SIGKILL inside a screening trial, or inside the confirmation's first trial: the rerun trains
    only what is missing, each trial once, and confirms what the rule picks from the table."""
    from test_study import _finished, _study_cmd
    d = {**STAGED, "name": f"staged_{kill_in}",
         "base": {**BASE, "data": {"train_subset": 512, "val_subset": 300}, "train": {"epochs": 2, "device": "cpu"}},
         "stages": {"screen": {"folds": [0], "seeds": [0]},
                    "confirm": {"folds": [0], "seeds": [1], "rule": {"best": 1}}}}
    path = write(tmp_path, d)
    runs = fresh_runs(tmp_path)
    results_dir = tmp_path / "results"
    cmd, env = _study_cmd(path, runs, mitdb)
    env["ABLATION_RESULTS"] = str(results_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, in_confirm = [], False
    for line in proc.stdout:
        seen.append(line)
        in_confirm |= "stage=confirm" in line
        if (kill_in == "screen" and "[2/5]" in line or kill_in == "confirm" and in_confirm) and "epoch 0" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    before = _finished(runs, d["name"])
    assert len(before) == (1 if kill_in == "screen" else 5)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 interrupted (re-queued)" in out.stdout
    spec = load_study(path)
    committed = pd.read_csv(results_dir / f"{d['name']}.csv")
    keys = {t.key for t in spec.trials} | {t.key for t in confirmation(spec, committed).trials}
    after = _finished(runs, d["name"])
    assert set(after) == keys and all(len(v) == 1 for v in after.values())
    assert all(after[k] == v for k, v in before.items())  # no finished trial was redone


def test_two_workers_run_both_stages(tmp_path, mitdb):
    """--workers 2: worker processes (`worker --stage screen|confirm`) share each stage's queue; the
    confirmation's workers pick the same variants from the committed table as the coordinator."""
    from test_study import _finished, _study_cmd
    d = {**STAGED, "name": "staged_workers",
         "base": {**BASE, "data": {"train_subset": 512, "val_subset": 300}},
         "stages": {"screen": {"folds": [0], "seeds": [0]}, "confirm": {"folds": [0], "seeds": [1],
                                                                        "rule": {"best": 1}}}}
    path = write(tmp_path, d)
    runs = fresh_runs(tmp_path)
    cmd, env = _study_cmd(path, runs, mitdb, "--workers", "2")
    env["ABLATION_RESULTS"] = str(tmp_path / "results")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    spec = load_study(path)
    confirm = confirmation(spec, pd.read_csv(tmp_path / "results" / "staged_workers.csv"))
    after = _finished(runs, "staged_workers")
    assert set(after) == {t.key for t in spec.trials + confirm.trials} and all(len(v) == 1 for v in after.values())
    assert "stage=confirm" in out.stdout and len({line.split("(pid ")[1] for line in out.stdout.splitlines()
                                                  if "start (pid" in line}) >= 2
