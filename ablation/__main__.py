"""Command-line interface: ``python -m ablation <command> --help``.

Each command is a thin function over the package; no logic lives here.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

import numpy as np

from ablation import __version__
from ablation.config import MAX_THREADS, ConfigError, RunConfig, from_dict, load_yaml, parse_value, set_dotted
from ablation.errors import REPORT_TO, BadInput, UserError
from ablation.paths import DASHBOARDS, RESULTS, merge_csv


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _output_file(option: str, path: str, suffix: str | None = None) -> Path:
    """The file `option` names to write, checked before any work: not a folder, in a folder that
    exists, ending in `suffix` when given."""
    p = Path(path)
    if p.is_dir():
        raise BadInput(f"{option} {p}: is a folder; name a file" + (f" ending in {suffix}" if suffix else ""))
    if suffix and p.suffix != suffix:
        raise BadInput(f"{option} {p}: must end in {suffix}")
    if not p.parent.is_dir():
        raise BadInput(f"{option} {p}: the folder {p.parent} does not exist; create it first")
    return p


def _output_folder(option: str, path: str) -> Path:
    """The folder `option` names to write into (created when missing), refused when it is a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInput(f"{option} {p}: is a file; the report needs a folder (it writes NAME.html, .csv and .md there)")
    return p


def _thread_count(text: str) -> int:
    """--threads: a positive integer up to MAX_THREADS."""
    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_THREADS} (this machine has "
                                         f"{len(os.sched_getaffinity(0))} cores for this process)")
    return value


def _threads(n: int | None) -> None:
    import torch
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)


def _run_config(args, defaults: dict | None = None) -> RunConfig:
    """The run config: `defaults`, then --config FILE, then --set key=value."""
    d = load_yaml(args.config) if args.config else dict(defaults or {})
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.epochs=5")
        key, value = item.split("=", 1)
        d = set_dotted(d, key, parse_value(value, f"--set {key}"))
    return from_dict(RunConfig, d, src=args.config or "--set")


def cmd_data(args) -> None:
    """Build (or load) the beat cache and print beats per class and per split."""
    import pandas as pd

    from ablation.config import DataConfig
    from ablation.data.mitdb import CLASSES, Protocol, load_beats
    from ablation.data.splits import make_split
    beats = load_beats(Protocol(not args.no_rpeak_check, args.rpeak_detector), args.mitdb)
    print(f"beats cache fingerprint {beats.fingerprint}: {len(beats.label)} beats")
    cfg = DataConfig(split=args.split, fold=args.fold, rpeak_check=not args.no_rpeak_check,
                     rpeak_detector=args.rpeak_detector)
    sizes = make_split(beats, cfg).sizes(beats)
    table = pd.DataFrame({"all": beats.counts(), **sizes}).T[CLASSES]
    table["total"] = table.sum(axis=1)
    print(f"\nsplit={args.split}" + (f" fold={args.fold}" if args.split == "beatgan" else ""))
    print(table.to_markdown() if args.markdown else table.to_string())


def cmd_train(args, teacher_only: bool = False) -> None:
    """Train one run (teacher or student) and log it to MLflow."""
    from ablation import tracking
    from ablation.run import ensure_teacher, execute
    from ablation.train.loop import pick_device
    _threads(args.threads)
    tracking.setup(args.tracking_uri)
    from ablation.config import TEACHER_RECIPE
    cfg = _run_config(args, {"train": TEACHER_RECIPE} if teacher_only else None)
    device = pick_device(args.device or cfg.train.device)
    if teacher_only:
        if cfg.role != "teacher":
            raise ConfigError("`teacher` trains role: teacher configs; use `train` for students")
        from ablation.data.dataset import load_data
        run_id, _ = ensure_teacher(cfg, load_data(cfg.data, args.mitdb), device)
        print(f"teacher run {run_id}")
        if args.export:
            from ablation import teachers
            print(f"exported teacher: {teachers.export(run_id)} (and its row in results/teachers.csv: commit both)")
        return
    out = execute(cfg, mitdb=args.mitdb, device=device, experiment=args.experiment, skip_finished=not args.force)
    if out.result is None:
        print(f"already finished: run {out.run_id} (use --force to train again)")
    else:
        r = out.result
        print(f"run {out.run_id}: best epoch {r.best_epoch}, val AUC {r.val['auc']:.4f}, test AUC "
              f"{r.test['auc']:.4f}, AP {r.test['ap']:.4f}, F1 {r.test['f1']:.4f} ({r.seconds:.0f} s)")


