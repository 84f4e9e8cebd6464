"""Typed run configuration, loaded from YAML and validated before anything trains.

A run is described by one `RunConfig` (data protocol, model, training, distillation). Every field
is a dataclass field with a type; `Literal[...]` fields list their allowed values and `Range`
metadata bounds numbers. `from_dict` walks the nested dataclasses and raises `ConfigError` naming
the source file, the key path (``train.lr``) and what is allowed, so a typo never reaches training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ablation.errors import BadInput


class ConfigError(BadInput):
    """A configuration value is unknown, of the wrong type or out of range."""


MAX_THREADS = 256  # train.threads and --threads: beyond any machine's cores (libgomp fails far above)
_ALWAYS = object()  # marker: a field that is part of every run's identity


def Range(lo: float | None = None, hi: float | None = None, default: Any = dataclasses.MISSING,
          off: Any = _ALWAYS, neutral: bool = False):
    """A dataclass field whose numeric value must lie in [lo, hi] (see `Option` for off/neutral)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "off": off, "neutral": neutral})


def Option(default: Any, off: Any = _ALWAYS, neutral: bool = False):
    """A field's place in a run's identity (`run_identity`): ``neutral`` fields never change a
    result (device, compilation); a field with an ``off`` value leaves the identity while it holds
    that value, so adding an option keeps every stored run and trial found."""
    return field(default=default, metadata={"off": off, "neutral": neutral})


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """The data protocol (BeatGAN, Zhou et al. IJCAI 2019) and the split of this run."""

    split: Literal["beatgan", "interpatient"] = "beatgan"
    fold: int = Range(0, 4, default=0)
    nc: int = Range(1, 2, default=1)
    split_seed: int = 0
    rpeak_check: bool = True
    rpeak_detector: Literal["hamilton", "xqrs"] = "hamilton"
    train_subset: Optional[int] = Range(64, None, default=None)  # cap on training beats (CPU scale)
    val_subset: Optional[int] = Range(64, None, default=None)  # cap on validation beats per class group


@dataclass
class ModelConfig:
    """The detector family (`ablation.models.FAMILIES`: beatgan, anobeat) and its widths: ndf
    (discriminator/encoder), ngf (decoder), nz (latent size)."""

    family: str = Option("beatgan", off="beatgan")  # off at BeatGAN: every stored BeatGAN key unchanged
    ndf: int = Range(1, 512, default=32)
    ngf: int = Range(1, 512, default=32)
    nz: int = Range(1, 1024, default=50)


@dataclass
class TrainConfig:
    """BeatGAN's optimisation: Adam, betas (0.5, 0.999), batch 64, w_adv 1. The paper runs 100
    epochs at a constant lr of 1e-4; the default here is 20 epochs at 2e-4 with cosine decay (CPU budget)."""

    epochs: int = Range(1, 10_000, default=20)
    batch_size: int = Range(2, 65_536, default=64)
    lr: float = Range(1e-7, 1.0, default=2e-4)  # the paper: 1e-4, constant, 100 epochs
    beta1: float = Range(0.0, 0.999, default=0.5)
    w_adv: float = Range(0.0, None, default=1.0)
    w_latent: float = Range(0.0, None, default=1.0)  # anobeat: the encoder's latent adversarial term
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine decay to lr/100 over `epochs`
    lr_d: Optional[float] = Range(1e-7, 1.0, default=None, off=None)  # D's own lr (TTUR, Heusel et al. 2017)
    d_reinit_below: float = Range(0.0, None, default=5e-6)  # re-initialise D when its batch loss falls below
    d_real_label: float = Range(0.5, 1.0, default=1.0, off=1.0)  # D's real target (< 1: one-sided smoothing)
    seed: int = 0
    threads: int = Range(1, MAX_THREADS, default=1)  # intra-op CPU threads: their count orders reductions (ablation.numerics)
    device: str = Option("auto", neutral=True)
    eval_batch_size: int = Range(1, 1_000_000, default=2048, neutral=True)
    test_every_epoch: bool = Option(False, neutral=True)  # diagnostic curve only: never used for selection
    ema: float = Range(0.0, 0.99999, default=0.0, off=0.0)  # Polyak average of G evaluated and kept (0 = off)
    max_minutes: Optional[float] = Range(0.0, None, default=None, off=None)  # stop after the epoch past this
    precision: Literal["fp32", "bf16"] = Option("fp32", off="fp32")  # bf16 autocast of training forwards
    compile: bool = Option(False, neutral=True)  # torch.compile of G and D (same result)
    time_warp: float = Range(0.0, 1.0, default=0.0, off=0.0)  # share of each batch time-warped (BeatGAN's aug)
    val_per_epoch: int = Range(1, 1000, default=1, off=1)  # validation checks per epoch; the best is kept
    patience: Optional[int] = Range(1, None, default=None, off=None)  # stop after this many checks w/o a best
    score_feat_weight: Optional[float] = Range(0.0, None, default=None, off=None)  # score z_rec + w z_feat (D residual)
    snapshots: int = Range(1, 100, default=1, neutral=True)  # keep this many best checks (snapshot ensemble)
    snapshot_gap: float = Range(0.0, None, default=1.0, neutral=True)  # kept checks at least this many epochs apart


