"""``make bench``: our training loop, tracking and scoring against a reference in the original style.

Every figure is measured in the same process, on the same machine, on the same synthetic beats
(`ablation.data.synthetic`, not ECG; speed does not depend on the values). The reference is
``benchmarks/reference_style.py`` (DataLoader, Sequentials, features by truncated re-runs, KD via
numpy); both sides start every round from the same weights.

Rows (section, item):

- training: beats/s of a teacher step (ndf 32), a student step (ndf 8), and a distillation step
  (student ndf 8, teacher ndf 32, score KL KD + attention transfer at disc.0-4.pre and L2 at
  disc.5.pre on the reconstruction). Ours is `ablation.train.loop.train` (its ``train_seconds``, validation excluded),
  one epoch per call; the reference is `ReferenceBeatGAN.train_epoch`. Rounds alternate ours and
  the reference; the ratio is the median over rounds of ours / reference, so a background load
  that drifts hits both sides of a pair alike.
- tracking: wall time per epoch (training + validation + the epoch's logging) of
  `ablation.run.execute` (MLflow, temporary SQLite store) against `train` with logging off; the
  cost of the epoch's ``mlflow.log_metrics`` call measured alone; the fixed per-run cost.
- inference: `ablation.train.evaluate.scores` beats/s at batch 4096, and single-beat latency.
- utilisation: FLOPs of one training step (counted with `torch.utils.flop_counter.FlopCounterMode`
  on the step itself: two one-epoch runs that differ by exactly one batch) over its median time,
  against a dense float32 matmul measured in the same run.
- data: seconds per epoch of the data path alone (ours: permutation + indexing of the resident
  tensor, as the loop does; reference: iterating the DataLoader).
- numerics (CPU only): what the pinned numeric path (`ablation.numerics`: oneDNN, ATen and MKL capped
  at AVX2) costs against the kernels the CPU would pick itself (``ABLATION_NUMERICS=native``). The
  kernels are chosen once per process, so each side runs in a child process of its own (the same
  teacher weights and beats); rounds alternate which side runs first, the ratio is the median of
  the rounds' pinned / native epoch times. On an AVX2-only CPU both sides run the same kernels.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import ablation  # noqa: F401  (pins the CPU kernels before torch is imported; ABLATION_NUMERICS=native frees them)
import numpy as np
import pandas as pd
import torch

from ablation.config import RunConfig, from_dict, set_dotted
from ablation.data.dataset import DataBundle, EvalSet
from ablation.data.mitdb import CLASSES
from ablation.data.synthetic import synthetic_beats
from ablation.models.beatgan import BeatGAN
from ablation.train.evaluate import scores
from ablation.train.loop import pick_device, train

REFERENCE_PATH = Path(__file__).resolve().with_name("reference_style.py")
BATCH = 64
COLUMNS = ["section", "item", "ours", "reference", "unit", "ratio", "result", "target", "met", "note"]


def load_reference():
    """``benchmarks/reference_style.py`` as a module (the folder is not an installed package)."""
    name = "ablation_bench_reference_style"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REFERENCE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    """How much of everything one benchmark run does."""

    teacher_ndf: int = 32
    student_ndf: int = 8
    nz: int = 50
    batches: int = 8  # batches of 64 per timed epoch
    seconds_per_item: float = 20.0  # time budget of each timed comparison (after its warm-up)
    min_rounds: int = 3
    max_rounds: int = 40
    warmup: bool = True
    eval_beats: int = 256  # validation / test beats of the training runs (not timed)
    infer_beats_student: int = 20480
    infer_beats_teacher: int = 4096
    infer_batch: int = 4096
    infer_repeats: int = 3
    latency_calls: int = 200
    tracking_epochs: int = 3  # per call; the first epoch of each call has no start stamp
    tracking_pairs: int = 1  # unlogged/logged call pairs, at least; more while the budget lasts
    max_tracking_pairs: int = 4
    log_calls: int = 20
    matmul_n: int = 2048
    matmul_seconds: float = 2.0
    data_repeats: int = 20
    option_epochs: int = 3  # per run of an option comparison; the first (compilation, warm-up) is reported apart
    option_rounds: int = 2  # alternating base/option runs

    @classmethod
    def quick(cls, **kw) -> "Plan":
        """Every row, tiny sizes: for tests and smoke runs, not for reading the numbers."""
        base = dict(teacher_ndf=8, student_ndf=4, nz=16, batches=2, seconds_per_item=0.0, min_rounds=1, max_rounds=1, warmup=False,
                    eval_beats=128, infer_beats_student=512, infer_beats_teacher=256, infer_batch=256,
                    infer_repeats=1, latency_calls=5, tracking_epochs=2, tracking_pairs=1, log_calls=3,
                    matmul_n=256, matmul_seconds=0.05, data_repeats=2, option_epochs=2, option_rounds=1)
        base.update(kw)
        return cls(**base)


# ----------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _median(xs) -> float:
    return float(statistics.median(xs)) if len(xs) else float("nan")


def _spread(xs) -> float:
    """Relative interquartile range (a noise indicator); 0 with fewer than 4 samples."""
    if len(xs) < 4:
        return 0.0
    q1, q3 = np.percentile(xs, [25, 75])
    return float((q3 - q1) / np.median(xs))


# ----------------------------------------------------------------------------------------------
# Data and configurations
# ----------------------------------------------------------------------------------------------
def synthetic_bundle(n_train: int, n_eval: int, nc: int = 1, seed: int = 0) -> DataBundle:
    """n_train normal beats for training; an eval set of n_eval beats (normals and V) as val and test."""
    n_anom = max(n_eval // 4, 1)
    beats = synthetic_beats({"N": n_train + n_eval - n_anom, "V": n_anom}, seed=seed)
    x = torch.from_numpy(np.ascontiguousarray(beats.x[:, :nc]))
    cls = beats.label.astype(np.int64)
    ev = slice(n_train, None)
    evalset = EvalSet(x[ev], (cls[ev] != CLASSES.index("N")).astype(np.int64), cls[ev])
    return DataBundle(x[:n_train].clone(), evalset, evalset, beats.fingerprint, {})


def teacher_config(plan: Plan, device: str, epochs: int = 1) -> RunConfig:
    w = plan.teacher_ndf
    return from_dict(RunConfig, {"model": {"ndf": w, "ngf": w, "nz": plan.nz},
                                 "train": {"epochs": epochs, "batch_size": BATCH, "device": device,
                                           "lr_schedule": "constant"}})


def student_config(plan: Plan, device: str, epochs: int = 1, distill: bool = False) -> RunConfig:
    w = plan.student_ndf
    d = {"model": {"ndf": w, "ngf": w, "nz": plan.nz},
         "train": {"epochs": epochs, "batch_size": BATCH, "device": device, "lr_schedule": "constant"}}
    if distill:
        tw = plan.teacher_ndf
        d["role"] = "student"
        d["distill"] = {"teacher": {"ndf": tw, "ngf": tw, "nz": plan.nz},
                        "kd": {"kind": "score_kl", "T": 4.0, "weight": 1.0},
                        "features": [{"position": f"disc.{k}.pre", "input": "fake", "target": "teacher",
                                      "distance": "at" if k < 5 else "l2", "weight": 1.0} for k in range(6)]}
    return from_dict(RunConfig, d)


@dataclasses.dataclass
class Case:
    """One training comparison: our config/model (+ teacher) and the reference built on the same weights."""

    name: str
    cfg: RunConfig
    model: BeatGAN
    teacher: BeatGAN | None = None

    def ours(self, data: DataBundle, device: torch.device, around_train=None) -> tuple[float, object, float]:
        """One epoch of our loop from fresh copies of the weights: (train seconds, Result, seconds
        spent building the distillation terms before training: once per run, not per epoch).
        `around_train`: a context manager entered around `train` only (FLOP counting)."""
        model = copy.deepcopy(self.model).to(device)
        terms, setup = None, 0.0
        if self.teacher is not None:
            from ablation.distill.distiller import Distiller
            teacher = copy.deepcopy(self.teacher).to(device)
            t0 = time.perf_counter()
            terms = Distiller(self.cfg.distill, teacher, model, data.train.to(device))
            _sync(device)
            setup = time.perf_counter() - t0
        with around_train if around_train is not None else contextlib.nullcontext():
            result = train(self.cfg, data, device, terms, progress=False, model=model)
        return result.history[0]["train_seconds"], result, setup

    def reference(self, data: DataBundle, device: torch.device):
        ref = load_reference()
        m = self.cfg.model
        G, D = ref.from_beatgan(self.model, data.train.shape[1], m.ndf, m.ngf, m.nz)
        teacher = None
        if self.teacher is not None:
            t = self.cfg.distill.teacher
            teacher = ref.from_beatgan(self.teacher, data.train.shape[1], t.ndf, t.ngf, t.nz)
        tc = self.cfg.train
        return ref.ReferenceBeatGAN(G, D, data.train.numpy(), device=device, batchsize=tc.batch_size, lr=tc.lr,
                                    beta1=tc.beta1, w_adv=tc.w_adv, teacher=teacher,
                                    T=self.cfg.distill.kd.T if self.teacher is not None else 4.0)


def make_cases(plan: Plan, device: str, nc: int = 1) -> list[Case]:
    torch.manual_seed(0)
    t_cfg, s_cfg = teacher_config(plan, device), student_config(plan, device)
    d_cfg = student_config(plan, device, distill=True)
    teacher = BeatGAN.build(t_cfg.model, nc)
    student = BeatGAN.build(s_cfg.model, nc)
    return [Case(f"teacher step (ndf {plan.teacher_ndf})", t_cfg, teacher),
            Case(f"student step (ndf {plan.student_ndf})", s_cfg, student),
            Case(f"distillation step (ndf {plan.student_ndf} <- {plan.teacher_ndf}, KD + AT x6)", d_cfg,
                 copy.deepcopy(student), teacher)]


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------
def compare_training(case: Case, data: DataBundle, device: torch.device, plan: Plan) -> dict:
    """Alternate one epoch of ours and one of the reference until the budget is spent."""
    n_beats = (len(data.train) // BATCH) * BATCH
    if plan.warmup:
        case.ours(data, device)
        case.reference(data, device).train_epoch()
    ours, refs, setups = [], [], []
    t0 = time.perf_counter()
    while len(ours) < plan.max_rounds and (len(ours) < plan.min_rounds
                                           or time.perf_counter() - t0 < plan.seconds_per_item):
        ref_first = len(ours) % 2 == 1  # alternate which side runs first in a round
        if ref_first:
            refs.append(case.reference(data, device).train_epoch())
        seconds, _, setup = case.ours(data, device)
        ours.append(seconds)
        setups.append(setup)
        if not ref_first:
            refs.append(case.reference(data, device).train_epoch())
    ratios = [r / o for o, r in zip(ours, refs)]
    return {"ours_s": _median(ours), "ref_s": _median(refs), "ratio": _median(ratios), "rounds": len(ours),
            "setup_s": _median(setups),
            "ours_bps": n_beats / _median(ours), "ref_bps": n_beats / _median(refs),
            "spread": max(_spread(ours), _spread(refs)), "n_beats": n_beats}


def compare_option(case: Case, data: DataBundle, device: torch.device, plan: Plan, **options: object) -> dict:
    """Our loop with `options` of the train section (e.g. precision="bf16", compile=True) against the same loop
    without, alternating runs of `plan.option_epochs` epochs on the same weights: the steady epochs
    (all but the first) give the ratio; the first epoch (compilation, warm-up) is reported apart."""
    def run(cfg: RunConfig) -> list[float]:
        result = train(cfg, data, device, progress=False, model=copy.deepcopy(case.model).to(device))
        return [h["train_seconds"] for h in result.history]

    base_d = set_dotted(case.cfg.to_dict(), "train.epochs", plan.option_epochs)
    base = from_dict(RunConfig, base_d)
    with_option = from_dict(RunConfig, set_dotted(base_d, "train", options))
    plain, opt = [], []
    for _ in range(plan.option_rounds):
        plain.append(run(base))
        opt.append(run(with_option))
    steady_plain = _median([t for r in plain for t in r[1:]])
    steady_opt = _median([t for r in opt for t in r[1:]])
    return {"plain_s": steady_plain, "option_s": steady_opt, "ratio": steady_plain / steady_opt,
            "first_plain_s": _median([r[0] for r in plain]), "first_option_s": _median([r[0] for r in opt])}


def count_step_flops(case: Case, plan: Plan, device: torch.device, nc: int = 1) -> tuple[float, float]:
    """FLOPs of one training step: ours (two one-epoch runs of `train`, one and two batches, same
    eval sets: their difference is exactly one step; the distillation terms' one-off set-up before
    `train` is not counted) and the reference's (one batch of its epoch)."""
    from torch.utils.flop_counter import FlopCounterMode
    total = []
    for n in (1, 2):
        data = synthetic_bundle(n * BATCH, 128, nc)
        fc = FlopCounterMode(display=False)
        case.ours(data, device, around_train=fc)
        total.append(fc.get_total_flops())
    data = synthetic_bundle(BATCH, 128, nc)
    ref = case.reference(data, device)
    with FlopCounterMode(display=False) as fc:
        ref.train_epoch(max_batches=1)
    return float(total[1] - total[0]), float(fc.get_total_flops())