def cmd_score(args) -> None:
    """Anomaly scores of raw beats (n, channels, 320) in a .npy file, with a trained model."""
    from ablation import tracking
    from ablation.run import score_file
    from ablation.train.loop import pick_device
    output = _output_file("--output", args.output, ".npy")
    _threads(args.threads)
    tracking.setup(args.tracking_uri)
    s = score_file(args.model, args.input, pick_device(args.device or "auto"), args.batch_size, args.leads)
    np.save(output, s)
    print(f"wrote {len(s)} scores to {args.output}")


def cmd_bn_check(args) -> None:
    """Validation and test AUC of trained models under each BatchNorm treatment (eval mode with the
    stored statistics, per-batch statistics as BeatGAN's reference validates, statistics recomputed
    on validation or training beats): see ablation.analysis.bn_check."""
    from ablation import tracking
    from ablation.data.dataset import load_data
    from ablation.run import load_model
    from ablation.analysis.bn_check import bn_modes
    from ablation.train.loop import pick_device
    csv = _output_file("--csv", args.csv) if args.csv else None
    _threads(args.threads)
    tracking.setup(args.tracking_uri)
    device = pick_device(args.device or "auto")
    rows, data = [], {}
    for ref in args.models:
        cfg, state = tracking.load_checkpoint(ref, device)
        key = repr(cfg.data)
        if key not in data:
            data[key] = load_data(cfg.data, args.mitdb, progress=False)
        row = bn_modes(load_model(cfg, state, device).G, data[key], seed=args.seed)
        rows.append({"model": ref, **{k: round(v, 4) for k, v in row.items()}})
        print(rows[-1], flush=True)
    if csv:
        import pandas as pd
        pd.DataFrame(rows).to_csv(csv, index=False)
        print(f"wrote {csv}")