TEACHER_RECIPE = {"epochs": 16, "d_reinit_below": 1e-3, "val_per_epoch": 8, "patience": 24, "snapshots": 5}
"""The best teacher recipe measured (docs/teacher.md): 2e-4 cosine over 16 epochs, D re-initialised
when its loss falls below 1e-3, eight validation checks per epoch, training ended after three
epochs (24 checks) without a new best. The teacher of `make teacher` and of every study by default.
It also keeps its five best checks one epoch apart (a snapshot ensemble; neutral: not in the key)."""


def teacher_recipe() -> "TrainConfig":
    return TrainConfig(**TEACHER_RECIPE)


@dataclass
class KDConfig:
    """Output knowledge distillation (see `ablation.distill.kd`)."""

    kind: str = "none"
    T: float = Range(1e-3, 1e3, default=4.0)
    weight: float = Range(0.0, None, default=1.0)


@dataclass
class FeatureConfig:
    """One feature-distillation term: where to tap, what to compare it with, and how.

    ``position`` is ``<net>.<block>.<point>`` with net in {enc, dec, disc}, block 0-5 and point
    ``pre`` (before the activation: Heo et al.'s pre-ReLU position) or ``post``. ``pair`` is the
    second position of two-position distances (fsp). ``input`` is the beat fed to the tapped
    network for the student (``real`` or ``fake`` = the student's reconstruction); ``target`` says
    whose features are matched: the teacher's on the same kind of input, or the student's own
    network on the real beat (the earlier project's self-distillation set-up).
    """

    position: str = "disc.4.pre"
    pair: Optional[str] = None
    input: Literal["real", "fake"] = "real"
    target: Literal["teacher", "self_real"] = "teacher"
    distance: str = "at"
    weight: float = Range(0.0, None, default=1.0)
    connector: bool = False  # force a connector even when channel counts match
    params: dict = field(default_factory=dict)


@dataclass
class DistillConfig:
    """A student's teacher and its distillation terms."""

    teacher: ModelConfig = field(default_factory=ModelConfig)
    teacher_train: TrainConfig = field(default_factory=teacher_recipe)  # keys set here override the recipe
    teacher_train_subset: Optional[int] = Range(64, None, default=None)  # None: the full training set
    teacher_bn: Literal["eval", "train"] = "eval"
    kd: KDConfig = field(default_factory=KDConfig)
    features: list[FeatureConfig] = field(default_factory=list)
    normalize: bool = False  # each term = weight x term / |term at the first batch|
    teacher_seeds: Optional[list[int]] = Option(None, off=None)  # distil from these seeds' teachers' mean

    def has_terms(self) -> bool:
        """Whether any term reads a teacher (a student without one needs no teacher at all)."""
        return self.kd.kind != "none" or bool(self.features)