def matmul_flops(plan: Plan, device: torch.device) -> float:
    """Dense float32 matmul FLOP/s (n x n @ n x n), median over calls after one warm-up."""
    n = plan.matmul_n
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    times: list[float] = []
    t0 = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - t0 < plan.matmul_seconds:
        times.append(timed(lambda: a @ b, device))
    return 2 * n ** 3 / _median(times)


def inference(G, x: torch.Tensor, plan: Plan, device: torch.device) -> tuple[float, float]:
    """(beats/s of `scores` at batch plan.infer_batch, median single-beat latency in seconds)."""
    x = x.to(device)
    scores(G, x[: plan.infer_batch], plan.infer_batch)
    batch = [timed(lambda: scores(G, x, plan.infer_batch), device) for _ in range(plan.infer_repeats)]
    one = x[:1]
    scores(G, one)
    lat = [timed(lambda: scores(G, one), device) for _ in range(plan.latency_calls)]
    return len(x) / _median(batch), _median(lat)


def data_path(data: DataBundle, case: Case, plan: Plan, device: torch.device) -> tuple[float, float]:
    """Seconds per epoch of the data path alone: ours (the loop's permutation + index of the resident
    tensor, reproduced here) and the reference's DataLoader."""
    train_x = data.train.to(device)
    gen = torch.Generator().manual_seed(0)
    n_batches = len(train_x) // BATCH

    def ours_epoch():
        order = torch.randperm(len(train_x), generator=gen)[: n_batches * BATCH]
        batches = order.view(n_batches, BATCH).to(device)
        for b in range(n_batches):
            x = train_x[batches[b]]
        return x

    ref = case.reference(data, device)
    ours_epoch()
    ref.data_epoch()
    ours = [timed(ours_epoch, device) for _ in range(plan.data_repeats)]
    refs = [ref.data_epoch() for _ in range(plan.data_repeats)]
    return _median(ours), _median(refs)


