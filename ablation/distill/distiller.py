"""The distillation terms of one student run, plugged into `ablation.train.loop.train`.

Per training step the teacher runs only the passes the configured terms need, each network once
per input however many positions are tapped (taps come out of one forward pass), under no_grad:

    G step: teacher G on the real beats (enc/dec taps, scores, recon, latent) and teacher D on
            the student's reconstruction (``disc`` taps on ``fake``)
    D step: teacher D on the real beats (``disc`` taps on ``real``, the ``disc`` KD kind) and on
            the student's reconstruction (``disc`` KD kind)

Passes on the real training beats are computed once and cached when the teacher's BN is in eval
mode (they never change); passes on the student's reconstruction run every step.

The teacher is frozen. Its BatchNorm mode is explicit: ``eval`` (running statistics) or ``train``
(batch statistics, as Heo et al. found better; its running buffers never change).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ablation.config import DistillConfig, FeatureConfig
from ablation.distill.connectors import make_connector
from ablation.distill.distances import DISTANCES, Distance, build_distance
from ablation.distill.kd import KD_KINDS, Outputs
from ablation.distill.positions import Position
from ablation.models.beatgan import BeatGAN, anomaly_score, bn_before

# The student's `Outputs` fields a KD kind may read (its ``student_reads``), per step, built from
# the step's beats x, the student's reconstruction, its latent code (G step only) and its taps.
STUDENT_OUTPUTS: dict[str, dict[str, Callable[..., Tensor]]] = {
    "G": {"score": lambda x, fake, latent, taps: anomaly_score(x, fake),
          "recon": lambda x, fake, latent, taps: fake,
          "latent": lambda x, fake, latent, taps: latent.flatten(1)},
    "D": {"logit_real": lambda x, fake, latent, taps: taps["real:disc.5.pre"].flatten(),
          "logit_fake": lambda x, fake, latent, taps: taps["fake:disc.5.pre"].flatten()},
}
PREPARE_BEATS = 4096  # teacher beats used by distances that fit something first (ft, partial_l2 w/o BN)
CACHE_BYTES = 2 * 1024 ** 3  # cap on the teacher outputs cached for the real training beats


def prepare_sample(n: int, k: int, seed: int) -> Tensor:
    """Sorted indices of a seeded random sample of min(k, n) of n training beats: what distances
    fit on before training (a subset of the training set may be sorted by record)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:k].sort().values


def freeze(teacher: BeatGAN, bn_mode: str) -> None:
    """No gradients, fixed BN mode; in ``train`` mode BN normalises with batch statistics and,
    with running-statistics tracking off, never touches its buffers."""
    for net in (teacher.G, teacher.D):
        net.requires_grad_(False)
        net.eval()
        if bn_mode == "train":
            for m in net.modules():
                if isinstance(m, nn.BatchNorm1d):
                    m.train()
                    m.track_running_stats = False