@dataclass
class RunConfig:
    """Everything that defines one training run."""

    role: Literal["teacher", "student"] = "teacher"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: Optional[DistillConfig] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """A stable hash of the run's identity (`run_identity`; key order does not matter)."""
        return config_hash(run_identity(self))

    def reads_teacher(self) -> bool:
        """Whether training this run reads a teacher: a student with a distillation term."""
        return self.role == "student" and self.distill is not None and self.distill.has_terms()

    def teacher_config(self) -> "RunConfig":
        """The RunConfig of this student's teacher: the same split and fold, the full validation
        set, ``distill.teacher_train_subset`` of the training set, the teacher's widths and training."""
        if self.distill is None:
            raise ConfigError("teacher_config() needs a student config with a `distill` section")
        data = dataclasses.replace(self.data, train_subset=self.distill.teacher_train_subset, val_subset=None)
        return RunConfig(role="teacher", data=data, model=self.distill.teacher, train=self.distill.teacher_train)

    def teacher_configs(self) -> list["RunConfig"]:
        """The teacher, or with ``distill.teacher_seeds`` the ensemble's members: one per seed."""
        one = self.teacher_config()
        seeds = self.distill.teacher_seeds
        return [one] if seeds is None else [dataclasses.replace(one, train=dataclasses.replace(one.train, seed=s))
                                           for s in seeds]


DISTILL_REVISION = 2
"""Part of every student's identity; raised when a fix changes what a student config trains
(2: ``normalize`` keeps the weights, score_kl's scale, ft's paraphraser to a plateau, the seeded
sample that distances fit on, the student's own initial weights). Teachers' identities are unchanged."""


def run_identity(cfg: RunConfig) -> dict:
    """What identifies a run's result, as a nested dict: the resolved config without its neutral
    fields, without the fields at their ``off`` value (see `Option`) and without fields nothing
    reads (`_distill_identity`), plus the numeric path (`ablation.numerics.mode`); a student's
    carries `DISTILL_REVISION`. `RunConfig.key` and the run key (with the data) both hash this."""
    from ablation import numerics
    d = _identity(cfg)
    d["numerics"] = numerics.mode()
    d["train"] = _family_fields(cfg.model, d["train"])
    if cfg.distill is not None:
        d["distill_revision"] = DISTILL_REVISION
        d["distill"] = _distill_identity(cfg.distill, d["distill"])
    return d


def foreign_train_fields(model: ModelConfig) -> set[str]:
    """The ``train.*`` keys that other families read and `model`'s family does not (its own loss
    weights are in its ``train_fields``): nothing reads them in this run."""
    from ablation.models import families
    everyone = {f for fam in families().values() for f in fam.train_fields}
    return everyone - set(families()[model.family].train_fields)


def _family_fields(model: ModelConfig, train: dict) -> dict:
    """A training identity without the keys `model`'s family does not read."""
    foreign = foreign_train_fields(model)
    return {k: v for k, v in train.items() if k not in foreign}


def _distill_identity(dc: DistillConfig, d: dict) -> dict:
    """A student's distillation identity: nothing of the teacher when no term reads it, no
    weight or temperature for `kd.kind: none`, no temperature for a kind that has none."""
    from ablation.distill.kd import KD_KINDS
    if not dc.has_terms():
        return {}
    kd = d["kd"]
    d["teacher_train"] = _family_fields(dc.teacher, d["teacher_train"])
    if dc.kd.kind == "none":
        d["kd"] = {"kind": "none"}
    elif not KD_KINDS[dc.kd.kind].uses_T:
        kd.pop("T")
    return d


def _identity(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_identity(v) for v in obj]
    if not dataclasses.is_dataclass(obj):
        return obj
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("neutral") or value == f.metadata.get("off", _ALWAYS):
            continue
        out[f.name] = _identity(value) if dataclasses.is_dataclass(value) or isinstance(value, list) else value
    return out


def config_hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Loading with precise errors
# ----------------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, path: str, src: str, meta: dict | None = None):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    where = f"{src}: `{path}`"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, path, src, meta)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} is {value!r}; allowed values: {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, src=src, prefix=path)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{path}[{i}]", src) for i, v in enumerate(value)] if args else list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is int and ok and float(value) != int(value):
            ok = False
        if isinstance(value, str) and tp is float:  # YAML reads 1e-4 as a string
            try:
                value, ok = float(value), True
            except ValueError:
                ok = False
        if not ok:
            raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
        value = tp(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        lo, hi = (meta or {}).get("lo"), (meta or {}).get("hi")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{where} = {value} is out of range [{lo}, {hi if hi is not None else 'inf'}]")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {path}")  # a bug in this module, not the user's