def tracking_overhead(plan: Plan, data: DataBundle, device: torch.device, tracking_uri: str | None = None) -> dict:
    """Per-epoch wall time with MLflow (execute; a temporary SQLite store unless `tracking_uri`)
    and without (train). Runs go to experiment ``bench``; artifacts to a temporary folder."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from ablation.run import execute

    cfg = teacher_config(plan, device.type, epochs=plan.tracking_epochs)
    old_uri = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="ablation-bench-") as tmp:
        mlflow.set_tracking_uri(tracking_uri or f"sqlite:///{tmp}/mlflow.db")
        try:
            name = f"bench-{os.getpid()}-{time.time_ns()}"  # a fresh experiment, artifacts in `tmp`
            exp = MlflowClient().create_experiment(name, artifact_location=Path(tmp, "artifacts").as_uri())
            logged, plain, fixed = [], [], []
            row = None
            t_start = time.perf_counter()
            while len(fixed) < plan.max_tracking_pairs and (
                    len(fixed) < plan.tracking_pairs or time.perf_counter() - t_start < plan.seconds_per_item):
                stamps: list[float] = []
                stamp = lambda e, r: stamps.append(time.perf_counter())  # noqa: E731
                torch.manual_seed(0)
                train(cfg, data, device, progress=False, model=BeatGAN.build(cfg.model, data.train.shape[1]),
                      on_epoch=stamp)
                plain += list(np.diff(stamps))
                stamps = []
                torch.manual_seed(0)
                t0 = time.perf_counter()
                out = execute(cfg, data=data, device=device, experiment=name, progress=False,
                              skip_finished=False, on_epoch=stamp)
                total = time.perf_counter() - t0
                logged += list(np.diff(stamps))
                fixed.append(total - out.result.seconds)
                row = out.result.history[-1]
            with mlflow.start_run(experiment_id=exp):
                mlflow.log_metrics(row, step=0)
                calls = [timed(lambda i=i: mlflow.log_metrics(row, step=i + 1), device) for i in range(plan.log_calls)]
        finally:
            mlflow.set_tracking_uri(old_uri)
    return {"logged_s": _median(logged), "plain_s": _median(plain), "log_call_s": _median(calls),
            "fixed_s": _median(fixed), "spread": max(_spread(logged), _spread(plain)),
            "n_epochs": len(logged), "n_metrics": len(row)}


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
def _numerics_child(plan: Plan, native: bool) -> dict:
    """Run `child_epochs` in a fresh process on the pinned or the native path; its epoch times."""
    env = {**os.environ, "ABLATION_NUMERICS": "native" if native else "pinned"}
    for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR"):
        env.pop(k, None)  # the child's own path decides: pinned sets them, native leaves them free
    args = [sys.executable, str(Path(__file__).resolve()), "--numerics-child",
            json.dumps(dataclasses.asdict(plan)), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def child_epochs(plan: Plan) -> dict:
    """In the child: one warm-up and `option_epochs` timed teacher epochs from the same weights."""
    from ablation import numerics
    data = synthetic_bundle(plan.batches * BATCH, plan.eval_beats)
    case = make_cases(plan, "cpu")[0]
    case.ours(data, torch.device("cpu"))
    seconds = [case.ours(data, torch.device("cpu"))[0] for _ in range(max(plan.option_epochs, 1))]
    return {"seconds": seconds, "mode": numerics.mode(), "aten": torch.backends.cpu.get_cpu_capability(),
            "onednn_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", "free")}


def numerics_row(plan: Plan) -> dict:
    """The pinned path's teacher-step rate against the native one's, paired by round."""
    ratios, pinned_s, native_s, seen = [], [], [], {}
    for r in range(max(plan.option_rounds, 1)):
        order = (False, True) if r % 2 == 0 else (True, False)
        times = {}
        for native in order:
            got = _numerics_child(plan, native)
            times[native], seen[native] = _median(got["seconds"]), got
        pinned_s.append(times[False])
        native_s.append(times[True])
        ratios.append(times[False] / times[True])
    n_beats = plan.batches * BATCH
    ratio = _median(ratios)
    kernels = lambda g: f"{g['mode']}: ATen {g['aten']}, oneDNN cap {g['onednn_cap']}"  # noqa: E731
    return _row("numerics", f"teacher step (ndf {plan.teacher_ndf}), pinned path vs native kernels",
                n_beats / _median(pinned_s), n_beats / _median(native_s), "beats/s", 1 / ratio,
                f"pinned takes {ratio:.2f}x the native time",
                note=f"median of {len(ratios)} rounds of {max(plan.option_epochs, 1)} epochs per side, "
                     f"each side in its own process; {kernels(seen[False])}; {kernels(seen[True])}")


def _row(section, item, ours, reference=np.nan, unit="", ratio=np.nan, result="", target="", met="", note=""):
    return dict(zip(COLUMNS, (section, item, ours, reference, unit, ratio, result, target, met, note)))


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def run_bench(device: str = "cpu", seconds_per_item: float | None = None, quick: bool = False,
              plan: Plan | None = None, log: Callable[[str], None] | None = None,
              tracking_uri: str | None = None) -> pd.DataFrame:
    """Run every measurement and return the table (columns `COLUMNS`). `plan` overrides the sizes;
    `quick` gives tiny sizes (every row, figures not meaningful); `log` receives progress lines;
    `tracking_uri` is the MLflow store of the tracking rows (default: a temporary SQLite file)."""
    plan = plan or (Plan.quick() if quick else Plan())
    if seconds_per_item is not None:
        plan = dataclasses.replace(plan, seconds_per_item=seconds_per_item)
    say = log or (lambda s: None)
    dev = pick_device(device)
    nc = 1
    data = synthetic_bundle(plan.batches * BATCH, plan.eval_beats, nc)
    cases = make_cases(plan, dev.type, nc)
    rows = []

    # -- training throughput ---------------------------------------------------------------------
    timings = {}
    for case in cases:
        say(f"training: {case.name}")
        r = timings[case.name] = compare_training(case, data, dev, plan)
        target = 3.0 if case.teacher is not None else 1.2
        note = (f"median of {r['rounds']} paired epochs of {r['n_beats']} beats; "
                f"IQR/median {r['spread']:.0%}")
        if case.teacher is not None:
            note += (f"; ours builds its distillation terms once per run before training (teacher passes "
                     f"on the real beats, cached): {r['setup_s']:.2f} s for these {len(data.train)} beats, "
                     f"not in the epoch time")
        rows.append(_row("training", case.name, r["ours_bps"], r["ref_bps"], "beats/s", r["ratio"],
                         f"{r['ratio']:.2f}x", f">= {target:g}x", _met(r["ratio"] >= target), note))

    # -- speed options (CUDA above all; on a CPU without bf16 units autocast costs time) -----------
    n_beats = (len(data.train) // BATCH) * BATCH
    for label, option, more in (("bf16 autocast vs fp32", {"precision": "bf16"},
                                 "; whether bf16 keeps the AUC: studies/precision.yaml"),
                                ("torch.compile vs eager", {"compile": True}, "")):
        say(f"options: teacher step, {label}")
        r = compare_option(cases[0], data, dev, plan, **option)
        rows.append(_row("options", f"teacher step, {label}", n_beats / r["option_s"], n_beats / r["plain_s"],
                         "beats/s", r["ratio"], f"{r['ratio']:.2f}x",
                         note=f"steady epochs of {n_beats} beats, {plan.option_rounds} alternating runs of "
                              f"{plan.option_epochs} epochs; first epoch {r['first_option_s']:.1f} s with the "
                              f"option vs {r['first_plain_s']:.1f} s without (compilation, warm-up){more}"))

    # -- tracking -----------------------------------------------------------------------------------
    say("tracking: execute (MLflow) vs train")
    tr = tracking_overhead(plan, data, dev, tracking_uri)
    overhead = tr["logged_s"] / tr["plain_s"] - 1
    rows.append(_row("tracking", "epoch with MLflow logging vs without", tr["logged_s"], tr["plain_s"], "s/epoch",
                     tr["logged_s"] / tr["plain_s"], f"{overhead:+.1%}", "<= +2 %", _met(overhead <= 0.02),
                     f"teacher, {plan.batches} batches + validation per epoch, median of {tr['n_epochs']} epochs; "
                     f"IQR/median {tr['spread']:.0%}"))
    direct = tr["log_call_s"] / tr["plain_s"]
    rows.append(_row("tracking", "log_metrics call per epoch, alone", tr["log_call_s"] * 1e3, np.nan, "ms/epoch",
                     np.nan, f"{direct:+.2%} of an epoch", "<= +2 %", _met(direct <= 0.02),
                     f"{tr['n_metrics']} metrics, SQLite store, median of {plan.log_calls} calls"))
    rows.append(_row("tracking", "fixed cost per run (start, params, checkpoint, scores)", tr["fixed_s"], np.nan, "s",
                     note="execute wall time minus train wall time; once per run"))

    # -- inference -----------------------------------------------------------------------------------
    x_inf = synthetic_bundle(max(plan.infer_beats_student, plan.infer_beats_teacher), 8, nc).train
    infer = {}
    for label, case, n in (("teacher", cases[0], plan.infer_beats_teacher),
                           ("student", cases[1], plan.infer_beats_student)):
        say(f"inference: {label}")
        G = copy.deepcopy(case.model.G).to(dev)
        infer[label] = inference(G, x_inf[:n], plan, dev)
        bps, lat = infer[label]
        w = case.cfg.model.ndf
        target, met = ("", "")
        if label == "student":
            target, met = ">= 20000 beats/s", _met(bps >= 20000)
        rows.append(_row("inference", f"{label} score, batch {plan.infer_batch} (ndf {w})", bps, np.nan, "beats/s",
                         result=f"{bps:,.0f} beats/s", target=target, met=met,
                         note=f"{n} beats, median of {plan.infer_repeats}"))
        rows.append(_row("inference", f"{label} score, single beat (ndf {w})", lat * 1e3, 2.6, "ms",
                         lat * 1e3 / 2.6, f"{lat * 1e3:.2f} ms", "", "",
                         f"reference column: the paper's 2.6 ms/beat; median of {plan.latency_calls} calls"))

    # -- utilisation --------------------------------------------------------------------------------
    say("utilisation: matmul and FLOP counts")
    peak = matmul_flops(plan, dev)
    rows.append(_row("utilisation", f"dense matmul {plan.matmul_n}x{plan.matmul_n} float32", peak / 1e9, np.nan,
                     "GFLOP/s", result=f"{peak / 1e9:.1f} GFLOP/s", note="the machine's measured dense rate"))
    for case in cases:
        f_ours, f_ref = count_step_flops(case, plan, dev, nc)
        r = timings[case.name]
        steps = r["n_beats"] / BATCH
        a_ours, a_ref = f_ours / (r["ours_s"] / steps), f_ref / (r["ref_s"] / steps)
        rows.append(_row("utilisation", case.name, 100 * a_ours / peak, 100 * a_ref / peak, "% of matmul",
                         a_ours / a_ref, f"{a_ours / 1e9:.1f} GFLOP/s = {100 * a_ours / peak:.0f} %",
                         note=f"GFLOP/step ours {f_ours / 1e9:.2f}, reference {f_ref / 1e9:.2f}"))

    # -- data loading ------------------------------------------------------------------------------
    say("data: the data path alone")
    d_ours, d_ref = data_path(data, cases[0], plan, dev)
    epoch = timings[cases[0].name]
    rows.append(_row("data", "data path per epoch (outside compute)", d_ours * 1e3, d_ref * 1e3, "ms/epoch",
                     d_ours / d_ref, f"{d_ours / epoch['ours_s']:.2%} of our teacher epoch "
                     f"(reference {d_ref / epoch['ref_s']:.2%} of its)",
                     note=f"{plan.batches} batches of {BATCH}, median of {plan.data_repeats} epochs; ratio < 1: ours faster"))

    # -- numerics: the pinned path against the CPU's own kernels ------------------------------------
    if dev.type == "cpu":
        say("numerics: teacher step, pinned AVX2 path vs native kernels (child processes)")
        rows.append(numerics_row(plan))
    return pd.DataFrame(rows, columns=COLUMNS)


def machine_header(device: str = "cpu") -> str:
    """CPU model, cores, torch version, threads, device, load average."""
    from ablation import numerics
    model = f"{numerics.cpu_model()} ({numerics.isa_flags()}; kernels {numerics.mode()})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    dev = pick_device(device)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    loads = os.getloadavg() if hasattr(os, "getloadavg") else None
    load = " / ".join(f"{v:.2f}" for v in loads) if loads else "n/a"
    text = (f"machine: {model}, {cores} usable cores (of {os.cpu_count()}); torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads; device {dev} ({dev_name}); "
            f"python {platform.python_version()}; load average (1/5/15 min) {load} before the run")
    if loads and dev.type == "cpu" and loads[0] > cores - 0.5:
        text += (f"\nWARNING: the machine is busy (1-min load {loads[0]:.1f} on {cores} cores): absolute rates are "
                 f"depressed and noisy; the ours/reference ratios are paired and hold up better")
    return text


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def format_table(df: pd.DataFrame, header: str = "") -> str:
    """The benchmark table as text: header lines, then one block per section."""
    from tabulate import tabulate
    shown = df.copy()
    for c in ("ours", "reference", "ratio"):
        shown[c] = shown[c].map(_fmt)
    body = tabulate(shown[["section", "item", "ours", "reference", "unit", "ratio", "result", "target", "met"]],
                    headers=["", "item", "ours", "reference", "unit", "ours/ref", "result", "target", "met"],
                    tablefmt="simple", showindex=False, disable_numparse=True)
    notes = "\n".join(f"  [{i}] {r.item}: {r.note}" for i, r in enumerate(df.itertuples()) if r.note)
    return "\n".join(s for s in (header, "", body, "", "notes:", notes) if s is not None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--seconds-per-item", type=float, default=None,
                   help=f"time budget per training comparison (default {Plan.seconds_per_item:g})")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: usable cores)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: every row, numbers not meaningful")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.add_argument("--numerics-child", default=None, help=argparse.SUPPRESS)  # a plan, as JSON: see numerics_row
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                           else os.cpu_count()))
    if args.numerics_child:
        print(json.dumps(child_epochs(Plan(**json.loads(args.numerics_child)))))
        return 0
    header_before = machine_header(args.device)
    t0 = time.perf_counter()
    df = run_bench(args.device, args.seconds_per_item, args.quick,
                   log=lambda s: print(f"  ... {s}", file=sys.stderr, flush=True))
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    header = (f"{header_before}\nbenchmark wall time {time.perf_counter() - t0:.0f} s; load average at the end {load}"
              + ("\nQUICK MODE: tiny sizes, the figures are not meaningful" if args.quick else ""))
    print(format_table(df, header))
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
