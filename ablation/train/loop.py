"""One training loop for teachers and students (BeatGAN, Zhou et al. IJCAI 2019).

Each batch is one `ablation.train.step.Step` (D, then G, on the objective of
`ablation.train.objective` plus the distillation terms). D is re-initialised when its loss falls
below ``d_reinit_below``. Data stay on the device as one tensor and batches are taken by index;
loss terms are summed on the device and read once per epoch. Validation runs in eval mode after
every epoch (``train.val_per_epoch`` times per epoch when set) and `ablation.train.checkpoints`
keeps the best check (and ``train.snapshots`` of them); the test set is scored once, with the
best check's weights; ``train.patience`` ends training after the first epoch that ends with that
many checks in a row without a new best. With ``train.ema`` > 0
the evaluated generator is an exponential moving average of G's weights with BN statistics
recomputed for it (see `Averaged`), which damps the epoch-to-epoch swing of a GAN-trained model.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ablation.config import RunConfig, TrainConfig
from ablation.data.augment import warp_fraction
from ablation.data.dataset import DataBundle
from ablation.errors import BadInput, UserError
from ablation.models import family
from ablation.models.beatgan import BeatGAN, init_weights
from ablation.train.checkpoints import Checkpoints, Snapshot
from ablation.train.evaluate import metrics
from ablation.train.resume import Resume
from ablation.train.scores import score_sets
from ablation.train.step import Terms


class Diverged(UserError, RuntimeError):
    """A loss became NaN or infinite: an outcome of the config (its learning rates, weights), not a defect."""


@dataclass
class Result:
    best_epoch: int  # the epoch during which the best checkpoint was taken (0-based)
    best_at: float  # epochs trained at that checkpoint: best_epoch + 1 unless train.val_per_epoch > 1
    val: dict[str, float]
    test: dict[str, float]  # empty when the data had no test set (tuning)
    test_scores: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    state: dict = field(default_factory=dict)  # best epoch: {"G": state_dict, "D": state_dict}
    snapshots: list[Snapshot] = field(default_factory=list)  # train.snapshots best checks, best first
    resumed_at: int = 0  # epochs restored from a saved state (`ablation.train.resume`), 0 when none


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; `BadInput` otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise BadInput(f"device {name!r} is not one of: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic units (AVX512-BF16 or AMX): without them bf16 autocast
    is emulated, measured 25x slower than fp32 on an AVX2-only EPYC."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def train(cfg: RunConfig, data: DataBundle, device: torch.device, terms: Terms | None = None,
          on_epoch: Callable[[int, dict[str, float]], None] | None = None,
          progress: bool = True, model: BeatGAN | None = None, resume: Resume | None = None) -> Result:
    """Train a detector of ``cfg.model.family`` (BeatGAN by default) under `cfg` (plus distillation
    `terms`) and return the best-validation check. With `resume`, the state is saved after every
    epoch and a saved state of this run is continued from (its epochs replayed to `on_epoch`
    first): the result is the same, bit for bit, as that of a run never stopped."""
    tc = cfg.train
    if tc.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("warning: train.precision bf16 on a CPU without bf16 units (no avx512_bf16 / amx_bf16): "
              "emulated, many times slower than fp32; it pays on CUDA and on AVX512-BF16 CPUs", file=sys.stderr)
    gen = seed_everything(tc.seed)
    fam = family(cfg.model.family)
    model = (model or fam.build(cfg.model, cfg.data.nc)).to(device)
    G, D = model.G, model.D
    opt_g, opt_d, scheds = optimisers(tc, G, D, terms)
    train_x = data.train.to(device)
    data = dataclasses.replace(data, val=dataclasses.replace(data.val, x=data.val.x.to(device)))  # once, not per check
    n_batches = len(train_x) // tc.batch_size  # drop the last partial batch, as BeatGAN does
    if n_batches == 0:
        raise BadInput(f"train set has {len(train_x)} beats, fewer than one batch of {tc.batch_size}")
    averaged = Averaged(G, tc.ema) if tc.ema > 0 else None
    G_eval = averaged.model if averaged else G
    # optional speed-ups (CUDA above all): bf16 autocast of the training forwards, torch.compile
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")  # noqa: E731
    G_run, D_run = (torch.compile(G), torch.compile(D)) if tc.compile else (G, D)
    step = fam.step(G_run, D_run, D, opt_g, opt_d, terms, tc,
                torch.full((tc.batch_size,), tc.d_real_label, device=device),  # 1, or smoothed
                amp, averaged.update if averaged else None)
    check_every = 1 if device.type == "cpu" else 16  # D re-init check without a sync every batch
    kept = Checkpoints(tc.snapshots, tc.snapshot_gap)
    checks = {round(n_batches * (j + 1) / tc.val_per_epoch) for j in range(tc.val_per_epoch)}  # batches done

    def validate(epoch: int, done: int, order: torch.Tensor) -> dict[str, float]:
        """Validate G_eval after `done` batches of `epoch` (order: the epoch's beat indices, the
        first of which give an averaged G its BN statistics) and offer it to `kept`."""
        if averaged:
            averaged.refresh_bn(train_x[order[: averaged.bn_beats]], tc.batch_size)
        val = metrics(data.val.y, score_sets(G_eval, D, data, tc.score_feat_weight, tc.eval_batch_size)[0])
        kept.offer(val, epoch, epoch + done / n_batches, G_eval, D)
        return val

    parts = {"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d, **{f"sched_{i}": s for i, s in enumerate(scheds)},
             **({"terms": terms} if isinstance(terms, torch.nn.Module) else {}),
             **({"averaged": averaged.model} if averaged else {})}
    saved = resume.load(parts, kept, gen) if resume else None
    start, history, before = (saved.epoch, saved.history, saved.seconds) if saved else (0, [], 0.0)
    if on_epoch:  # the restored epochs first, as if trained now
        for epoch, row in enumerate(history):
            on_epoch(epoch, row)
    t0 = time.perf_counter() - before
    epochs = tqdm(range(start, tc.epochs), desc=f"{cfg.role} epochs", disable=not progress, unit="ep",
                  initial=start, total=tc.epochs)
    for epoch in epochs:
        G.train()
        D.train()
        sums: dict[str, torch.Tensor] = {}
        d_min = torch.full((), math.inf, device=device)
        reinits = 0
        within: list[float] = []  # val AUC of the checks before the epoch's end
        batches = (torch.randperm(len(train_x), generator=gen)[: n_batches * tc.batch_size]
                   .view(n_batches, tc.batch_size).to(device))
        te = time.perf_counter()
        for b in tqdm(range(n_batches), desc=f"epoch {epoch}", disable=not (progress and sys.stderr.isatty()),
                      leave=False, unit="batch"):
            idx = batches[b]
            x, warped = warp_fraction(train_x[idx], tc.time_warp, gen)
            if warped is not None:  # the distiller's per-index teacher cache does not apply to these
                idx = torch.where(warped, -1, idx)
            losses = step(x, idx)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            d_min = torch.minimum(d_min, losses["loss_d"])
            if (b + 1) % check_every == 0 and d_min.item() < tc.d_reinit_below:
                D.apply(init_weights)
                reinits += 1
                d_min.fill_(math.inf)
            if b + 1 in checks and b + 1 < n_batches:
                within.append(validate(epoch, b + 1, batches.flatten())["auc"])

        row = {k: float(v) / n_batches for k, v in sums.items()}  # the epoch's one host read
        bad = [k for k, v in row.items() if not math.isfinite(v)]
        if bad:
            raise Diverged(f"epoch {epoch}: non-finite {', '.join(bad)}")
        row.update(train_seconds=time.perf_counter() - te, d_reinits=reinits)
        val = validate(epoch, n_batches, batches.flatten())
        row.update(epoch_row(val, within, data, G, G_eval, D, tc))
        for s in scheds:
            s.step()
        row.update(best_val_auc=kept.best.auc, best_val_at=kept.best.at)  # the best checkpoint so far
        history.append(row)
        epochs.set_postfix(val_auc=f"{val['auc']:.4f}", best=f"{kept.best.auc:.4f}@{kept.best.epoch}")
        stop = (tc.max_minutes is not None and time.perf_counter() - t0 > 60 * tc.max_minutes) or \
            (tc.patience is not None and kept.stale >= tc.patience)
        if resume and not stop and epoch + 1 < tc.epochs:
            resume.save(epoch + 1, parts, kept, gen, history, time.perf_counter() - t0)
        if on_epoch:
            on_epoch(epoch, row)
        if stop:
            break
    result = finish(kept, G, D, data, tc, history, time.perf_counter() - t0)
    result.resumed_at = start
    return result


def optimisers(tc: TrainConfig, G: torch.nn.Module, D: torch.nn.Module, terms: Terms | None):
    """Adam for G (+ the terms' G-side parameters) and for D (+ theirs), and their cosine schedules."""
    g_params = list(G.parameters()) + (terms.g_parameters() if terms else [])
    d_params = list(D.parameters()) + (terms.d_parameters() if terms else [])
    # fused: one kernel for all parameters (the default CPU Adam loops over them, ~10x slower)
    opt_g = torch.optim.Adam(g_params, lr=tc.lr, betas=(tc.beta1, 0.999), fused=True)
    lr_d = tc.lr if tc.lr_d is None else tc.lr_d
    opt_d = torch.optim.Adam(d_params, lr=lr_d, betas=(tc.beta1, 0.999), fused=True)
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=tc.epochs, eta_min=lr * 0.01)
              for o, lr in ((opt_g, tc.lr), (opt_d, lr_d))] if tc.lr_schedule == "cosine" else []
    return opt_g, opt_d, scheds