def cmd_study(args) -> None:
    """Run a study from studies/NAME.yaml (skipping finished trials), or --dry-run to list its trials."""
    from ablation.study.spec import MAX_TRIALS, load_study, select_part
    spec = load_study(args.name, args.scale, None if args.yes else MAX_TRIALS)
    _check_stage(spec, args.stage)
    if args.dry_run:
        _dry_run(spec, args)
        return
    from ablation import tracking
    from ablation.study.runner import confirmation_stage, run_study
    _threads(args.threads or max(1, len(os.sched_getaffinity(0)) // max(1, args.workers)))
    tracking.setup(args.tracking_uri)
    spec = select_part(confirmation_stage(spec) if args.stage == "confirm" else spec, args.folds, args.variants)
    run_study(spec, workers=args.workers, storage_url=args.storage, mitdb=args.mitdb, device=args.device,
              then_confirm=args.stage is None)


def _check_stage(spec, stage: str | None) -> None:
    if stage and spec.stages is None:
        raise ConfigError(f"{spec.path}: --stage {stage}: the study declares no `stages`")


def _dry_run(spec, args) -> None:
    """List the trials; for a staged study the screen's, and the confirmation's once the committed
    table holds the whole screen (else what the rule will pick from)."""
    from ablation.study import results
    from ablation.study.spec import select_part
    from ablation.study.stages import ScreenIncomplete, confirmation
    if args.stage != "confirm":
        _print_trials(select_part(spec, args.folds, args.variants))
    if spec.stages is None or args.stage == "screen":
        return
    try:
        _print_trials(select_part(confirmation(spec, results.load(spec.name)), args.folds, args.variants))
    except ScreenIncomplete as e:
        rule, pairs = spec.stages.confirm.rule, spec.stages.pairs("confirm")
        most = min(len({t.name for t in spec.trials}), 1 + rule.best * (2 if rule.twin == "pre_post" else 1))
        print(f"\n{e}; then the rule ({rule}) picks at most {most} variants x {len(pairs)} (fold, seed) pairs "
              f"{pairs} = at most {most * len(pairs)} trials")


def _print_trials(spec) -> None:
    import pandas as pd
    rows = pd.DataFrame([{"#": t.index, "trial": t.name, **{k: v for k, v in t.axes.items() if k != "variant"},
                          **({"stage": t.stage} if t.stage else {}), "key": t.key} for t in spec.trials])
    last = [c for c in ("stage", "key") if c in rows]
    print(rows[[c for c in rows if c not in last] + last].to_string(index=False))
    print(f"\n{len(spec.trials)} trials; {spec.scale_summary}")


def cmd_worker(args) -> None:
    """Join a running study as one more worker (on this or another machine, same stores)."""
    from ablation import tracking
    from ablation.study.runner import confirmation_stage, joined_parent, run_worker
    from ablation.study.spec import load_study, select_part
    _threads(args.threads)
    tracking.setup(args.tracking_uri)
    spec = load_study(args.name, args.scale)
    _check_stage(spec, args.stage)
    spec = select_part(confirmation_stage(spec) if args.stage == "confirm" else spec, args.folds, args.variants)
    run_worker(spec, args.storage, args.parent_run_id or joined_parent(spec), mitdb=args.mitdb, device=args.device)


def cmd_tune(args) -> None:
    """Search a study's `search` space with Optuna on validation AUC, then (--confirm) retrain the
    best and the untuned config on every fold and seed and report test AUC with a paired test."""
    from ablation import tracking
    from ablation.study.spec import load_study
    from ablation.study.tune import tune
    _threads(args.threads)
    tracking.setup(args.tracking_uri)
    tune(load_study(args.name, args.scale), args.storage, search=not args.confirm_only,
         confirm=args.confirm or args.confirm_only, folds=args.folds, seeds=args.seeds, out=Path(args.out),
         mitdb=args.mitdb, device=args.device)


def cmd_rescore(args) -> None:
    """Test AUC of trained models with the D-feature residual added to the score (f-AnoGAN's idea),
    its weight chosen on validation: see ablation.analysis.rescore."""
    import pandas as pd

    from ablation import tracking
    from ablation.data.dataset import load_data
    from ablation.run import load_model
    from ablation.train.loop import pick_device
    from ablation.analysis.rescore import rescore
    _threads(args.threads)
    tracking.setup(args.tracking_uri)
    device = pick_device(args.device or "auto")
    rows = []
    for ref in args.models:
        cfg, state = tracking.load_checkpoint(ref, device)
        data = load_data(cfg.data, args.mitdb, progress=False)
        row = {"model": ref, "fold": cfg.data.fold, "seed": cfg.train.seed, "ndf": cfg.model.ndf,
               **rescore(load_model(cfg, state, device), data)}
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    if args.csv:
        merge_csv(Path(args.csv), pd.DataFrame(rows), "model")
        print(f"wrote {args.csv} (rows of other models kept)")


def cmd_ensemble(args) -> None:
    """Test AUC of an ensemble of trained models (mean of their scores standardised on validation
    normals) for K = 1..n members in the order given: see ablation.analysis.ensemble."""
    import pandas as pd

    from ablation import tracking
    from ablation.train.loop import pick_device
    _check_members(args)
    _threads(args.threads)
    tracking.setup(args.tracking_uri)
    device = pick_device(args.device or "auto")
    groups = [[r] for r in args.models] if args.each else _by_fold(args.models) if args.by_fold else [args.models]
    splits: dict = {}  # runs of one fold share their loaded split
    tables = [_ensemble_table(g, args.snapshots, args.mitdb, device, splits).assign(runs=" ".join(g)) for g in groups]
    table = pd.concat(tables, ignore_index=True)
    print(table.drop(columns=["members", "runs"]).to_string(index=False, float_format="%.4f"))
    if args.csv:
        merge_csv(Path(args.csv), table, "runs")
        print(f"wrote {args.csv} (rows of other runs kept)")


def _check_members(args) -> None:
    """Refuse an ensemble that would not be what it says: --each with --by-fold, a run given twice."""
    if args.each and args.by_fold:
        raise BadInput("--each and --by-fold: choose one (--each: one ensemble per run, of its snapshots with "
                       "--snapshots; --by-fold: one ensemble per fold of the runs)")
    twice = sorted({r for r in args.models if args.models.count(r) > 1})
    if twice:
        raise BadInput(f"{' '.join(twice)} is given twice: an ensemble of K members needs K different runs")


def _by_fold(runs: list[str]) -> list[list[str]]:
    """Runs or checkpoint files grouped by their config's fold, folds ascending, the given order kept
    within each (read from the checkpoints: an imported teacher's run logs no params)."""
    from ablation import tracking
    groups: dict[int, list[str]] = {}
    for r in runs:
        groups.setdefault(tracking.load_checkpoint(r)[0].data.fold, []).append(r)
    return [groups[f] for f in sorted(groups)]


def _ensemble_table(runs: list[str], snapshots: bool, mitdb: str | None, device, splits: dict):
    """The K = 1..n table of one ensemble: the given runs, or with `snapshots` the snapshots they kept
    (`splits`: loaded data by data config, filled as needed)."""
    import pandas as pd

    from ablation import tracking
    from ablation.data.dataset import load_data
    from ablation.run import load_model
    from ablation.analysis.ensemble import curve, member
    refs = [(f"{r}:{i}", p) for r in runs for i, p in enumerate(tracking.snapshot_refs(r))] \
        if snapshots else [(r, r) for r in runs]
    if not refs:
        raise BadInput(f"none of {' '.join(runs)} kept snapshots (train.snapshots > 1)")
    loaded = [(name, *tracking.load_checkpoint(p, device)) for name, p in refs]
    folds = {(c.data.fold, c.data.split, c.data.nc) for _, c, _ in loaded}
    if len(folds) > 1:
        raise BadInput(f"ensemble members must share one fold, split and nc; got {sorted(folds)}")
    key = repr(loaded[0][1].data)
    if key not in splits:
        splits[key] = load_data(loaded[0][1].data, mitdb, progress=False)
    data = splits[key]
    members = [member(name, load_model(c, st, device), data, c.train.score_feat_weight) for name, c, st in loaded]
    return pd.DataFrame(curve(members, data)).assign(fold=loaded[0][1].data.fold)


def cmd_fingerprint(args) -> None:
    """Train a fixed small BeatGAN on the real records (300 steps, one thread, the pinned kernels)
    and print the SHA-256 of its weights; --record adds this machine's row to results/fingerprints.csv."""
    from ablation import fingerprint
    row = fingerprint.measure(args.mitdb)
    table = fingerprint.known()
    same = table[table["fingerprint"] == row["fingerprint"]]
    seen = [f"{r.cpu_model} ({r.isa_flags}; {r.mode})" for r in same.itertuples()]
    print(f"fingerprint {row['fingerprint']}")
    print(f"validation AUC {row['val_auc']:.6f}; {row['cpu_model']} ({row['isa_flags']}), {row['mode']}, "
          f"torch {row['torch']}, oneDNN {row['onednn']}, {row['threads']} thread")
    if seen:
        print(f"matches {len(seen)} machine(s) of {fingerprint.TABLE.name}: {'; '.join(seen)}")
    elif len(table):
        print(f"not in {fingerprint.TABLE.name} ({len(table)} rows): this machine computes other bits on the "
              f"{row['mode']} path")
    else:
        print(f"{fingerprint.TABLE.name} has no machine yet")
    if args.record:
        fingerprint.record(row)
        print(f"recorded this machine in {fingerprint.TABLE}")


def cmd_reproduce(args) -> None:
    """Retrain a study's committed trials (results/STUDY.csv) in a scratch store and say, per trial,
    whether the new run is identical to the committed one."""
    from ablation.study.reproduce import reproduce
    from ablation.study.spec import both_stages, load_study, select_part
    from ablation import tracking
    tracking.setup(args.tracking_uri)
    spec = select_part(both_stages(load_study(args.name, args.scale)), args.folds, args.variants)
    table = reproduce(spec, args.mitdb, args.device)
    print(table.to_string(index=False, float_format="%.6f"))
    print(f"reproduced {int(table['identical'].sum())} of {len(table)} trials identically")
    if not table["identical"].all():
        raise SystemExit(1)


def cmd_standings(args) -> None:
    """The platform's best detectors against test AUC 0.95, best first, from committed tables
    (results/first_run/ by default, the README's; results/ for the runs on the pinned path), then
    the Anobeat teachers against the BeatGAN ones, paired by fold and seed, where both are committed."""
    from ablation.report.standings import family_markdown, family_pairs, markdown, standings
    if not Path(args.results).is_dir():
        raise BadInput(f"--results {args.results}: not a folder of committed tables (e.g. results/first_run, results)")
    print(markdown(standings(Path(args.results))), end="")
    pair = family_markdown(family_pairs(Path(args.results), "anobeat"))
    print(f"\n{pair}" if pair else "", end="")


def cmd_compare(args) -> None:
    """Two runs of one study side by side (committed tables, e.g. results/first_run/headline.csv and
    results/headline.csv): each trial's test AUC in both, and each variant's difference to the baseline."""
    from pathlib import Path

    from ablation.report.replication import markdown, read_table
    from ablation.study.spec import declared_variants
    first, second = (read_table(Path(p)) for p in (args.first, args.second))
    declared = declared_variants(Path(args.first).stem)  # results/NAME.csv: studies/NAME.yaml's variants
    print(markdown(first, second, (args.names[0], args.names[1]), args.baseline, declared), end="")


def cmd_history(args) -> None:
    """Per-epoch metrics of MLflow runs (learning curves) as one CSV table."""
    import pandas as pd

    from ablation import tracking
    csv = _output_file("--csv", args.csv)
    tracking.setup(args.tracking_uri)
    table = pd.concat([tracking.history(r) for r in args.runs], ignore_index=True)
    table.to_csv(csv, index=False, float_format="%.6g")
    print(f"wrote {len(table)} rows to {args.csv}")


def cmd_report(args) -> None:
    """Write dashboards/NAME.html (and .csv, .md): the study's runs compared, with statistics."""
    from ablation import tracking
    from ablation.report import build_report
    out = _output_folder("--out", args.out)
    tracking.setup(args.tracking_uri)
    path = build_report(args.name, out, baseline=args.baseline, scale=args.scale)
    print(f"wrote {path}, {path.with_suffix('.csv')} and {path.with_suffix('.md')}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ablation", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config: bool = True):
        sp.add_argument("--mitdb", help="folder with the MIT-BIH records (else $ABLATION_MITDB, runs/mitdb, "
                                        "../shared/mitdb, or a PhysioNet download)")
        sp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
        sp.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)")
        sp.add_argument("--threads", type=_thread_count,
                        help="torch intra-op threads (default: the cores given to this process)")
        if config:
            sp.add_argument("--config", help="run config YAML (default: the paper's teacher)")
            sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="override a config key, e.g. --set train.epochs=5 (repeatable)")

    d = sub.add_parser("data", help=cmd_data.__doc__, description=cmd_data.__doc__)
    d.add_argument("--mitdb")
    d.add_argument("--split", choices=["beatgan", "interpatient"], default="beatgan")
    d.add_argument("--fold", type=int, choices=range(5), default=0)
    d.add_argument("--rpeak-detector", choices=["hamilton", "xqrs"], default="hamilton")
    d.add_argument("--no-rpeak-check", action="store_true", help="keep N beats without a detected R-peak")
    d.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("teacher", help="train the teacher (the best recipe) only when MLflow has none with the same key",
                       description="Train the teacher only when MLflow has no finished run with the same key. "
                                   "Without --config it is the best measured recipe (ablation.config.TEACHER_RECIPE); "
                                   "--set data.fold=K picks the fold.")
    common(t)
    t.add_argument("--export", action="store_true",
                   help="also commit the checkpoint to results/teachers/ and its row to results/teachers.csv")
    t.set_defaults(func=lambda a: cmd_train(a, teacher_only=True))

    tr = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    common(tr)
    tr.add_argument("--experiment", help="MLflow experiment (default: teachers / students by role)")
    tr.add_argument("--force", action="store_true", help="train even when a finished run has the same key")
    tr.set_defaults(func=cmd_train)

    for name, func in (("study", cmd_study), ("worker", cmd_worker)):
        sp = sub.add_parser(name, help=func.__doc__, description=func.__doc__)
        common(sp, config=False)
        sp.add_argument("name", help="study name (studies/NAME.yaml) or path to a study file")
        sp.add_argument("--scale", default="cpu", help="a scale declared in the study file (default: cpu)")
        sp.add_argument("--storage", help="Optuna storage URL of the trial queue (default: journal file under "
                                          "runs/optuna; postgresql+psycopg2://... for several machines)")
        sp.add_argument("--folds", type=int, nargs="+", help="run only these folds of the scale now (a long study "
                                                             "in parts: the others stay for a later run)")
        sp.add_argument("--variants", nargs="+", help="run only these variants now (with --folds: on those folds)")
        sp.add_argument("--stage", choices=["screen", "confirm"],
                        help="a staged study: run only this stage (default: the screen, then the confirmation "
                             "once the screen is complete)")
        if name == "study":
            sp.add_argument("--workers", type=_positive_int, default=1, help="worker processes on this machine")
            sp.add_argument("--dry-run", action="store_true", help="print the expanded trials and their count")
            sp.add_argument("--yes", action="store_true", help="expand a study of more than 10,000 trials")
        else:
            sp.add_argument("--parent-run-id", help="MLflow parent run of the study (default: found by tag)")
        sp.set_defaults(func=func)

    tu = sub.add_parser("tune", help=cmd_tune.__doc__, description=cmd_tune.__doc__)
    common(tu, config=False)
    tu.add_argument("name", help="study name (studies/NAME.yaml, with a `search` section) or path")
    tu.add_argument("--scale", default="cpu", help="a scale declared in the study file (default: cpu)")
    tu.add_argument("--storage", help="Optuna storage URL (default: journal file under runs/optuna)")
    tu.add_argument("--confirm", action="store_true", help="after the search, retrain best and untuned on folds x seeds")
    tu.add_argument("--confirm-only", action="store_true", help="skip the search; confirm its best trial")
    tu.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="confirmation folds")
    tu.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="confirmation seeds")
    tu.add_argument("--out", default=str(DASHBOARDS),
                    help="folder of the confirmation report")
    tu.set_defaults(func=cmd_tune)

    r = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    r.add_argument("name", help="study name (its MLflow experiment)")
    r.add_argument("--out", default=str(DASHBOARDS), help="output folder")
    r.add_argument("--baseline", help="variant to compare against (default: student_alone, baseline or none "
                    "if present, else the study file's first variant)")
    r.add_argument("--scale", help="which scale's runs (default: the latest run's)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    r.set_defaults(func=cmd_report)

    rs = sub.add_parser("rescore", help=cmd_rescore.__doc__.split(" (")[0], description=cmd_rescore.__doc__)
    common(rs, config=False)
    rs.add_argument("models", nargs="+", help="MLflow run ids or checkpoint paths")
    rs.add_argument("--csv", help="also write the rows to this CSV file (rows of other models in it are kept)")
    rs.set_defaults(func=cmd_rescore)

    en = sub.add_parser("ensemble", help=cmd_ensemble.__doc__.split(" (")[0], description=cmd_ensemble.__doc__)
    common(en, config=False)
    en.add_argument("models", nargs="+", help="MLflow run ids or checkpoint paths, one fold (or --by-fold)")
    en.add_argument("--snapshots", action="store_true", help="the members are the snapshots the runs kept")
    en.add_argument("--each", action="store_true", help="one ensemble per run (with --snapshots: of its own snapshots)")
    en.add_argument("--by-fold", action="store_true", help="one ensemble per fold of the given runs (seed ensembles)")
    en.add_argument("--csv", help="also write the rows to this CSV file (rows of other runs in it are kept)")
    en.set_defaults(func=cmd_ensemble)

    h = sub.add_parser("history", help=cmd_history.__doc__, description=cmd_history.__doc__)
    h.add_argument("runs", nargs="+", help="MLflow run ids")
    h.add_argument("--csv", required=True, help="the CSV file to write")
    h.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    h.set_defaults(func=cmd_history)

    fp = sub.add_parser("fingerprint", help=cmd_fingerprint.__doc__.split(";")[0], description=cmd_fingerprint.__doc__)
    fp.add_argument("--mitdb", help="folder with the MIT-BIH records")
    fp.add_argument("--record", action="store_true", help="add (or refresh) this machine's row in results/fingerprints.csv")
    fp.set_defaults(func=cmd_fingerprint)

    rp = sub.add_parser("reproduce", help=cmd_reproduce.__doc__.split(" (")[0], description=cmd_reproduce.__doc__)
    common(rp, config=False)
    rp.add_argument("name", help="study name (studies/NAME.yaml) whose committed trials to retrain")
    rp.add_argument("--scale", default="cpu", help="a scale declared in the study file (default: cpu)")
    rp.add_argument("--folds", type=int, nargs="+", help="only these folds")
    rp.add_argument("--variants", nargs="+", help="only these variants")
    rp.set_defaults(func=cmd_reproduce)

    cp = sub.add_parser("compare", help=cmd_compare.__doc__.split(" (")[0], description=cmd_compare.__doc__)
    cp.add_argument("first", help="a study's results table (CSV), the earlier run")
    cp.add_argument("second", help="the same study's table from the later run")
    cp.add_argument("--baseline", help="variant to compare against (default: student_alone, baseline or none "
                    "if present, else the study file's first variant)")
    cp.add_argument("--names", nargs=2, default=("first run", "replication"), metavar=("FIRST", "SECOND"),
                    help="the two runs' names in the table's head")
    cp.set_defaults(func=cmd_compare)
    st = sub.add_parser("standings", help=cmd_standings.__doc__, description=cmd_standings.__doc__)
    st.add_argument("--results", default=str(RESULTS / "first_run"),
                    help="folder of committed tables (default: results/first_run)")
    st.set_defaults(func=cmd_standings)

    s = sub.add_parser("score", help=cmd_score.__doc__, description=cmd_score.__doc__)
    common(s, config=False)
    s.add_argument("--model", required=True, help="MLflow run id or checkpoint path")
    s.add_argument("--input", required=True, help=".npy of raw beats shaped (n, channels, 320)")
    s.add_argument("--output", required=True, help=".npy to write the (n,) scores to")
    s.add_argument("--leads", type=_positive_int, help="score the first N leads of input with more leads than "
                                                       "the model reads (N: the model's lead count)")
    s.add_argument("--batch-size", type=_positive_int, default=4096)
    s.set_defaults(func=cmd_score)

    b = sub.add_parser("bn-check", help=cmd_bn_check.__doc__.split(" (")[0], description=cmd_bn_check.__doc__)
    common(b, config=False)
    b.add_argument("models", nargs="+", help="MLflow run ids or checkpoint paths")
    b.add_argument("--seed", type=int, default=0, help="shuffling of the per-batch passes")
    b.add_argument("--csv", help="also write the table to this CSV file")
    b.set_defaults(func=cmd_bn_check)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command: 0 when it succeeds, 2 with one line for a `UserError`, 130 with one line
    on Ctrl-C (the runs it had open are closed KILLED on the way out), 1 with the traceback and
    where to report it for anything else: that is a defect of the platform."""
    args = build_parser().parse_args(argv)
    # SIGTERM ends a run like SIGINT: the MLflow run is closed KILLED with its reason, not left RUNNING
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): the runs in progress are closed KILLED; a rerun resumes", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"ablation {__version__}: this is a defect of the platform, not of your input: please report it, "
              f"with the traceback above, in {REPORT_TO}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
