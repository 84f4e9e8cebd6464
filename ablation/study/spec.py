"""A study file (``studies/<name>.yaml``) -> the list of trials it declares.

    name: fd_positions
    description: ...
    base:      {a RunConfig: data, model, train, distill}
    scales:    {cpu: {dotted.key: value, folds: [0], ...}, full: {...}}  # named scale knobs (cpu: default)
    variants:  [{name: baseline, set: {dotted.key: value}, grid: {...}}, ...]  # optional, named
    grid:      {dotted.key: [v1, v2], ...}                        # optional, Cartesian product
    folds:     [0, 1, 2]                                          # the data.fold axis
    seeds:     [0, 1]                                             # the train.seed axis
    stages:    {screen: {folds, seeds}, confirm: {folds, seeds, rule}}  # instead of folds and seeds

Trials are, for each variant, (top-level grid x the variant's own grid) x folds x seeds. A dotted
key may index a list: ``distill.features.0.position``. A scale may also set ``folds`` and ``seeds``
(or ``stages.screen.folds`` ...). A staged study (`ablation.study.stages`) holds the screen's trials;
the confirmation's candidates (every variant on its pairs) are expanded and validated at load too,
and the rule picks among them once the screen is complete. Every trial's config is validated before
anything trains; its key is a hash of its resolved config, so it is stable under key order and
reordering of the file.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation.config import ConfigError, RunConfig, from_dict, load_yaml, set_dotted
from ablation.study.stages import Stages, check_rule, find_twins, parse_stages

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"
TOP_KEYS = {"name", "description", "base", "scales", "variants", "grid", "folds", "seeds", "search", "stages"}


@dataclass
class Trial:
    index: int
    name: str  # variant name plus grid values, e.g. "kd/kd.T=4"
    axes: dict[str, Any]  # every varied key and its value, fold and seed included
    config: RunConfig
    stage: str = ""  # "screen" or "confirm" in a staged study

    @property
    def key(self) -> str:
        return self.config.key()


@dataclass
class StudySpec:
    name: str
    path: Path
    description: str
    scale: str
    trials: list[Trial] = field(default_factory=list)
    search: dict | None = None  # the tuning section, read by ablation.study.tune
    folds_only: tuple[int, ...] | None = None  # run only these folds of the scale now (`select_part`)
    variants_only: tuple[str, ...] | None = None  # and only these variants
    stages: Stages | None = None  # a staged study's stages (`trials`: the screen's, or the confirmation's)
    stage: str = ""  # which stage `trials` belong to ("" for a study without stages)
    candidates: list[Trial] = field(default_factory=list)  # every variant on the confirmation's pairs
    twins: dict[str, str] = field(default_factory=dict)  # trial name -> its pre/post twin's

    @property
    def part(self) -> str:
        """'' for the whole study, else what `select_part` kept, e.g. '-folds1-2-variants-a-b'."""
        folds = f"-folds{'-'.join(map(str, self.folds_only))}" if self.folds_only else ""
        return folds + (f"-variants-{'-'.join(self.variants_only)}" if self.variants_only else "")

    @property
    def scale_summary(self) -> str:
        c = self.trials[0].config if self.trials else RunConfig()
        folds = sorted({t.config.data.fold for t in self.trials})
        seeds = sorted({t.config.train.seed for t in self.trials})
        stage = f"stage={self.stage}, " if self.stage else ""
        return (f"{stage}scale={self.scale}: epochs={c.train.epochs}, train_subset={c.data.train_subset or 'all'}, "
                f"folds={folds}, seeds={seeds}, trials={len(self.trials)}")


def select_part(spec: StudySpec, folds: list[int] | None = None, variants: list[str] | None = None) -> StudySpec:
    """The part of `spec` on these folds and variants (None: all of them): a study too long for one
    session or machine runs in parts, each with its own queue, into the same experiment and table."""
    trials = spec.trials
    if folds is not None:
        have = sorted({t.config.data.fold for t in spec.trials})
        if not folds or set(folds) - set(have):
            raise ConfigError(f"{spec.path}: --folds {' '.join(map(str, folds))}: scale {spec.scale} has folds {have}")
        trials = [t for t in trials if t.config.data.fold in folds]
    if variants is not None:
        names = list(dict.fromkeys(t.axes["variant"] for t in spec.trials))
        if not variants or set(variants) - set(names):
            raise ConfigError(f"{spec.path}: --variants {' '.join(variants)}: the study has variants {' '.join(names)}")
        trials = [t for t in trials if t.axes["variant"] in variants]
    return dataclasses.replace(spec, trials=trials,
                               folds_only=tuple(sorted(set(folds))) if folds is not None else None,
                               variants_only=tuple(n for n in dict.fromkeys(variants)) if variants is not None else None)


def both_stages(spec: StudySpec) -> StudySpec:
    """A staged study's screen and every confirmation candidate as one list of trials (what
    `reproduce` finds in the committed table); a study without stages as it is."""
    return dataclasses.replace(spec, trials=spec.trials + spec.candidates, candidates=[], stage="")


RESERVED = {"teachers", "students"}  # MLflow experiments the platform itself writes
MAX_TRIALS = 10_000  # above this a study must be confirmed (`--yes`): its trials are expanded one by one


def study_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"no study file {p}")
        return p
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name_or_path)):
        raise ConfigError(f"study name {str(name_or_path)!r}: a name under studies/ (letters, digits, . _ -) "
                          f"or a path to a .yaml file")
    candidate = STUDIES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(q.stem for q in STUDIES_DIR.glob("*.yaml"))
        raise ConfigError(f"no study {name_or_path!r}: {candidate} does not exist; studies: {', '.join(known)}")
    return candidate


def _list_of(value: Any, key: str, src: str, item_type: type) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(v, item_type) and not isinstance(v, bool)
                                                           for v in value):
        raise ConfigError(f"{src}: `{key}` must be a non-empty list of {item_type.__name__}, got {value!r}")
    return value


def _compact(value: Any) -> Any:
    """A grid value as it appears in trial names and axes: mappings as ``k=v,k=v``."""
    return ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value


def _grid(grid: Any, where: str, src: str) -> dict[str, list]:
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{src}: `{where}` must map dotted keys to lists of values")
    for k, vals in grid.items():
        _list_of(vals, f"{where}.{k}", src, object)
    return grid


def _base(d: dict, src: str) -> dict:
    """The study's `base` run config as a mapping ({} when absent: the variants set every key)."""
    if "base" in d and d["base"] is None:
        raise ConfigError(f"{src}: `base` is null: it must map config sections (data, model, train, distill) to "
                          f"their keys; remove the line to start from the defaults")
    base = d.get("base", {})
    if not isinstance(base, dict):
        raise ConfigError(f"{src}: `base` must map config sections (data, model, train, distill), got {base!r}")
    return base


