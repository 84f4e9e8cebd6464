"""A study file (``studies/<name>.yaml``) -> the list of trials it declares.

    name: fd_positions
    description: ...
    base:      {a RunConfig: data, model, train, distill}
    scales:    {cpu: {dotted.key: value, folds: [0], ...}, full: {...}}  # named scale knobs (cpu: default)
    variants:  [{name: baseline, set: {dotted.key: value}, grid: {...}}, ...]  # optional, named
    grid:      {dotted.key: [v1, v2], ...}                        # optional, Cartesian product
    folds:     [0, 1, 2]                                          # the data.fold axis
    seeds:     [0, 1]                                             # the train.seed axis

Trials are, for each variant, (top-level grid x the variant's own grid) x folds x seeds. A dotted
key may index a list: ``distill.features.0.position``. A scale may also set ``folds`` and ``seeds``. Every trial's config is validated before anything
trains; its key is a hash of its resolved config, so it is stable under key order and reordering
of the file.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation.config import ConfigError, RunConfig, from_dict, load_yaml, set_dotted

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"
TOP_KEYS = {"name", "description", "base", "scales", "variants", "grid", "folds", "seeds", "search"}


@dataclass
class Trial:
    index: int
    name: str  # variant name plus grid values, e.g. "kd/kd.T=4"
    axes: dict[str, Any]  # every varied key and its value, fold and seed included
    config: RunConfig

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

    @property
    def scale_summary(self) -> str:
        c = self.trials[0].config if self.trials else RunConfig()
        folds = sorted({t.config.data.fold for t in self.trials})
        seeds = sorted({t.config.train.seed for t in self.trials})
        return (f"scale={self.scale}: epochs={c.train.epochs}, train_subset={c.data.train_subset or 'all'}, "
                f"folds={folds}, seeds={seeds}, trials={len(self.trials)}")


def study_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
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


def load_study(name_or_path: str | Path, scale: str = "cpu") -> StudySpec:
    """Expand and validate a study file; any error names the file and the key path."""
    path = study_path(name_or_path)
    src = str(path)
    d = load_yaml(path)
    unknown = sorted(set(d) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{src}: unknown key `{unknown[0]}`; allowed keys: {', '.join(sorted(TOP_KEYS))}")
    base = d.get("base") or {}
    scales = d.get("scales") or {"cpu": {}}
    if scale not in scales:
        raise ConfigError(f"{src}: `scales` has no {scale!r}; allowed values: {', '.join(scales)}")
    knobs = dict(scales[scale] or {})
    for axis in ("folds", "seeds"):
        if axis in knobs:
            d = {**d, axis: knobs.pop(axis)}
    for key, value in knobs.items():
        base = set_dotted(base, key, value)
    variants = d.get("variants") or [{"name": "base", "set": {}}]
    if not isinstance(variants, list):
        raise ConfigError(f"{src}: `variants` must be a list of {{name, set}} mappings")
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or set(v) - {"name", "set", "grid"} or "name" not in v:
            raise ConfigError(f"{src}: `variants[{i}]` must be a mapping with `name` and optional `set` "
                              f"and `grid`, got {v!r}")
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{src}: variant names must be unique, got {names}")
    top_grid = _grid(d.get("grid"), "grid", src)
    folds = _list_of(d.get("folds", [base.get("data", {}).get("fold", 0)]), "folds", src, int)
    seeds = _list_of(d.get("seeds", [base.get("train", {}).get("seed", 0)]), "seeds", src, int)

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
            for fold, seed in itertools.product(folds, seeds):
                cfg_dict = set_dotted(set_dotted(cbase, "data.fold", fold), "train.seed", seed)
                label = f"{src} (variant {variant['name']!r}" + (f", grid {gvals}" if gvals else "") + ")"
                cfg = from_dict(RunConfig, cfg_dict, src=label)
                shown = {k: _compact(v) for k, v in gvals.items()}
                name = "/".join([variant["name"]] + [f"{k}={v}" for k, v in shown.items()])
                axes = {"variant": variant["name"], **shown, "fold": fold, "seed": seed}
                trials.append(Trial(len(trials), name, axes, cfg))
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        dup = next(t.name for t in trials if keys.count(t.key) > 1)
        raise ConfigError(f"{src}: two trials resolve to the same config (e.g. {dup!r}); remove the duplicate")
    return StudySpec(d.get("name", path.stem), path, d.get("description", ""), scale, trials, d.get("search"))