def from_dict(cls, d: Any, src: str = "<config>", prefix: str = ""):
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and bad values."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{src}: `{prefix or '<root>'}` must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{src}: unknown key `{key}`; allowed keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in d.items():
        path = f"{prefix}.{name}" if prefix else name
        factory = fields[name].default_factory
        if isinstance(value, dict) and factory is not dataclasses.MISSING and dataclasses.is_dataclass(hints[name]):
            value = deep_merge(dataclasses.asdict(factory()), value)  # keys given override the field's default
        kwargs[name] = _convert(value, hints[name], path, src, dict(fields[name].metadata))
    obj = cls(**kwargs)
    _check_registered(obj, src, prefix)
    return obj


def _check_registered(obj, src: str, prefix: str) -> None:
    """Names resolved through registries (KD kinds, distances, positions) are checked here, and
    combinations that would be silently ignored are refused."""
    if isinstance(obj, RunConfig) and obj.role == "teacher" and obj.distill is not None:
        raise ConfigError(f"{src}: `distill` is set on a role: teacher config, where nothing reads it; "
                          f"set role: student to distil, or remove `distill`")
    if isinstance(obj, RunConfig):
        _check_family_fields(obj, src)
        _check_family_taps(obj, src)
    if isinstance(obj, ModelConfig):
        from ablation.models import families
        if obj.family not in families():
            raise ConfigError(f"{src}: `{prefix}.family` is {obj.family!r}; allowed values: {', '.join(families())}")
    if isinstance(obj, DistillConfig) and obj.teacher_seeds is not None:
        seeds = obj.teacher_seeds
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ConfigError(f"{src}: `{prefix}.teacher_seeds` must list two or more distinct seeds, got {seeds}")
        from ablation.distill.kd import KD_KINDS
        if obj.features or not KD_KINDS[obj.kd.kind].ensemble_ok:
            ok = ", ".join(k for k, c in KD_KINDS.items() if c.ensemble_ok and c.reads)
            what = "features" if obj.features else f"outputs read by KD kind {obj.kd.kind!r}"
            raise ConfigError(f"{src}: `{prefix}.teacher_seeds`: an ensemble's members' {what} do not correspond; "
                              f"use output KD ({ok}) without features")
    if isinstance(obj, KDConfig):
        from ablation.distill.kd import KD_KINDS
        if obj.kind not in KD_KINDS:
            raise ConfigError(f"{src}: `{prefix}.kind` is {obj.kind!r}; allowed values: {', '.join(KD_KINDS)}")
    if isinstance(obj, FeatureConfig):
        from ablation.distill.distances import DISTANCES
        from ablation.models.beatgan import TAP_NAMES
        if obj.distance not in DISTANCES:
            raise ConfigError(f"{src}: `{prefix}.distance` is {obj.distance!r}; "
                              f"allowed values: {', '.join(sorted(DISTANCES))}")
        from ablation.distill.positions import Position
        for key in ("position", "pair"):
            pos = getattr(obj, key)
            if pos is not None and pos not in TAP_NAMES:
                raise ConfigError(f"{src}: `{prefix}.{key}` is {pos!r}; valid positions: {', '.join(TAP_NAMES)}")
            if pos is not None:
                try:
                    Position.parse(pos, obj.input)
                except ValueError as e:
                    raise ConfigError(f"{src}: `{prefix}`: {e}") from e
        cls = DISTANCES[obj.distance]
        if cls.n_positions == 2 and obj.pair is None:
            raise ConfigError(f"{src}: `{prefix}.pair` is required by distance {obj.distance!r}")
        if obj.target == "self_real" and cls.fitted_on_teacher:
            raise ConfigError(f"{src}: `{prefix}`: distance {obj.distance!r} is fitted on the teacher's network "
                              f"before training, so it cannot target self_real (the student's own D); "
                              f"use target: teacher or a distance such as at, l2, l1, cosine")
        try:  # parameter names and values, checked before any teacher trains
            channels = 4 if cls.n_positions == 1 else (4,) * cls.n_positions
            cls(channels, channels, teacher_bn=None, **obj.params)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{src}: `{prefix}.params`: {e}") from e
        from ablation.models.beatgan import tap_length
        for pos in (obj.position, obj.pair):
            if pos is not None and tap_length(pos) < cls.min_length:
                raise ConfigError(f"{src}: `{prefix}.position` {pos!r} has length {tap_length(pos)}, and distance "
                                  f"{obj.distance!r} is constant on features shorter than {cls.min_length}; "
                                  f"choose a block 0-4 (or a dec position)")


