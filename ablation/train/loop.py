"""One training loop for teachers and students (BeatGAN, Zhou et al. IJCAI 2019).

Each iteration updates D, then G:

    D:  BCE(D(x), r) + BCE(D(G(x)), 0)                       [+ distillation terms of the D step]
    G:  MSE(G(x), x) + w_adv * MSE(featD(G(x)), featD(x))   [+ distillation terms of the G step]

r is 1 (BeatGAN) or ``d_real_label`` (one-sided label smoothing). D is re-initialised when its
loss falls below ``d_reinit_below``. Data stay on the device as one tensor and batches are taken
by index; loss terms are summed on the device and read once per epoch. Validation runs in eval
mode after every epoch (``train.val_per_epoch`` times per epoch when set); the best checkpoint by
validation AUC is kept and the test set is scored once, with its weights; ``train.patience`` ends
training after the first epoch that ends with that many checks in a row without a new best. With ``train.ema`` > 0
the evaluated generator is an exponential moving average of G's weights with BN statistics
recomputed for it (see `Averaged`), which damps the epoch-to-epoch swing of a GAN-trained model.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ablation.config import RunConfig
from ablation.data.augment import warp_fraction
from ablation.data.dataset import DataBundle
from ablation.models.beatgan import BeatGAN, init_weights
from ablation.train.evaluate import metrics, scores


class Diverged(RuntimeError):
    """A loss became NaN or infinite."""


class Terms(Protocol):
    """Distillation plugged into the loop (see `ablation.distill.distiller.Distiller`)."""

    def g_terms(self, x: torch.Tensor, fake: torch.Tensor, latent: torch.Tensor,
                taps: dict[str, torch.Tensor], idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Terms added to G's loss. taps: ``real:enc.*``, ``real:dec.*`` (student G on x),
        ``fake:disc.*`` (student D on G(x), differentiable into G), ``real:disc.*`` (no grad)."""

    def d_terms(self, x: torch.Tensor, fake: torch.Tensor, taps: dict[str, torch.Tensor],
                idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Terms added to D's loss. taps: ``real:disc.*`` and ``fake:disc.*`` (fake detached from G);
        idx (B,): the batch's indices into the training set, -1 for a beat that was augmented."""

    def g_parameters(self) -> list[torch.nn.Parameter]: ...

    def d_parameters(self) -> list[torch.nn.Parameter]: ...


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


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; ValueError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ValueError(f"device {name!r} is not one of: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
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
          progress: bool = True, model: BeatGAN | None = None) -> Result:
    """Train BeatGAN under `cfg` (plus distillation `terms`) and return the best-validation epoch."""
    tc = cfg.train
    if tc.precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        print("warning: train.precision bf16 on a CPU without bf16 units (no avx512_bf16 / amx_bf16): "
              "emulated, many times slower than fp32; it pays on CUDA and on AVX512-BF16 CPUs", file=sys.stderr)
    gen = seed_everything(tc.seed)
    model = (model or BeatGAN.build(cfg.model, cfg.data.nc)).to(device)
    G, D = model.G, model.D
    g_params = list(G.parameters()) + (terms.g_parameters() if terms else [])
    d_params = list(D.parameters()) + (terms.d_parameters() if terms else [])
    # fused: one kernel for all parameters (the default CPU Adam loops over them, ~10x slower)
    opt_g = torch.optim.Adam(g_params, lr=tc.lr, betas=(tc.beta1, 0.999), fused=True)
    lr_d = tc.lr if tc.lr_d is None else tc.lr_d
    opt_d = torch.optim.Adam(d_params, lr=lr_d, betas=(tc.beta1, 0.999), fused=True)
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=tc.epochs, eta_min=lr * 0.01)
              for o, lr in ((opt_g, tc.lr), (opt_d, lr_d))] if tc.lr_schedule == "cosine" else []
    train_x = data.train.to(device)
    val_x = data.val.x.to(device)
    test_x = data.test.x.to(device) if data.test is not None else None
    n_batches = len(train_x) // tc.batch_size  # drop the last partial batch, as BeatGAN does
    if n_batches == 0:
        raise ValueError(f"train set has {len(train_x)} beats, fewer than one batch of {tc.batch_size}")
    averaged = Averaged(G, tc.ema) if tc.ema > 0 else None
    G_eval = averaged.model if averaged else G
    # optional speed-ups (CUDA above all): bf16 autocast of the training forwards, torch.compile
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")  # noqa: E731
    G_run, D_run = (torch.compile(G), torch.compile(D)) if tc.compile else (G, D)
    check_every = 1 if device.type == "cpu" else 16  # D re-init check without a sync every batch
    real_target = torch.full((tc.batch_size,), tc.d_real_label, device=device)  # 1, or smoothed
    zeros = torch.zeros(tc.batch_size, device=device)

    history: list[dict[str, float]] = []
    best = {"auc": -1.0}
    stale = 0  # validation checks since the last new best (train.patience)
    checks = {round(n_batches * (j + 1) / tc.val_per_epoch) for j in range(tc.val_per_epoch)}  # batches done

    def validate(epoch: int, done: int, order: torch.Tensor) -> dict[str, float]:
        """Validate G_eval after `done` batches of `epoch` (order: the epoch's beat indices, the
        first of which give an averaged G its BN statistics), keeping the best checkpoint so far."""
        nonlocal best, stale
        if averaged:
            averaged.refresh_bn(train_x[order[: averaged.bn_beats]], tc.batch_size)
        val = metrics(data.val.y, scores(G_eval, val_x, tc.eval_batch_size))
        stale += 1
        if val["auc"] > best["auc"]:
            stale = 0
            best = {"auc": val["auc"], "epoch": epoch, "at": epoch + done / n_batches, "val": val,
                    "state": {"G": copy.deepcopy(G_eval.state_dict()), "D": copy.deepcopy(D.state_dict())}}
        return val
    t0 = time.perf_counter()
    epochs = tqdm(range(tc.epochs), desc=f"{cfg.role} epochs", disable=not progress, unit="ep")
    for epoch in epochs:
        G.train()
        D.train()
        sums: dict[str, torch.Tensor] = {}
        d_min = torch.full((), math.inf, device=device)
        reinits = 0
        within: list[float] = []  # val AUC of the checks before the epoch's end
        order = torch.randperm(len(train_x), generator=gen)[: n_batches * tc.batch_size]
        batches = order.view(n_batches, tc.batch_size).to(device)
        te = time.perf_counter()
        for b in tqdm(range(n_batches), desc=f"epoch {epoch}", disable=not (progress and sys.stderr.isatty()),
                      leave=False, unit="batch"):
            idx = batches[b]
            x, warped = warp_fraction(train_x[idx], tc.time_warp, gen)
            if warped is not None:  # the distiller's per-index teacher cache does not apply to these
                idx = torch.where(warped, -1, idx)
            g_taps: dict[str, torch.Tensor] = {}
            d_real: dict[str, torch.Tensor] = {}
            d_fake: dict[str, torch.Tensor] = {}
            with amp():
                fake, latent = G_run(x, g_taps)

                # --- D step -----------------------------------------------------------------
                logit_real, _ = D_run(x, d_real)
                logit_fake, _ = D_run(fake.detach(), d_fake)
                loss_d_adv = (F.binary_cross_entropy_with_logits(logit_real, real_target)
                              + F.binary_cross_entropy_with_logits(logit_fake, zeros))
                d_extra = terms.d_terms(x, fake.detach(), tap_dict(real=d_real, fake=d_fake), idx) if terms else {}
                loss_d = loss_d_adv + sum(d_extra.values())
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            # --- G step (D frozen: no weight gradients computed for it) ---------------------
            D.requires_grad_(False)
            g_fake: dict[str, torch.Tensor] = {}
            g_real: dict[str, torch.Tensor] = {}
            with amp():
                _, feat_fake = D_run(fake, g_fake)
                with torch.no_grad():
                    _, feat_real = D_run(x, g_real)
                loss_rec = F.mse_loss(fake, x)
                loss_adv = F.mse_loss(feat_fake, feat_real)
                g_extra = (terms.g_terms(x, fake, latent, tap_dict(real={**g_taps, **g_real}, fake=g_fake), idx)
                           if terms else {})
                loss_g = loss_rec + tc.w_adv * loss_adv + sum(g_extra.values())
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if averaged:
                averaged.update()
            D.requires_grad_(True)

            step = {"loss_d": loss_d_adv, "loss_g_rec": loss_rec, "loss_g_adv": loss_adv,
                    **{f"loss_{k}": v for k, v in {**d_extra, **g_extra}.items()}}
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            d_min = torch.minimum(d_min, loss_d_adv.detach())
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
        row["train_seconds"] = time.perf_counter() - te
        row["d_reinits"] = reinits
        val = validate(epoch, n_batches, batches.flatten())
        if within:
            row["val_auc_max_in_epoch"] = max(within + [val["auc"]])
        row.update({f"val_{k}": v for k, v in val.items() if k in ("auc", "ap", "f1")})
        if G_eval is not G:  # the live weights, for comparison with their average
            row["val_auc_live"] = metrics(data.val.y, scores(G, val_x, tc.eval_batch_size))["auc"]
        if tc.test_every_epoch and test_x is not None:  # diagnostic curve only; selection uses validation
            tm = metrics(data.test.y, scores(G_eval, test_x, tc.eval_batch_size))
            row.update({"test_auc_curve": tm["auc"], "test_ap_curve": tm["ap"]})
        for s in scheds:
            s.step()
        row["best_val_auc"] = best["auc"]
        row["best_val_at"] = best["at"]  # epochs trained when the best checkpoint so far was taken
        history.append(row)
        epochs.set_postfix(val_auc=f"{val['auc']:.4f}", best=f"{best['auc']:.4f}@{best['epoch']}")
        if on_epoch:
            on_epoch(epoch, row)
        if tc.max_minutes is not None and time.perf_counter() - t0 > 60 * tc.max_minutes:
            break
        if tc.patience is not None and stale >= tc.patience:
            break

    G.load_state_dict(best["state"]["G"])
    D.load_state_dict(best["state"]["D"])
    test_scores = scores(G, test_x, tc.eval_batch_size) if test_x is not None else np.zeros(0)
    test = metrics(data.test.y, test_scores, data.test.cls) if test_x is not None else {}
    return Result(best_epoch=best["epoch"], best_at=best["at"], val=best["val"], test=test,
                  test_scores=test_scores, history=history, seconds=time.perf_counter() - t0, state=best["state"])


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


def tap_dict(**by_input: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Merge tap dicts under keys ``<input>:<tap>``, e.g. ``fake:disc.3.pre``."""
    return {f"{inp}:{k}": v for inp, taps in by_input.items() for k, v in taps.items()}