class FeatureTerm(nn.Module):
    """connector(s) on the student side + a registered distance, for one configured position."""

    def __init__(self, cfg: FeatureConfig, index: int, s_shapes: dict, t_shapes: dict, teacher: BeatGAN):
        super().__init__()
        self.cfg = cfg
        self.positions = [Position.parse(p, cfg.input) for p in (cfg.position, cfg.pair) if p is not None]
        if cfg.target == "self_real" and not (self.positions[0].net == "disc" and cfg.input == "fake"):
            raise ValueError(f"features[{index}]: target self_real compares the student D on its reconstruction "
                             f"with the student D on the real beat; it needs a disc position with input: fake")
        if len({p.net for p in self.positions}) > 1:
            raise ValueError(f"features[{index}]: position and pair must be in the same network")
        for whose, shapes in (("student", s_shapes), ("teacher", t_shapes if cfg.target == "teacher" else s_shapes)):
            missing = [p.tap for p in self.positions if p.tap not in shapes]
            if missing:
                raise ValueError(f"features[{index}]: position {missing[0]!r} is not a tap of the {whose}'s model")
        self.step = self.positions[0].step
        cls = DISTANCES[cfg.distance]
        s_ch = [s_shapes[p.tap][1] for p in self.positions]
        t_src = s_shapes if cfg.target == "self_real" else t_shapes
        t_ch = [t_src[p.tap][1] for p in self.positions]
        self.connectors = nn.ModuleList(
            make_connector(s, t, force=cfg.connector) if cls.needs_matched_channels or cfg.connector else nn.Identity()
            for s, t in zip(s_ch, t_ch))
        stack = {"enc": teacher.G.encoder, "dec": teacher.G.decoder, "disc": teacher.D.net}[self.positions[0].net]
        bn = bn_before(stack, self.positions[0].tap) if cfg.target == "teacher" else None
        connected = t_ch if (cls.needs_matched_channels or cfg.connector) else s_ch
        one = lambda c: c[0] if len(c) == 1 else tuple(c)  # noqa: E731
        self.distance: Distance = build_distance(cfg.distance, one(connected), one(t_ch), teacher_bn=bn, **cfg.params)
        self.name = f"fd{index}_{cfg.distance}_{cfg.position}_{cfg.input}" + (f"_vs_{cfg.pair}" if cfg.pair else "")
        self.weight = cfg.weight

    def student(self, taps: dict[str, Tensor]):
        f = [c(taps[p.key]) for c, p in zip(self.connectors, self.positions)]
        return f[0] if len(f) == 1 else tuple(f)

    def target(self, s_taps: dict[str, Tensor], t_taps: dict[str, Tensor]):
        if self.cfg.target == "self_real":
            f = [s_taps[f"real:{p.tap}"] for p in self.positions]
        else:
            f = [t_taps[p.key] for p in self.positions]
        return f[0] if len(f) == 1 else tuple(f)

    @property
    def reads(self) -> dict[str, tuple[str, ...]]:
        """The teacher taps this term needs, by teacher pass (none when it targets the student itself)."""
        if self.cfg.target != "teacher":
            return {}
        p = self.positions[0]
        return {f"{'D' if p.net == 'disc' else 'G'}:{p.input}": tuple(q.key for q in self.positions)}

    def forward(self, s_taps: dict[str, Tensor], t_taps: dict[str, Tensor]) -> Tensor:
        return self.distance(self.student(s_taps), self.target(s_taps, t_taps))