def load_study(name_or_path: str | Path, scale: str = "cpu", max_trials: int | None = MAX_TRIALS) -> StudySpec:
    """Expand and validate a study file; any error names the file and the key path. A study of more
    than `max_trials` trials is refused before it is expanded (None: no limit)."""
    path = study_path(name_or_path)
    src = str(path)
    d = load_yaml(path)
    if not d:
        raise ConfigError(f"{src}: the study file is empty; it needs at least `base` or `variants`")
    study_name = d.get("name", path.stem)
    if not isinstance(study_name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", study_name):
        raise ConfigError(f"{src}: `name` {study_name!r} must be a plain name (letters, digits, . _ -): it names the "
                          f"MLflow experiment, the queue and results/<name>.csv")
    if study_name in RESERVED:
        raise ConfigError(f"{src}: `name` {study_name!r} is the platform's own MLflow experiment; choose another name")
    if study_name != path.stem and (STUDIES_DIR / f"{study_name}.yaml").exists():
        raise ConfigError(f"{src}: `name` {study_name!r} is the study studies/{study_name}.yaml: it would train into "
                          f"that study's experiment and results table; name it {path.stem!r}")
    unknown = sorted(set(d) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{src}: unknown key `{unknown[0]}`; allowed keys: {', '.join(sorted(TOP_KEYS))}")
    base = _base(d, src)
    scales = d.get("scales") or {"cpu": {}}
    if scale not in scales:
        raise ConfigError(f"{src}: `scales` has no {scale!r}; allowed values: {', '.join(scales)}")
    knobs = dict(scales[scale] or {})
    for axis in ("folds", "seeds"):
        if axis in knobs:
            d = {**d, axis: knobs.pop(axis)}
    for key, value in knobs.items():
        if key == "stages":
            d = {**d, "stages": value}
        elif key.startswith("stages."):
            d = {**d, "stages": set_dotted(d.get("stages") or {}, key[len("stages."):], value)}
        else:
            base = set_dotted(base, key, value)
    variants = d.get("variants", [{"name": "base", "set": {}}])
    if not isinstance(variants, list) or not variants:
        raise ConfigError(f"{src}: `variants` must be a non-empty list of {{name, set}} mappings")
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or set(v) - {"name", "set", "grid"} or "name" not in v:
            raise ConfigError(f"{src}: `variants[{i}]` must be a mapping with `name` and optional `set` "
                              f"and `grid`, got {v!r}")
        if not isinstance(v.get("set") or {}, dict):
            raise ConfigError(f"{src}: `variants[{i}].set` must map dotted keys to values, got {v['set']!r}")
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{src}: variant names must be unique, got {names}")
    top_grid = _grid(d.get("grid"), "grid", src)
    stages = _stages(d, src)
    pairs = stages.pairs("screen") + stages.pairs("confirm") if stages else _pairs(d, base, src)
    count = sum(math.prod(len(v) for v in {**top_grid, **_grid(v.get("grid"), f"variants[{v['name']}].grid",
                                                                src)}.values())
                for v in variants) * len(pairs)
    if max_trials is not None and count > max_trials:
        raise ConfigError(f"{src}: {count:,} trials (scale {scale}) is more than {max_trials:,}; "
                          f"shrink the grid, or pass --yes to expand them anyway")
    if stages is None:
        trials = _expand(variants, base, top_grid, pairs, src, "")
        _check_unique(trials, src)
        return StudySpec(study_name, path, d.get("description", ""), scale, trials, d.get("search"))
    screen = _expand(variants, base, top_grid, stages.pairs("screen"), src, "screen")
    candidates = _expand(variants, base, top_grid, stages.pairs("confirm"), src, "confirm")
    _check_unique(screen + candidates, src)
    first = stages.pairs("screen")[0]
    twins = find_twins([t for t in screen if (t.axes["fold"], t.axes["seed"]) == first])
    check_rule(stages.confirm.rule, list(dict.fromkeys(t.name for t in screen)), twins, src)
    return StudySpec(study_name, path, d.get("description", ""), scale, screen, d.get("search"), stages=stages,
                     stage="screen", candidates=candidates, twins=twins)


def declared_variants(study: str) -> list[str]:
    """The variant names studies/<study>.yaml lists, in its order; [] without such a file (the
    study's runs are still reported, in the order they ran)."""
    try:
        path = study_path(study)
    except ConfigError:
        return []
    variants = load_yaml(path).get("variants")
    return [v["name"] for v in variants if isinstance(v, dict) and isinstance(v.get("name"), str)] \
        if isinstance(variants, list) else []


def _stages(d: dict, src: str) -> Stages | None:
    """The `stages` section (None without one); a staged study sets no top-level folds or seeds."""
    if "stages" not in d:
        return None
    for axis in ("folds", "seeds"):
        if axis in d:
            raise ConfigError(f"{src}: `{axis}` is set per stage in a staged study (`stages.screen.{axis}`, "
                              f"`stages.confirm.{axis}`); remove the top-level `{axis}`")
    return parse_stages(d["stages"], src)


def _pairs(d: dict, base: dict, src: str) -> list[tuple[int, int]]:
    """The (fold, seed) pairs of a study without stages: `folds` x `seeds`."""
    folds = _list_of(d.get("folds", [base.get("data", {}).get("fold", 0)]), "folds", src, int)
    seeds = _list_of(d.get("seeds", [base.get("train", {}).get("seed", 0)]), "seeds", src, int)
    if min(seeds) < 0:
        raise ConfigError(f"{src}: `seeds` must be non-negative integers (torch seeds), got {seeds}")
    return list(itertools.product(folds, seeds))


def _expand(variants: list[dict], base: dict, top_grid: dict, pairs: list[tuple[int, int]], src: str,
            stage: str) -> list[Trial]:
    """For each variant, (top-level grid x its own grid) x `pairs`, each config validated."""
    trials: list[Trial] = []
    for variant in variants:
        vbase = base
        for key, value in (variant.get("set") or {}).items():
            vbase = set_dotted(vbase, key, value)
        grid = {**top_grid, **_grid(variant.get("grid"), f"variants[{variant['name']}].grid", src)}
        for combo in itertools.product(*grid.values()) if grid else [()]:
            gvals = dict(zip(grid, combo))
            cbase = vbase
            for key, value in gvals.items():
                cbase = set_dotted(cbase, key, value)
            for fold, seed in pairs:
                cfg_dict = set_dotted(set_dotted(cbase, "data.fold", fold), "train.seed", seed)
                label = f"{src} (variant {variant['name']!r}" + (f", grid {gvals}" if gvals else "") + ")"
                cfg = from_dict(RunConfig, cfg_dict, src=label)
                shown = {k: _compact(v) for k, v in gvals.items()}
                name = "/".join([variant["name"]] + [f"{k}={v}" for k, v in shown.items()])
                axes = {"variant": variant["name"], **shown, "fold": fold, "seed": seed}
                trials.append(Trial(len(trials), name, axes, cfg, stage))
    return trials


def _check_unique(trials: list[Trial], src: str) -> None:
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        dup = next(t.name for t in trials if keys.count(t.key) > 1)
        raise ConfigError(f"{src}: two trials resolve to the same config (e.g. {dup!r}): a field no term reads "
                          f"(a temperature without a temperature KD kind, a teacher without a term) is not part "
                          f"of a run; remove the duplicate")
