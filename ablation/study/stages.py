"""Staged studies: a screen of every variant on a few (fold, seed) pairs, then a confirmation of the
variants a rule written in the study file picks from the screen's validation metrics, on pairs the
screen did not use.

    stages:
      screen:  {folds: [2], seeds: [0, 1]}
      confirm:
        folds: [0, 1, 3, 4]
        seeds: [0, 1]
        rule: {best: 3, metric: best_val_auc, twin: pre_post, baseline: student_alone}

The rule ranks the variants by their mean paired difference to `baseline` in `metric` (a validation
metric: the rule never reads a test metric) over the screen's pairs, keeps the `best` of them, adds
each one's pre/post twin (`twin: pre_post`: the variant whose feature terms tap the same positions at
the other point) and the baseline; ties go to the variant first in the file. The confirmation
starts only once every screening trial has a row in ``results/<study>.csv``, and reads its picks from
there, so a resumed or fresh-clone run picks the same variants.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pandas as pd

from ablation.config import ConfigError, Range, RunConfig, from_dict

if TYPE_CHECKING:
    from ablation.study.spec import StudySpec, Trial

STAGE_NAMES = ("screen", "confirm")


@dataclass
class Rule:
    """How the confirmation's variants follow from the screening table."""

    best: int = Range(1, None, default=3)  # the k variants with the largest mean paired difference
    metric: Literal["best_val_auc", "best_val_ap", "best_val_f1"] = "best_val_auc"  # validation only
    twin: Literal["pre_post", "none"] = "pre_post"  # add each pick's twin at the other point
    baseline: str = "student_alone"  # the variant differences are taken to; always confirmed


@dataclass
class Screen:
    folds: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


@dataclass
class Confirm:
    folds: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    rule: Rule = field(default_factory=Rule)


@dataclass
class Stages:
    screen: Screen = field(default_factory=Screen)
    confirm: Confirm = field(default_factory=Confirm)

    def pairs(self, stage: str) -> list[tuple[int, int]]:
        """The (fold, seed) pairs of `stage`."""
        s = getattr(self, stage)
        return [(f, seed) for f in s.folds for seed in s.seeds]


class ScreenIncomplete(ConfigError):
    """The confirmation stage was asked for before every screening trial finished."""


def parse_stages(raw: object, src: str) -> Stages:
    """The `stages` section, validated: both stages, non-empty folds and seeds, disjoint pairs."""
    if not isinstance(raw, dict) or set(raw) != set(STAGE_NAMES):
        raise ConfigError(f"{src}: `stages` must map exactly {', '.join(STAGE_NAMES)} to their settings, "
                          f"got {raw!r}")
    stages = from_dict(Stages, raw, src=src, prefix="stages")
    for name in STAGE_NAMES:
        s = getattr(stages, name)
        for axis in ("folds", "seeds"):
            values = getattr(s, axis)
            if not values or min(values) < 0:
                raise ConfigError(f"{src}: `stages.{name}.{axis}` must be a non-empty list of non-negative "
                                  f"integers, got {values}")
    shared = sorted(set(stages.pairs("screen")) & set(stages.pairs("confirm")))
    if shared:
        raise ConfigError(f"{src}: `stages.confirm` must run on (fold, seed) pairs the screen did not use; "
                          f"both have {shared}")
    return stages


def check_rule(rule: Rule, names: list[str], twins: dict[str, str], src: str) -> None:
    """The rule against the study's variants (trial names without fold and seed)."""
    if rule.baseline not in names:
        raise ConfigError(f"{src}: `stages.confirm.rule.baseline` is {rule.baseline!r}; allowed values: "
                          f"{', '.join(names)}")
    if rule.best > len(names) - 1:
        raise ConfigError(f"{src}: `stages.confirm.rule.best` = {rule.best} is more than the {len(names) - 1} "
                          f"variants besides the baseline")
    if rule.twin == "pre_post" and not twins:
        raise ConfigError(f"{src}: `stages.confirm.rule.twin` is 'pre_post' but no variant has a twin tapping "
                          f"the same positions at the other point; allowed values: 'pre_post', 'none'")


def swap_point(position: str) -> str:
    """``enc.3.pre`` <-> ``enc.3.post``."""
    return re.sub(r"\.(pre|post)$", lambda m: ".post" if m.group(1) == "pre" else ".pre", position)


def twin_dict(cfg: RunConfig) -> dict | None:
    """`cfg` as a dict with every feature term's point swapped; None without feature terms."""
    if cfg.distill is None or not cfg.distill.features:
        return None
    d = cfg.to_dict()
    for f in d["distill"]["features"]:
        f["position"] = swap_point(f["position"])
        f["pair"] = swap_point(f["pair"]) if f["pair"] else None
    return d


def find_twins(trials: list["Trial"]) -> dict[str, str]:
    """Trial name -> its pre/post twin's name, among trials of one (fold, seed) pair."""
    by_config = {repr(t.config.to_dict()): t.name for t in trials}
    out = {}
    for t in trials:
        other = by_config.get(repr(twin_dict(t.config)))
        if other is not None and other != t.name:
            out[t.name] = other
    return out


def pick(rule: Rule, screen: pd.DataFrame, order: list[str], twins: dict[str, str]) -> list[str]:
    """The variants the confirmation runs, in file order: the baseline, the `rule.best` variants of
    the largest mean paired difference to it in `rule.metric` over the screen's (fold, seed) pairs,
    and their twins. `screen` has columns variant, fold, seed and the metric; nothing else is read."""
    values = screen.set_index(["variant", "fold", "seed"])[rule.metric]
    base = values.xs(rule.baseline, level="variant")
    deltas = {v: float((values.xs(v, level="variant") - base).mean()) for v in order if v != rule.baseline}
    ranked = sorted(deltas, key=lambda v: (-deltas[v], order.index(v)))  # NaN-free: the screen is complete
    chosen = set(ranked[:rule.best]) | {rule.baseline}
    if rule.twin == "pre_post":
        chosen |= {twins[v] for v in ranked[:rule.best] if v in twins}
    return [v for v in order if v in chosen]


def screen_table(spec: "StudySpec", committed: pd.DataFrame) -> pd.DataFrame:
    """The committed rows of the screen's trials (FINISHED, this scale), one per trial key."""
    if committed.empty:
        return committed
    keys = {t.key for t in spec.trials}
    rows = committed[(committed["status"] == "FINISHED") & (committed["scale"] == spec.scale)
                     & committed["trial_key"].isin(keys)]
    return rows.drop_duplicates("trial_key", keep="last")


def confirmation(spec: "StudySpec", committed: pd.DataFrame) -> "StudySpec":
    """The confirmation stage of staged study `spec` (its screen), its variants picked by the rule
    from `committed` (``results/<study>.csv``); ScreenIncomplete while a screening trial lacks a row."""
    rows = screen_table(spec, committed)
    if len(rows) < len(spec.trials):
        raise ScreenIncomplete(f"study {spec.name}: the confirmation stage cannot start before the screen is "
                               f"complete ({len(rows)} of {len(spec.trials)} screening trials finished)")
    name_of = {t.key: t.name for t in spec.trials}
    table = rows.assign(variant=rows["trial_key"].map(name_of))
    order = list(dict.fromkeys(t.name for t in spec.trials))
    chosen = pick(spec.stages.confirm.rule, table, order, spec.twins)
    trials = [t for t in spec.candidates if t.name in chosen]
    return dataclasses.replace(spec, trials=trials, stage="confirm")