class Distiller(nn.Module):
    """Builds the KD and feature terms of `cfg` and computes them in the loop's G and D steps."""

    def __init__(self, cfg: DistillConfig, teacher: BeatGAN, student: BeatGAN, train_x: Tensor, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.teacher = teacher
        s_shapes, t_shapes = _tap_shapes(student, train_x[:2]), _tap_shapes(teacher, train_x[:2])
        freeze(teacher, cfg.teacher_bn)
        self.features = nn.ModuleList(FeatureTerm(f, i, s_shapes, t_shapes, teacher) for i, f in enumerate(cfg.features))
        self.kd = KD_KINDS[cfg.kd.kind](cfg.kd.T, student.G.nz, teacher.G.nz)
        self.kd_name = f"kd_{cfg.kd.kind}"
        self.to(train_x.device)
        self._prepare(train_x[prepare_sample(len(train_x), PREPARE_BEATS, seed).to(train_x.device)])
        self.needs = {step: self._needs(step) for step in ("G", "D")}  # fixed per run, read every step
        self.cache = self._build_cache(train_x, t_shapes)
        self.scale: dict[str, Tensor] = {}  # per-term 1/|value at the first batch| when cfg.normalize

    def get_extra_state(self) -> dict[str, Tensor]:
        """The normalising scales fixed at the first batch: part of the state a resumed run restores."""
        return dict(self.scale)

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.scale = dict(state)

    # -- teacher passes, each network once per input, planned from what the terms read ---------
    def _terms_of(self, step: str) -> list:
        return [t for t in self.features if t.step == step] + ([self.kd] if self.kd.step == step else [])

    def _needs(self, step: str) -> set[str]:
        """Which teacher passes a step needs: subsets of {"G:real", "D:real", "D:fake"}."""
        return {npass for term in self._terms_of(step) for npass in term.reads}

    def _wanted(self, npass: str) -> set[str]:
        """The keys of a teacher pass that some term reads (taps as ``<input>:<tap>``, outputs as ``out:*``)."""
        return {k for step in ("G", "D") for term in self._terms_of(step) for k in term.reads.get(npass, ())}

    def _teacher_pass(self, npass: str, batch: Tensor) -> dict[str, Tensor]:
        """One teacher forward pass (``G:real``, ``D:real`` or ``D:fake``) under no_grad."""
        inp = npass.split(":")[1]
        taps: dict[str, Tensor] = {}
        with torch.no_grad():
            if npass.startswith("G"):
                recon, z = self.teacher.G(batch, taps)
                out = {"out:recon": recon, "out:latent": z.flatten(1), "out:score": anomaly_score(batch, recon)}
            else:
                logit, _ = self.teacher.D(batch.detach(), taps)
                out = {f"out:logit_{inp}": logit}
        return {**{f"{inp}:{k}": v for k, v in taps.items()}, **out}

    def _build_cache(self, train_x: Tensor, t_shapes: dict) -> dict[str, dict[str, Tensor]]:
        """Teacher outputs on the real training beats, which never change: computed once when the
        teacher's BN is in eval mode (each beat's output is then independent of its batch) and
        they fit in `CACHE_BYTES`. D-on-fake passes see a new input every step and are not cached."""
        if self.cfg.teacher_bn != "eval":
            return {}
        passes = {p for step in ("G", "D") for p in self.needs[step] if p.endswith(":real")}
        per_beat = {"out:recon": train_x[0].numel(), "out:latent": 0, "out:score": 1, "out:logit_real": 1}
        per_beat["out:latent"] = self.teacher.G.nz
        size = sum(len(train_x) * 4 * (per_beat.get(k) or math.prod(t_shapes[k.split(":")[1]][1:]))
                   for p in passes for k in self._wanted(p))
        if not passes or size > CACHE_BYTES:
            return {}
        cache = {}
        for npass in passes:
            wanted = self._wanted(npass)
            chunks = [{k: v for k, v in self._teacher_pass(npass, xb).items() if k in wanted}
                      for xb in train_x.split(1024)]
            cache[npass] = {k: torch.cat([c[k] for c in chunks]) for k in wanted}
        return cache

    def _teacher(self, step: str, x: Tensor, fake: Tensor, idx: Tensor | None) -> tuple[dict[str, Tensor], Outputs]:
        """The teacher's taps and outputs a step needs: from the cache (by beat index) or a live pass.
        A negative index marks a beat that is not a training beat as stored (time-warped): those
        beats get a live pass of their own (eval-mode BN: a beat's output does not depend on its batch)."""
        values: dict[str, Tensor] = {}
        for npass in self.needs[step]:
            inp = x if npass.endswith(":real") else fake
            if idx is None or npass not in self.cache:
                values.update(self._teacher_pass(npass, inp))
                continue
            cached = {k: v[idx.clamp_min(0)] for k, v in self.cache[npass].items()}
            new = idx < 0
            if new.any():
                live = self._teacher_pass(npass, inp[new])
                for k, v in cached.items():
                    v[new] = live[k]
            values.update(cached)
        out = Outputs(**{k[4:]: v for k, v in values.items() if k.startswith("out:")})
        return values, out

    def prepare_report(self) -> dict[str, float]:
        """What the distances fitted before training: ``<term>.<quantity>`` (e.g. the paraphraser's loss)."""
        return {f"{t.name}.{k}": v for t in self.features for k, v in getattr(t.distance, "fit_report", {}).items()}

    # -- the loop's interface --------------------------------------------------------------------
    def g_terms(self, x: Tensor, fake: Tensor, latent: Tensor, taps: dict[str, Tensor],
                idx: Tensor | None = None) -> dict[str, Tensor]:
        """G-step terms; `idx` (B,) are the batch's indices into the training set (enables the cache;
        -1 for a beat that was augmented)."""
        return self._terms("G", x, fake, latent, taps, idx)

    def d_terms(self, x: Tensor, fake: Tensor, taps: dict[str, Tensor], idx: Tensor | None = None) -> dict[str, Tensor]:
        """D-step terms; `idx` as in `g_terms`."""
        return self._terms("D", x, fake, None, taps, idx)

    def g_parameters(self) -> list[nn.Parameter]:
        return self._parameters_of("G")

    def d_parameters(self) -> list[nn.Parameter]:
        return self._parameters_of("D")

    # -- helpers ---------------------------------------------------------------------------------
    def _terms(self, step: str, x: Tensor, fake: Tensor, latent: Tensor | None, taps: dict[str, Tensor],
               idx: Tensor | None) -> dict[str, Tensor]:
        """A step's weighted terms; the KD kind gets the student outputs it declares (`STUDENT_OUTPUTS`)."""
        t_taps, t_out = self._teacher(step, x, fake, idx)
        raw = {t.name: (t.weight, t(taps, t_taps)) for t in self.features if t.step == step}
        if self.kd.reads and self.kd.step == step:
            build = STUDENT_OUTPUTS[step]
            s_out = Outputs(**{f: build[f](x, fake, latent, taps) for f in self.kd.student_reads})
            raw[self.kd_name] = (self.cfg.kd.weight, self.kd(s_out, t_out))
        return self._weighted(raw)

    def _parameters_of(self, step: str) -> list[nn.Parameter]:
        mods = [t for t in self.features if t.step == step] + ([self.kd] if self.kd.step == step else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def _weighted(self, raw: dict[str, tuple[float, Tensor]]) -> dict[str, Tensor]:
        """weight x term; with ``normalize``, weight x term / |the raw term at the first batch|
        (a constant), so that a weight means the same for every kind and distance."""
        if not self.cfg.normalize:
            return {k: w * v for k, (w, v) in raw.items()}
        for k, (_, v) in raw.items():
            if k not in self.scale:
                self.scale[k] = 1.0 / v.detach().abs().clamp_min(1e-12)
        return {k: w * v * self.scale[k] for k, (w, v) in raw.items()}

    @torch.no_grad()
    def _prepare(self, x: Tensor) -> None:
        """Let distances that fit on teacher features first (ft, partial_l2 without BN) do so, on
        the teacher's features of real training beats."""
        for term in self.features:
            if type(term.distance).prepare is Distance.prepare:
                continue
            batches = []
            for xb in x.split(256):
                g: dict[str, Tensor] = {}
                (self.teacher.D(xb, g) if term.positions[0].net == "disc" else self.teacher.G(xb, g))
                f = [g[p.tap] for p in term.positions]
                batches.append(f[0] if len(f) == 1 else tuple(f))
            term.distance.prepare(batches)


@torch.no_grad()
def _tap_shapes(model: BeatGAN, x: Tensor) -> dict[str, tuple[int, ...]]:
    """Shapes of every tap of `model`, from one eval-mode pass on a tiny batch (buffers untouched)."""
    modes = (model.G.training, model.D.training)
    model.G.eval()
    model.D.eval()
    taps: dict[str, Tensor] = {}
    model.G(x, taps)
    model.D(x, taps)
    model.G.train(modes[0])
    model.D.train(modes[1])
    return {k: tuple(v.shape) for k, v in taps.items()}