def epoch_row(val: dict[str, float], within: list[float], data: DataBundle, G: torch.nn.Module,
              G_eval: torch.nn.Module, D: torch.nn.Module, tc: TrainConfig) -> dict[str, float]:
    """The epoch's validation metrics (and the diagnostic ones the config asks for)."""
    row = {f"val_{k}": v for k, v in val.items() if k in ("auc", "ap", "f1")}
    if within:
        row["val_auc_max_in_epoch"] = max(within + [val["auc"]])
    if G_eval is not G:  # the live weights, for comparison with their average
        row["val_auc_live"] = metrics(data.val.y, score_sets(G, D, data, tc.score_feat_weight,
                                                             tc.eval_batch_size)[0])["auc"]
    if tc.test_every_epoch and data.test is not None:  # diagnostic curve only; selection uses validation
        tm = metrics(data.test.y, score_sets(G_eval, D, data, tc.score_feat_weight, tc.eval_batch_size, True)[1])
        row.update({"test_auc_curve": tm["auc"], "test_ap_curve": tm["ap"]})
    return row


def finish(kept: Checkpoints, G: torch.nn.Module, D: torch.nn.Module, data: DataBundle, tc: TrainConfig,
           history: list[dict[str, float]], seconds: float) -> Result:
    """Load the best check into G and D and score the test set once, with its weights."""
    best = kept.best
    G.load_state_dict(best.state["G"])
    D.load_state_dict(best.state["D"])
    has_test = data.test is not None
    test_scores = score_sets(G, D, data, tc.score_feat_weight, tc.eval_batch_size, True)[1] if has_test \
        else np.zeros(0)
    test = metrics(data.test.y, test_scores, data.test.cls) if has_test else {}
    return Result(best_epoch=best.epoch, best_at=best.at, val=best.val, test=test, test_scores=test_scores,
                  history=history, seconds=seconds, state=best.state,
                  snapshots=kept.snapshots if tc.snapshots > 1 else [])


class Averaged:
    """An exponential moving average of G's parameters (Polyak averaging; Yazici et al., "The
    Unusual Effectiveness of Averaging in GAN Training", ICLR 2019): ``avg <- decay * avg +
    (1 - decay) * live`` after every G step. BatchNorm statistics are not averaged (they would not
    match the averaged weights): `refresh_bn` recomputes them on training beats before evaluation,
    as SWA does (Izmailov et al., UAI 2018).
    """

    def __init__(self, G: torch.nn.Module, decay: float, bn_beats: int = 4096):
        self.model = copy.deepcopy(G).requires_grad_(False)
        self.decay, self.bn_beats = decay, bn_beats
        self._avg = list(self.model.parameters())
        self._live = list(G.parameters())

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._avg, self._live, 1.0 - self.decay)

    def refresh_bn(self, x: torch.Tensor, batch_size: int) -> None:
        """Running statistics of every BN layer = plain averages over the beats x (n, nc, L), the
        caller's choice of at most `bn_beats`, in batches of the training batch size."""
        batches = list(x.split(batch_size))
        torch.optim.swa_utils.update_bn(batches, self.model)