def _check_family_fields(cfg: RunConfig, src: str) -> None:
    """A family's own ``train.*`` key set away from its default on a run of another family would be
    ignored: refused, naming the key and the family that reads it."""
    pairs = [("train", cfg.model, cfg.train)]
    if cfg.distill is not None:
        pairs.append(("distill.teacher_train", cfg.distill.teacher, cfg.distill.teacher_train))
    from ablation.models import families
    defaults = TrainConfig()
    for where, model, train in pairs:
        for name in sorted(foreign_train_fields(model)):
            if getattr(train, name) != getattr(defaults, name):
                readers = ", ".join(n for n, fam in families().items() if name in fam.train_fields)
                raise ConfigError(f"{src}: `{where}.{name}` is read by model family {readers} only, and this "
                                  f"one is {model.family!r}; remove it or set that family")


def _check_family_taps(cfg: RunConfig, src: str) -> None:
    """Each feature term's positions must be taps of the student's family and, when the teacher is
    its target, of the teacher's (`taps` of the family class)."""
    from ablation.models import families
    if cfg.distill is None:
        return
    for i, f in enumerate(cfg.distill.features):
        nets = [("student", cfg.model)] + ([("teacher", cfg.distill.teacher)] if f.target == "teacher" else [])
        for key in ("position", "pair"):
            pos = getattr(f, key)
            for whose, model in nets:
                taps = families()[model.family].taps
                if pos is not None and pos not in taps:
                    raise ConfigError(f"{src}: `distill.features[{i}].{key}` {pos!r} is not a tap of the {whose}'s "
                                      f"family {model.family!r}; its taps: {', '.join(taps)}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    """A YAML file holding one mapping (empty: {}); errors name the file, on one line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from e
    except RecursionError as e:
        raise ConfigError(f"{path}: nested too deeply to read") from e
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of keys (e.g. `train: {{epochs: 5}}`), "
                          f"got a {type(data).__name__}")
    return data or {}


def parse_value(text: str, where: str) -> Any:
    """A command-line value read as YAML (``5``, ``1e-4``, ``[1, 2]``, ``null``); one-line errors."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: {text!r} is not a valid value: {' '.join(str(e).split())}") from e


def load_run_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    d = load_yaml(path)
    if overrides:
        d = deep_merge(d, overrides)
    return from_dict(RunConfig, d, src=str(path))


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_dotted(d: dict, dotted: str, value: Any) -> dict:
    """Return a copy of `d` with `a.b.c` set to `value` (used by CLI overrides and study axes).

    A numeric part indexes an existing list: ``distill.features.0.position``. A mapping value is
    merged into an existing mapping (``model: {ndf: 4, ngf: 4}`` keeps ``model.nz``).
    """
    head, _, rest = dotted.partition(".")
    if isinstance(d, list):
        if not head.isdigit() or int(head) >= len(d):
            raise ConfigError(f"`{dotted}`: {head!r} is not an index of a list of {len(d)} items")
        out_list = list(d)
        out_list[int(head)] = set_dotted(d[int(head)], rest, value) if rest else value
        return out_list
    out = dict(d or {})
    if not rest:
        old = out.get(head)
        out[head] = deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    else:
        child = out.get(head)
        out[head] = set_dotted(child if isinstance(child, (dict, list)) else {}, rest, value)
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (lists are JSON-encoded), for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif isinstance(v, list):
            out[key] = json.dumps(v, sort_keys=True)
        else:
            out[key] = v
    return out
